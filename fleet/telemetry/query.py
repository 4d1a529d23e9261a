"""Rules of the telemetry query API, free of Cassandra and FastAPI: time ranges and their bounds,
day partitions, hot/cold split, page tokens, and re-bucketing of 1-minute rollups.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.telemetry.domain import clamped_mean

UTC = dt.UTC
MINUTE_MS = 60_000
DAY_MS = 86_400_000

BUCKETS_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "1h": 60 * MINUTE_MS, "1d": DAY_MS}
AGG_FUNCTIONS = ("avg", "min", "max", "count", "sum")

MAX_RAW_RANGE_DAYS = 31
MAX_AGG_RANGE_DAYS = 400
MAX_BUCKETS = 20_000
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A request the API answers with 400; the message names the bound or the bad value."""


def parse_time(value: str | None, name: str) -> int | None:
    """Epoch milliseconds from an integer (ms) or an ISO 8601 string (naive = UTC)."""
    if value is None or value == "":
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"'{name}' must be epoch milliseconds or an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class TimeRange:
    """Half-open [start_ms, end_ms)."""

    start_ms: int
    end_ms: int

    @classmethod
    def from_params(cls, start: str | None, end: str | None, *, now_ms: int, default_span_ms: int,
                    max_days: int) -> TimeRange:
        end_ms = parse_time(end, "to")
        start_ms = parse_time(start, "from")
        end_ms = now_ms if end_ms is None else end_ms
        start_ms = end_ms - default_span_ms if start_ms is None else start_ms
        if start_ms >= end_ms:
            raise QueryError("'from' must be earlier than 'to'")
        if start_ms < 0:
            raise QueryError("'from' must not be before 1970-01-01")
        if end_ms - start_ms > max_days * DAY_MS:
            raise QueryError(f"the range is {(end_ms - start_ms) / DAY_MS:.1f} days; at most {max_days} days "
                             f"per request (narrow 'from'/'to', or use /telemetry/aggregate)")
        return cls(start_ms, end_ms)

    def days_newest_first(self) -> list[dt.date]:
        """UTC days the range touches, newest first (the order raw points are returned in)."""
        first = day_of(self.start_ms)
        last = day_of(self.end_ms - 1)
        return [last - dt.timedelta(days=i) for i in range((last - first).days + 1)]


def day_of(ts_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ms / 1000, UTC).date()


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def hot_horizon_day(now_ms: int, hot_days: int) -> dt.date:
    """Oldest UTC day whose raw points are still entirely in Cassandra (younger than the TTL).

    A day is hot only if its *first* millisecond is within the TTL: otherwise its oldest rows may
    already have expired, and the lake (which keeps everything) answers for the whole day.
    """
    return day_of(now_ms - hot_days * DAY_MS) + dt.timedelta(days=1)


def split_hot_cold(days: Sequence[dt.date], horizon: dt.date) -> tuple[list[dt.date], list[dt.date]]:
    return [d for d in days if d >= horizon], [d for d in days if d < horizon]


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"'limit' must be between 1 and {MAX_LIMIT}")
    return limit


def parse_metrics(value: str | None) -> frozenset[str] | None:
    if not value:
        return None
    names = frozenset(m.strip() for m in value.split(",") if m.strip())
    return names or None


# -- pagination ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """The last point returned: the next page holds points strictly older than (ts, seq)."""

    ts_ms: int
    seq: int

    def encode(self) -> str:
        raw = json.dumps({"t": self.ts_ms, "s": self.seq}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> Cursor | None:
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            return cls(int(data["t"]), int(data["s"]))
        except (ValueError, KeyError, TypeError):
            raise QueryError("'page_token' is not a token this API issued") from None


def select_metrics(metrics: dict[str, float] | None, wanted: frozenset[str] | None) -> dict[str, float]:
    metrics = metrics or {}
    return metrics if wanted is None else {k: v for k, v in metrics.items() if k in wanted}


# -- aggregation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    start_ms: int
    min: float
    max: float
    sum: float
    count: int

    @property
    def avg(self) -> float:
        return clamped_mean(self.sum, self.count, self.min, self.max) if self.count else math.nan

    def value(self, fn: str) -> float | int:
        return {"avg": self.avg, "min": self.min, "max": self.max, "count": self.count, "sum": self.sum}[fn]


def parse_bucket(value: str) -> int:
    try:
        return BUCKETS_MS[value]
    except KeyError:
        raise QueryError(f"'bucket' must be one of {', '.join(BUCKETS_MS)}") from None


def parse_functions(value: str | None) -> tuple[str, ...]:
    fns = tuple(f.strip() for f in (value or "avg,min,max,count").split(",") if f.strip())
    bad = [f for f in fns if f not in AGG_FUNCTIONS]
    if bad or not fns:
        raise QueryError(f"'fn' must be a comma-separated list of {', '.join(AGG_FUNCTIONS)}")
    return fns


def check_bucket_count(rng: TimeRange, bucket_ms: int) -> None:
    count = math.ceil((rng.end_ms - rng.start_ms) / bucket_ms)
    if count > MAX_BUCKETS:
        raise QueryError(f"{count} buckets requested; at most {MAX_BUCKETS} per request "
                         f"(use a larger 'bucket' or a shorter range)")


def rebucket(minutes: Iterable[Bucket], bucket_ms: int) -> list[Bucket]:
    """Merge 1-minute (or finer) buckets into ``bucket_ms`` buckets aligned to the epoch (UTC)."""
    merged: dict[int, Bucket] = {}
    for b in minutes:
        key = b.start_ms - b.start_ms % bucket_ms
        prev = merged.get(key)
        merged[key] = b.__class__(key, b.min, b.max, b.sum, b.count) if prev is None else Bucket(
            key, min(prev.min, b.min), max(prev.max, b.max), prev.sum + b.sum, prev.count + b.count)
    return [merged[k] for k in sorted(merged)]


def buckets_from_points(points: Iterable[tuple[int, float]], bucket_ms: int) -> list[Bucket]:
    """Aggregate raw (ts_ms, value) points, for ranges only the lake still holds."""
    return rebucket((Bucket(ts, v, v, v, 1) for ts, v in points), bucket_ms)
