"""/v1/devices/{device_id}/telemetry: raw points, aggregates and the delivery (gap) report.

One API over hot and cold data: days within the Cassandra TTL come from Cassandra, older days
from the Parquet lake. Every range is bounded; the 400 names the bound.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from api.deps import Telemetry, Viewer, VisibleDevice
from api.errors import responses
from api.params import PAGE_TOKEN_DOC, as_int, checked, page_token_of
from api.schemas.telemetry import (
    AggFunction,
    Aggregate,
    BucketOut,
    BucketSize,
    Gap,
    GapReport,
    PointOut,
    PointsPage,
)
from fleet.telemetry.query import (
    MAX_AGG_RANGE_DAYS,
    MAX_LIMIT,
    MAX_RAW_RANGE_DAYS,
    Cursor,
    TimeRange,
    check_bucket_count,
    check_limit,
    parse_bucket,
    parse_functions,
    parse_metrics,
    rebucket,
)

router = APIRouter(prefix="/v1/devices/{device_id}/telemetry", tags=["telemetry"], responses=responses(404))

FromParam = Annotated[str | None, Query(alias="from", description="start (inclusive): epoch ms or ISO 8601; "
                                                                  "default: 1 hour before 'to'")]
ToParam = Annotated[str | None, Query(alias="to", description="end (exclusive): epoch ms or ISO 8601; default: now")]


def _functions(value):
    """``fn=avg,min`` and ``fn=avg&fn=min`` alike, as one list; the domain refuses unknown names (a 400)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(parse_functions(",".join(value)))
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


@router.get("", response_model=PointsPage, summary="Raw telemetry points, newest first, paginated",
            responses=responses(400))
def get_points(device_id: str, principal: Viewer, device: VisibleDevice, store: Telemetry,
               from_: FromParam = None, to: ToParam = None,
               metrics: Annotated[str | None, Query(description="comma-separated metric names to keep")] = None,
               limit: Annotated[int, Query(ge=1, le=MAX_LIMIT), checked(as_int(check_limit))] = 100,
               page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC),
                                     checked(page_token_of(Cursor.decode))] = None) -> PointsPage:
    now = _now_ms()
    rng = TimeRange.from_params(from_, to, now_ms=now, default_span_ms=3_600_000, max_days=MAX_RAW_RANGE_DAYS)
    points, nxt = store.points(device_id, rng, limit=limit, cursor=Cursor.decode(page_token),
                               metrics=parse_metrics(metrics), now_ms=now)
    return PointsPage(device_id=device_id,
                      items=[PointOut(ts=p.ts_ms, seq=p.seq, ingest_ts=p.ingest_ts_ms, metrics=p.metrics,
                                      attrs=p.attrs) for p in points],
                      next_page_token=nxt.encode() if nxt else None)


@router.get("/aggregate", response_model=Aggregate,
            summary="One metric aggregated per time bucket (from 1-minute rollups)", responses=responses(400))
def get_aggregate(device_id: str, principal: Viewer, device: VisibleDevice, store: Telemetry,
                  metric: Annotated[str, Query(min_length=1, max_length=64)],
                  from_: FromParam = None, to: ToParam = None,
                  bucket: Annotated[BucketSize, Query(description="bucket width"), checked(parse_bucket)] = BucketSize.ONE_MINUTE,
                  fn: Annotated[list[AggFunction] | None,
                                Query(description="comma-separated or repeated; default: avg,min,max,count"),
                                BeforeValidator(_functions)] = None,
                  ) -> Aggregate:
    now = _now_ms()
    bucket_ms = parse_bucket(bucket.value)
    functions = parse_functions(",".join(fn) if fn else None)
    rng = TimeRange.from_params(from_, to, now_ms=now, default_span_ms=24 * 3_600_000, max_days=MAX_AGG_RANGE_DAYS)
    check_bucket_count(rng, bucket_ms)
    merged = rebucket(store.rollup_buckets(device_id, metric, rng, now_ms=now, bucket_ms=bucket_ms), bucket_ms)
    return Aggregate(device_id=device_id, metric=metric, bucket=bucket.value, functions=list(functions),
                     buckets=[BucketOut(start=b.start_ms, values={f: b.value(f) for f in functions})
                              for b in merged])


@router.get("/gaps", response_model=GapReport, summary="Did anything this device sent go missing?",
            description="Gaps in the device's `seq` (open: may still arrive; lost: past the allowed lateness; "
                        "filled) and its delivery counts. The counts are written when one of the device's minutes "
                        "closes: when its own clock is 60 s past that minute, or, for a device that went quiet, "
                        "when the wall clock is (about 62 s after the minute ends, whatever other devices do). "
                        "So they trail the device by a minute or two.")
def get_gaps(device_id: str, principal: Viewer, device: VisibleDevice, store: Telemetry,
             limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> GapReport:
    gaps = [Gap(**g) for g in store.gaps(device_id, limit)]
    stats = store.stats(device_id) or {}
    pending = any(g.status in ("open", "lost") for g in gaps)
    return GapReport(device_id=device_id, **{k: v for k, v in stats.items() if v is not None},
                     complete=not pending, gaps=gaps)
