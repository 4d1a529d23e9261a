"""Telemetry rules, free of Flink: envelope validation, per-device dedup and gap tracking, rollups.

The telemetry job (jobs/telemetry/) is a thin shell: it loads one device's ``DeviceState``
from Flink state, calls ``observe`` (or ``on_time`` from a timer), stores the state and emits what
the returned ``Step`` says. Everything here is tested table-driven in tests/unit/test_telemetry_domain.py.

Time is per device. A record is *late* when its ``ts`` is more than ``allowed_lateness_ms``
behind the newest ``ts`` seen from the same device (its ``clock``), not behind a fleet-wide
watermark: one device with a fast clock cannot make the rest of the fleet late, and a device
uploading a backlog after an outage is not late as long as it uploads in order. Buckets and gaps
become *final* when the device's clock has moved far enough that any record still belonging to
them would be late. For devices that fall silent, timers (``on_time``) publish provisional values,
which a later record may still correct: by fleet-wide event time, and by the wall clock
(``wall_clock_timer``), so a quiet device's last minute shows even while no other device sends.

Dedup and gap detection share one structure: a record is a duplicate exactly when its ``seq`` is
at most the highest seen and not inside a known gap, so the state is the highest ``seq`` plus the
open gaps (usually none), whatever the dedup horizon. The horizon is the state's TTL in Flink.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeGuard

try:  # orjson parses several times faster than json (the job's hottest line).
    import orjson

    _loads: Callable[[str | bytes], Any] = orjson.loads
    _JSONError: type[Exception] = orjson.JSONDecodeError

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()
except ImportError:  # pragma: no cover - only where orjson is absent
    import json

    _loads = json.loads
    _JSONError = ValueError

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

from fleet.contract.topics import is_valid_device_id

SOURCE = "telemetry-job"
NO_CLOCK = -(1 << 62)

# Dead-letter reason codes added by the job (the bridge's are in fleet.contract.envelope).
INVALID_JSON = "invalid_json"
INVALID_ENVELOPE = "invalid_envelope"
TS_IN_FUTURE = "ts_in_future"
LATE = "late"
KEY_MISMATCH = "key_mismatch"

# Bounds from schemas/mqtt/telemetry.schema.json.
MIN_TS, MAX_TS = 946684800000, 4102444800000
MAX_SEQ = 9007199254740991
MAX_METRICS = 256
MAX_ABS_METRIC = 1e300


@dataclass(frozen=True, slots=True)
class TelemetryRules:
    """The knobs of the domain (the job's command line and environment set them)."""

    # A record more than this behind its device's newest ts is dead-lettered as late.
    allowed_lateness_ms: int = 60_000
    # A ts this far ahead of the bridge's ingest time is a broken device clock, not data.
    max_future_skew_ms: int = 300_000
    rollup_bucket_ms: int = 60_000
    # Beyond this many open gaps per device the oldest are declared lost (bounds the state).
    max_open_gaps: int = 1000


@dataclass(frozen=True, slots=True)
class Point:
    """One accepted telemetry sample (what the stores get)."""

    device_id: str
    ts: int
    seq: int
    ingest_ts: int
    metrics: dict[str, float]
    attrs: str  # JSON text ("{}" when the payload had none)
    mqtt_topic: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to dead-letter."""

    reason: str
    detail: str
    device_id: str | None = None
    mqtt_topic: str = ""
    ingest_ts: int | None = None


# --- envelope validation ---------------------------------------------------------------------

def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int  # bool is an int subclass and never a valid ts/seq


def parse_envelope(raw: str | bytes, rules: TelemetryRules = TelemetryRules()) -> Point | Rejected:
    """The bridge's Kafka record (schemas/kafka/envelope.schema.json) -> Point, or why not.

    The bridge already validated the device payload; this re-checks what the job relies on,
    cheaply, because anything can be produced to a Kafka topic.
    """
    try:
        env = _loads(raw)
    except (_JSONError, UnicodeDecodeError) as err:
        return Rejected(INVALID_JSON, f"not valid JSON: {err}")
    if not isinstance(env, dict):
        return Rejected(INVALID_ENVELOPE, "$: the record is not a JSON object")
    device_id = env.get("device_id")
    topic = env.get("mqtt_topic")
    topic = topic if isinstance(topic, str) else ""
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        return Rejected(INVALID_ENVELOPE, f"$.device_id: not a valid device id: {device_id!r}"[:300], None, topic)

    def reject(detail: str, reason: str = INVALID_ENVELOPE) -> Rejected:
        ingest = env.get("ingest_ts")
        return Rejected(reason, detail, device_id, topic, ingest if _is_int(ingest) else None)

    if env.get("type") != "telemetry":
        return reject(f"$.type: expected 'telemetry', got {env.get('type')!r}"[:300])
    ingest_ts = env.get("ingest_ts")
    if not _is_int(ingest_ts):
        return reject("$.ingest_ts: must be an integer (epoch ms)")
    payload = env.get("payload")
    if not isinstance(payload, dict):
        return reject("$.payload: must be an object")
    ts = payload.get("ts")
    if not _is_int(ts) or not MIN_TS <= ts <= MAX_TS:
        return reject(f"$.payload.ts: must be an integer epoch ms in [{MIN_TS}, {MAX_TS}], got {ts!r}"[:300])
    if ts > ingest_ts + rules.max_future_skew_ms:
        return reject(f"$.payload.ts: {ts} is {ts - ingest_ts} ms ahead of ingest time {ingest_ts} "
                      f"(limit {rules.max_future_skew_ms} ms)", TS_IN_FUTURE)
    seq = payload.get("seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        return reject(f"$.payload.seq: must be an integer in [0, {MAX_SEQ}], got {seq!r}"[:300])
    metrics = payload.get("metrics")
    if not isinstance(metrics, dict):
        return reject("$.payload.metrics: must be an object of numbers")
    if len(metrics) > MAX_METRICS:
        return reject(f"$.payload.metrics: {len(metrics)} metrics, the limit is {MAX_METRICS}")
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        if type(value) not in (int, float) or not -MAX_ABS_METRIC <= value <= MAX_ABS_METRIC:
            return reject(f"$.payload.metrics.{name}: must be a finite number, got {value!r}"[:300])
        clean[name] = float(value)
    attrs = payload.get("attrs")
    if attrs is None:
        attrs_json = "{}"
    elif isinstance(attrs, dict):
        attrs_json = dumps(attrs)
    else:
        return reject("$.payload.attrs: must be an object")
    return Point(device_id, ts, seq, ingest_ts, clean, attrs_json, topic)


def check_key(point: Point, key: str) -> Rejected | None:
    """A record must be keyed by its own device: its per-device state lives under the Kafka key,
    so a record filed under another device's key would corrupt that device's dedup and gaps."""
    if point.device_id == key:
        return None
    return Rejected(KEY_MISMATCH, f"$.device_id: {point.device_id!r} but the record key is {key!r}"[:300],
                    point.device_id, point.mqtt_topic, point.ingest_ts)


def dead_letter(rejected: Rejected, raw: str | bytes, now_ms: int) -> dict[str, Any]:
    """The dead-letter record (schemas/kafka/dead-letter.schema.json shape) for a rejected record."""
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    return {
        "type": "dead-letter",
        "reason": rejected.reason,
        "detail": rejected.detail,
        "source": SOURCE,
        "mqtt_topic": rejected.mqtt_topic,
        "device_id": rejected.device_id,
        "ingest_ts": rejected.ingest_ts if rejected.ingest_ts is not None else now_ms,
        "raw_b64": base64.b64encode(raw_bytes).decode("ascii"),
        "raw_size": len(raw_bytes),
        "raw_truncated": False,
    }


# --- per-device state ------------------------------------------------------------------------

@dataclass(slots=True)
class Gap:
    """seqs first..last were not seen; they fall between the records at after_ts and before_ts."""

    first: int
    last: int
    after_ts: int
    before_ts: int
    # Published as provisional ("open") by on_time: later fills must then be published too.
    reported: bool = False

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class Agg:
    min: float
    max: float
    sum: float
    count: int

    def add(self, value: float) -> None:
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.sum += value
        self.count += 1


@dataclass(slots=True)
class Bucket:
    start: int
    aggs: dict[str, Agg] = field(default_factory=dict)
    # Changed since last published (a provisional publish clears it).
    dirty: bool = True


@dataclass(slots=True)
class DeviceState:
    max_seq: int = -1
    last_ts: int = NO_CLOCK  # ts of the record with max_seq
    clock: int = NO_CLOCK  # newest ts seen
    received: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    gaps: list[Gap] = field(default_factory=list)
    buckets: dict[int, Bucket] = field(default_factory=dict)


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"


# Gap statuses as stored (telemetry_gaps.status).
GAP_OPEN = "open"  # not seen yet, may still arrive
GAP_LOST = "lost"  # can no longer arrive in time: lost (or dead-lettered as late)
GAP_FILLED = "filled"  # a provisional gap whose records all arrived after all


@dataclass(frozen=True, slots=True)
class GapReport:
    first_seq: int
    last_seq: int
    missing: int
    after_ts: int
    before_ts: int
    status: str


@dataclass(frozen=True, slots=True)
class Rollup:
    bucket_start: int
    metric: str
    min: float
    max: float
    sum: float
    count: int
    final: bool

    @property
    def avg(self) -> float:
        return clamped_mean(self.sum, self.count, self.min, self.max)


def clamped_mean(total: float, count: int, low: float, high: float) -> float:
    """``total / count`` kept inside [low, high]: a rounded float sum can put the mean of equal
    values an ulp outside (0.7 + 0.7 + 0.7 = 2.0999999999999996, / 3 < 0.7)."""
    return min(max(total / count, low), high)


@dataclass(slots=True)
class Step:
    """What one observation or timer produced."""

    outcome: Outcome | None = None
    gaps: list[GapReport] = field(default_factory=list)
    rollups: list[Rollup] = field(default_factory=list)
    # Event-time timers the shell should register (epoch ms).
    timers: list[int] = field(default_factory=list)
    # True when the device's counters should be published (with final rollups or gap news).
    stats_changed: bool = False


def _report(gap: Gap, status: str) -> GapReport:
    missing = 0 if status == GAP_FILLED else gap.missing
    return GapReport(gap.first, gap.last, missing, gap.after_ts, gap.before_ts, status)


def _find_gap(gaps: list[Gap], seq: int) -> int:
    # Gaps are few and sorted by first seq; a linear scan beats bisect at these sizes.
    for i, gap in enumerate(gaps):
        if gap.first <= seq <= gap.last:
            return i
    return -1


def observe(state: DeviceState, point: Point, rules: TelemetryRules, step: Step | None = None) -> Step:
    """Apply one record to its device's state (mutated in place)."""
    step = step or Step()
    seq, ts = point.seq, point.ts
    gap_index = -1
    if seq <= state.max_seq:
        gap_index = _find_gap(state.gaps, seq) if state.gaps else -1
        if gap_index < 0:
            state.duplicates += 1
            step.outcome = Outcome.DUPLICATE
            return step
    if state.clock != NO_CLOCK and ts < state.clock - rules.allowed_lateness_ms:
        state.late += 1
        step.outcome = Outcome.LATE
        return step

    step.outcome = Outcome.ACCEPTED
    state.received += 1
    if gap_index >= 0:
        _fill(state, gap_index, seq, ts, step)
    else:
        if state.max_seq >= 0 and seq > state.max_seq + 1:
            gap = Gap(state.max_seq + 1, seq - 1, state.last_ts, ts)
            state.gaps.append(gap)
            step.timers.append(ts + rules.allowed_lateness_ms)
            if len(state.gaps) > rules.max_open_gaps:
                _finalize_gap(state, state.gaps.pop(0), step)
        state.max_seq = seq
        state.last_ts = ts

    start = ts - ts % rules.rollup_bucket_ms
    bucket = state.buckets.get(start)
    if bucket is None:
        bucket = state.buckets[start] = Bucket(start)
        step.timers.append(start + rules.rollup_bucket_ms + rules.allowed_lateness_ms)
    bucket.dirty = True
    aggs = bucket.aggs
    for name, value in point.metrics.items():
        agg = aggs.get(name)
        if agg is None:
            aggs[name] = Agg(value, value, value, 1)
        else:
            agg.add(value)

    if ts > state.clock:
        state.clock = ts
        _close_by_clock(state, rules, step)
    return step


def _fill(state: DeviceState, index: int, seq: int, ts: int, step: Step) -> None:
    gap = state.gaps[index]
    pieces = []
    if seq > gap.first:
        pieces.append(Gap(gap.first, seq - 1, gap.after_ts, ts, gap.reported))
    if seq < gap.last:
        pieces.append(Gap(seq + 1, gap.last, ts, gap.before_ts, gap.reported))
    state.gaps[index:index + 1] = pieces
    if gap.reported:
        # The stored row is keyed by first seq: rewrite it, and add a row for an upper piece.
        if seq == gap.first:
            step.gaps.append(_report(Gap(seq, seq, gap.after_ts, ts), GAP_FILLED))
        step.gaps.extend(_report(p, GAP_OPEN) for p in pieces)
        step.stats_changed = True


def _finalize_gap(state: DeviceState, gap: Gap, step: Step) -> None:
    state.lost += gap.missing
    step.gaps.append(_report(gap, GAP_LOST))
    step.stats_changed = True


def _close_by_clock(state: DeviceState, rules: TelemetryRules, step: Step) -> None:
    """Publish what the device's clock has made final: buckets and gaps nothing can change now."""
    horizon = state.clock - rules.allowed_lateness_ms  # records before this are late
    if state.gaps and any(g.before_ts < horizon for g in state.gaps):
        keep = []
        for gap in state.gaps:
            if gap.before_ts < horizon:
                _finalize_gap(state, gap, step)
            else:
                keep.append(gap)
        state.gaps = keep
    size = rules.rollup_bucket_ms
    # Usually one open bucket, still current: skip the sort.
    if not state.buckets or len(state.buckets) == 1 and next(iter(state.buckets)) + size > horizon:
        return
    for start in sorted(state.buckets):
        if start + size > horizon:
            break
        bucket = state.buckets.pop(start)
        if bucket.dirty:
            step.rollups.extend(_rollups(bucket, final=True))
        step.stats_changed = True


# A quiet device's buckets and gaps are published (provisionally) by the wall clock too, so what an
# operator sees never waits for other devices to move the fleet-wide event time: this long after
# the wall clock passes the point its event-time timer stands for.
WALL_CLOCK_SLACK_MS = 2_000


def wall_clock_timer(event_timer: int, wall_now: int, rules: TelemetryRules) -> int:
    """The processing-time timer that backs the event-time timer ``event_timer``, registered at
    wall-clock ``wall_now``. A live device's clock is the wall clock, so its timer fires when the
    wall clock gets there; a device uploading an old backlog is given the allowed lateness to move
    on first. Rounded up to whole seconds, so one device's timers coalesce."""
    due = max(event_timer, wall_now + rules.allowed_lateness_ms) + WALL_CLOCK_SLACK_MS
    return -(-due // 1000) * 1000


def wall_clock_now(timer: int) -> int:
    """The event time a processing-time timer from ``wall_clock_timer`` lets ``on_time`` assume."""
    return timer - WALL_CLOCK_SLACK_MS


def on_time(state: DeviceState, now: int, rules: TelemetryRules) -> Step:
    """The fleet-wide event time reached ``now``: publish provisional values for a silent device.

    Buckets and gaps stay in the state (a later record may still change them) until the device's
    own clock makes them final; what was published is then corrected if needed.
    """
    step = Step()
    size, lateness = rules.rollup_bucket_ms, rules.allowed_lateness_ms
    for start in sorted(state.buckets):
        if start + size + lateness > now:
            break
        bucket = state.buckets[start]
        if bucket.dirty:
            step.rollups.extend(_rollups(bucket, final=False))
            bucket.dirty = False
            # Its records are counted too: without this a device that went quiet would show
            # delivery stats without its last minute until it sends again.
            step.stats_changed = True
    for gap in state.gaps:
        if not gap.reported and gap.before_ts + lateness <= now:
            gap.reported = True
            step.gaps.append(_report(gap, GAP_OPEN))
            step.stats_changed = True
    return step


def _rollups(bucket: Bucket, final: bool) -> Iterable[Rollup]:
    for name in sorted(bucket.aggs):
        agg = bucket.aggs[name]
        yield Rollup(bucket.start, name, agg.min, agg.max, agg.sum, agg.count, final)


# --- state <-> plain values (what Flink stores) ---------------------------------------------

# Layout of the typed tracker state (a long[]): header, then 5 longs per gap.
_HEADER = 7
_GAP_WIDTH = 5


def encode_tracker(state: DeviceState) -> list[int]:
    out = [state.max_seq, state.last_ts, state.clock, state.received, state.duplicates, state.late, state.lost]
    for g in state.gaps:
        out += (g.first, g.last, g.after_ts, g.before_ts, 1 if g.reported else 0)
    return out


def encode_buckets(state: DeviceState) -> dict[str, list[float]]:
    """{"<start>|<metric>": [min, max, sum, count, dirty]} (a flat map<string, double[]>)."""
    out: dict[str, list[float]] = {}
    for start, bucket in state.buckets.items():
        dirty = 1.0 if bucket.dirty else 0.0
        prefix = f"{start}|"
        for name, a in bucket.aggs.items():
            out[prefix + name] = [a.min, a.max, a.sum, float(a.count), dirty]
    return out


def decode_state(tracker: list[int] | None, buckets: dict[str, list[float]] | None) -> DeviceState:
    state = DeviceState()
    if tracker:
        (state.max_seq, state.last_ts, state.clock, state.received, state.duplicates, state.late,
         state.lost) = tracker[:_HEADER]
        for i in range(_HEADER, len(tracker), _GAP_WIDTH):
            first, last, a, b, r = tracker[i:i + _GAP_WIDTH]
            state.gaps.append(Gap(first, last, a, b, bool(r)))
    if buckets:
        for key, (mn, mx, sm, cnt, dirty) in buckets.items():
            start_text, name = key.split("|", 1)
            start = int(start_text)
            bucket = state.buckets.get(start)
            if bucket is None:
                bucket = state.buckets[start] = Bucket(start, dirty=bool(dirty))
            bucket.aggs[name] = Agg(mn, mx, sm, int(cnt))
    return state

