"""/v1/devices/{device_id}/telemetry: raw points, aggregates and the delivery (gap) report.

One API over hot and cold data: days within the Cassandra TTL come from Cassandra, older days
from the Parquet lake. Every range is bounded; the 400 names the bound.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from api.deps import CassandraSession, OnboardingDep, SettingsDep, Viewer, cached
from api.routes.devices import _visible as visible_device
from fleet.telemetry.query import (
    MAX_AGG_RANGE_DAYS,
    MAX_LIMIT,
    MAX_RAW_RANGE_DAYS,
    Cursor,
    QueryError,
    TimeRange,
    check_bucket_count,
    check_limit,
    parse_bucket,
    parse_functions,
    parse_metrics,
    rebucket,
)
from fleet.telemetry.store import TelemetryStore

router = APIRouter(prefix="/v1/devices/{device_id}/telemetry", tags=["telemetry"])

FromParam = Annotated[str | None, Query(alias="from", description="start (inclusive): epoch ms or ISO 8601; "
                                                                  "default: 1 hour before 'to'")]
ToParam = Annotated[str | None, Query(alias="to", description="end (exclusive): epoch ms or ISO 8601; default: now")]


class PointOut(BaseModel):
    ts: int = Field(description="device time, epoch ms")
    seq: int
    ingest_ts: int | None = Field(None, description="when the bridge received it, epoch ms")
    metrics: dict[str, float]
    attrs: dict[str, Any] | None = None


class PointsPage(BaseModel):
    device_id: str
    items: list[PointOut] = Field(description="newest first")
    next_page_token: str | None = Field(None, description="pass as page_token for the next (older) page")


class BucketOut(BaseModel):
    start: int = Field(description="bucket start, epoch ms (UTC-aligned)")
    values: dict[str, float | int | None]


class Aggregate(BaseModel):
    device_id: str
    metric: str
    bucket: str
    functions: list[str]
    buckets: list[BucketOut] = Field(description="oldest first; buckets without data are omitted")


class Gap(BaseModel):
    first_seq: int
    last_seq: int
    missing: int
    after_ts: int | None = None
    before_ts: int | None = None
    status: str = Field(description="open: may still arrive; lost: can no longer arrive; "
                                    "filled: arrived late after all")


class GapReport(BaseModel):
    device_id: str
    received: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = Field(0, description="records that never arrived (sum of lost gaps)")
    max_seq: int | None = None
    last_ts: int | None = None
    complete: bool = Field(description="true when nothing the device sent is missing or pending")
    gaps: list[Gap]


def get_store(request: Request, session: CassandraSession, settings: SettingsDep) -> TelemetryStore:
    return cached(request, TelemetryStore, lambda: TelemetryStore(
        session, settings.lake_path, raw_ttl_days=settings.telemetry_raw_ttl_days,
        rollup_ttl_days=settings.telemetry_rollup_ttl_days))


Store = Annotated[TelemetryStore, Depends(get_store)]


def _bad_request(exc: QueryError):
    raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _now_ms() -> int:
    return int(time.time() * 1000)


@router.get("", response_model=PointsPage, summary="Raw telemetry points, newest first, paginated")
def get_points(device_id: str, principal: Viewer, onboarding: OnboardingDep, store: Store,
               from_: FromParam = None, to: ToParam = None,
               metrics: Annotated[str | None, Query(description="comma-separated metric names to keep")] = None,
               limit: Annotated[int, Query(description=f"1..{MAX_LIMIT}")] = 100,
               page_token: str | None = None) -> PointsPage:
    visible_device(onboarding, principal, device_id)
    now = _now_ms()
    try:
        rng = TimeRange.from_params(from_, to, now_ms=now, default_span_ms=3_600_000,
                                    max_days=MAX_RAW_RANGE_DAYS)
        points, nxt = store.points(device_id, rng, limit=check_limit(limit), cursor=Cursor.decode(page_token),
                                   metrics=parse_metrics(metrics), now_ms=now)
    except QueryError as exc:
        _bad_request(exc)
    return PointsPage(device_id=device_id,
                      items=[PointOut(ts=p.ts_ms, seq=p.seq, ingest_ts=p.ingest_ts_ms, metrics=p.metrics,
                                      attrs=p.attrs) for p in points],
                      next_page_token=nxt.encode() if nxt else None)


@router.get("/aggregate", response_model=Aggregate,
            summary="One metric aggregated per time bucket (from 1-minute rollups)")
def get_aggregate(device_id: str, principal: Viewer, onboarding: OnboardingDep, store: Store,
                  metric: Annotated[str, Query(min_length=1, max_length=64)],
                  from_: FromParam = None, to: ToParam = None,
                  bucket: Annotated[str, Query(description="1m, 5m, 1h or 1d")] = "1m",
                  fn: Annotated[str | None, Query(description="comma-separated: avg,min,max,count,sum")] = None,
                  ) -> Aggregate:
    visible_device(onboarding, principal, device_id)
    now = _now_ms()
    try:
        bucket_ms = parse_bucket(bucket)
        functions = parse_functions(fn)
        rng = TimeRange.from_params(from_, to, now_ms=now, default_span_ms=24 * 3_600_000,
                                    max_days=MAX_AGG_RANGE_DAYS)
        check_bucket_count(rng, bucket_ms)
    except QueryError as exc:
        _bad_request(exc)
    merged = rebucket(store.rollup_buckets(device_id, metric, rng, now_ms=now, bucket_ms=bucket_ms), bucket_ms)
    return Aggregate(device_id=device_id, metric=metric, bucket=bucket, functions=list(functions),
                     buckets=[BucketOut(start=b.start_ms, values={f: b.value(f) for f in functions})
                              for b in merged])


@router.get("/gaps", response_model=GapReport, summary="Did anything this device sent go missing?",
            description="Gaps in the device's `seq` (open: may still arrive; lost: past the allowed lateness; "
                        "filled) and its delivery counts. The counts are written when one of the device's minutes "
                        "closes: when its own clock is 60 s past that minute, or, for a device that went quiet, "
                        "when the wall clock is (about 62 s after the minute ends, whatever other devices do). "
                        "So they trail the device by a minute or two.")
def get_gaps(device_id: str, principal: Viewer, onboarding: OnboardingDep, store: Store,
             limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> GapReport:
    visible_device(onboarding, principal, device_id)
    gaps = [Gap(**g) for g in store.gaps(device_id, limit)]
    stats = store.stats(device_id) or {}
    pending = any(g.status in ("open", "lost") for g in gaps)
    return GapReport(device_id=device_id, **{k: v for k, v in stats.items() if v is not None},
                     complete=not pending, gaps=gaps)
