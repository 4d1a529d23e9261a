"""Reads of stored telemetry: hot data from Cassandra, cold data from the Parquet lake.

The API asks in device time; days within the Cassandra TTL are read from Cassandra (prepared
statements, one partition per (device, day)), older days from the lake's hive partitions, so
one query spans hot and cold data. Tables: schemas/cql/002_telemetry.cql; lake: schemas/parquet.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.infra.cql_values import epoch_ms
from fleet.telemetry.query import (
    DAY_MS,
    MINUTE_MS,
    Bucket,
    Cursor,
    TimeRange,
    day_start_ms,
    hot_horizon_day,
    select_metrics,
    split_hot_cold,
)

if TYPE_CHECKING:  # neither the driver nor pyarrow ships type hints: Any to mypy, names for the reader
    import pyarrow as pa
    from cassandra.cluster import Session
    from cassandra.query import PreparedStatement

MIN_SEQ = -(2 ** 63)


@dataclass(frozen=True)
class Point:
    ts_ms: int
    seq: int
    ingest_ts_ms: int | None
    metrics: dict[str, float]
    attrs: dict[str, Any] | None


def _attrs(raw: Any) -> dict[str, Any] | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, dict):
        return raw
    try:
        parsed: dict[str, Any] = json.loads(raw)  # the job writes attrs as a JSON object
        return parsed
    except ValueError:
        return {"_raw": raw}


class TelemetryStore:
    def __init__(self, session: Session, lake_dir: Path, *, raw_ttl_days: int, rollup_ttl_days: int) -> None:
        self.session = session
        self.lake = Path(lake_dir) / "telemetry"
        self.raw_ttl_days = raw_ttl_days
        self.rollup_ttl_days = rollup_ttl_days
        self._raw = session.prepare(
            "SELECT ts, seq, ingest_ts, metrics, attrs FROM telemetry WHERE device_id = ? AND day = ? "
            "AND (ts, seq) >= (?, ?) AND (ts, seq) < (?, ?) LIMIT ?")
        self._rollup = session.prepare(
            "SELECT bucket_start, min, max, sum, count FROM telemetry_rollup_1m WHERE device_id = ? AND day = ? "
            "AND metric = ? AND bucket_start >= ? AND bucket_start < ?")
        self._grouped: dict[int, PreparedStatement] = {}
        self._gaps = session.prepare(
            "SELECT first_seq, last_seq, missing, after_ts, before_ts, status FROM telemetry_gaps "
            "WHERE device_id = ? LIMIT ?")
        self._stats = session.prepare(
            "SELECT max_seq, last_ts, received, duplicates, late, lost FROM telemetry_device_stats "
            "WHERE device_id = ?")

    # -- raw points ----------------------------------------------------------------------------
    def points(self, device_id: str, rng: TimeRange, *, limit: int, cursor: Cursor | None,
               metrics: frozenset[str] | None, now_ms: int) -> tuple[list[Point], Cursor | None]:
        """Up to ``limit`` points, newest first, strictly older than ``cursor``; and the next cursor."""
        upper = (rng.end_ms, MIN_SEQ)
        if cursor is not None and (cursor.ts_ms, cursor.seq) < upper:
            upper = (cursor.ts_ms, cursor.seq)
        hot, cold = split_hot_cold(rng.days_newest_first(), hot_horizon_day(now_ms, self.raw_ttl_days))
        out: list[Point] = []
        for day in hot + cold:
            if day_start_ms(day) + 86_400_000 <= rng.start_ms or day_start_ms(day) > upper[0]:
                continue
            want = limit + 1 - len(out)  # one extra tells whether there is a next page
            rows = (self._hot_points(device_id, day, rng.start_ms, upper, want) if day in hot
                    else self._cold_points(device_id, day, rng.start_ms, upper, want))
            out.extend(Point(p.ts_ms, p.seq, p.ingest_ts_ms, select_metrics(p.metrics, metrics), p.attrs)
                       for p in rows)
            if len(out) > limit:
                break
        page, more = out[:limit], len(out) > limit
        return page, (Cursor(page[-1].ts_ms, page[-1].seq) if more and page else None)

    def _hot_points(self, device_id: str, day: dt.date, start_ms: int, upper: tuple[int, int],
                    limit: int) -> list[Point]:
        lower_ts = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC)
        upper_ts = dt.datetime.fromtimestamp(upper[0] / 1000, dt.UTC)
        rows = self.session.execute(self._raw, (device_id, day, lower_ts, MIN_SEQ, upper_ts, upper[1], limit))
        return [Point(epoch_ms(r.ts), r.seq, epoch_ms(r.ingest_ts), dict(r.metrics or {}), _attrs(r.attrs)) for r in rows]

    def _lake_table(self, device_id: str, day: dt.date, columns: list[str]) -> pa.Table | None:
        import pyarrow.dataset as ds

        from fleet.lake.dataset import telemetry_dataset

        part = self.lake / f"date={day.isoformat()}"
        if not part.exists():
            return None
        return telemetry_dataset(part).to_table(columns=columns, filter=ds.field("device_id") == device_id)

    def _cold_points(self, device_id: str, day: dt.date, start_ms: int, upper: tuple[int, int],
                     limit: int) -> list[Point]:
        table = self._lake_table(device_id, day, ["ts", "seq", "ingest_ts", "metrics", "attrs"])
        if table is None:
            return []
        points = []
        for row in table.to_pylist():
            ts, seq = epoch_ms(row["ts"]), int(row["seq"])
            if ts >= start_ms and (ts, seq) < upper:
                metrics = row["metrics"]
                metrics = dict(metrics) if metrics is not None else {}
                points.append(Point(ts, seq, epoch_ms(row["ingest_ts"]), metrics, _attrs(row["attrs"])))
        points.sort(key=lambda p: (p.ts_ms, p.seq), reverse=True)
        return points[:limit]

    # -- rollups -------------------------------------------------------------------------------
    def rollup_buckets(self, device_id: str, metric: str, rng: TimeRange, *, now_ms: int,
                       bucket_ms: int = MINUTE_MS) -> list[Bucket]:
        """Buckets of ``metric`` in the range, from the 1-minute rollup table while it keeps the
        day, else from the lake; unsorted, to be merged with ``rebucket(..., bucket_ms)``.

        With a coarser ``bucket_ms`` Cassandra pre-aggregates each day (GROUP BY floor(bucket_start,
        ...)), so a year at 1d moves ~400 rows instead of ~500,000; the days are read concurrently.
        """
        hot, cold = split_hot_cold(rng.days_newest_first(), hot_horizon_day(now_ms, self.rollup_ttl_days))
        lo = dt.datetime.fromtimestamp(rng.start_ms / 1000, dt.UTC)
        hi = dt.datetime.fromtimestamp(rng.end_ms / 1000, dt.UTC)
        statement = self._grouped_rollup(bucket_ms)
        futures = [self.session.execute_async(statement, (device_id, day, metric, lo, hi)) for day in hot]
        out: list[Bucket] = []
        for future in futures:
            for r in future.result():
                if r.count:  # a group with no rows (none exist, but be exact)
                    out.append(Bucket(epoch_ms(r.bucket_start), r.min, r.max, r.sum, r.count))
        for day in cold:
            out.extend(self._cold_minutes(device_id, metric, day, rng))
        return out

    def _grouped_rollup(self, bucket_ms: int) -> PreparedStatement:
        """The rollup read for ``bucket_ms``: plain rows at 1 minute, else grouped by Cassandra
        into epoch-aligned buckets (floor() counts from 1970-01-01 UTC, as rebucket does)."""
        if bucket_ms <= MINUTE_MS or bucket_ms % MINUTE_MS or bucket_ms > DAY_MS:
            return self._rollup
        statement = self._grouped.get(bucket_ms)
        if statement is None:
            duration = f"{bucket_ms // MINUTE_MS}m"
            statement = self._grouped[bucket_ms] = self.session.prepare(
                f"SELECT floor(bucket_start, {duration}) AS bucket_start, min(min) AS min, max(max) AS max, "
                "sum(sum) AS sum, sum(count) AS count FROM telemetry_rollup_1m WHERE device_id = ? AND day = ? "
                "AND metric = ? AND bucket_start >= ? AND bucket_start < ? "
                f"GROUP BY metric, floor(bucket_start, {duration})")
        return statement

    def _cold_minutes(self, device_id: str, metric: str, day: dt.date, rng: TimeRange) -> Iterable[Bucket]:
        from fleet.telemetry.query import buckets_from_points

        table = self._lake_table(device_id, day, ["ts", "metrics"])
        if table is None:
            return []
        points: list[tuple[int, float]] = []
        for row in table.to_pylist():
            ts = epoch_ms(row["ts"])
            value = dict(row["metrics"] or {}).get(metric)
            if value is not None and rng.start_ms <= ts < rng.end_ms:
                points.append((ts, float(value)))
        return buckets_from_points(points, MINUTE_MS)

    # -- delivery report -----------------------------------------------------------------------
    def gaps(self, device_id: str, limit: int) -> list[dict[str, Any]]:
        return [{"first_seq": r.first_seq, "last_seq": r.last_seq, "missing": r.missing,
                 "after_ts": epoch_ms(r.after_ts), "before_ts": epoch_ms(r.before_ts), "status": r.status}
                for r in self.session.execute(self._gaps, (device_id, limit))]

    def stats(self, device_id: str) -> dict[str, Any] | None:
        row = self.session.execute(self._stats, (device_id,)).one()
        if row is None:
            return None
        return {"max_seq": row.max_seq, "last_ts": epoch_ms(row.last_ts), "received": row.received,
                "duplicates": row.duplicates, "late": row.late, "lost": row.lost}
