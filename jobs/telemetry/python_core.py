"""The Python implementation of the telemetry core (``--core python``): the readable reference.

A thin thread-mode shell around fleet.telemetry.domain, which does the work: per device,
validate, dedup by seq, lateness, gaps and 1-minute rollups. The default core is its Java port
(fleet.flink.telemetry.TelemetryCore, wired in pyflink_internals.java_core); both emit the same
records (see records) and the pipeline tests hold them to the same expectations.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from fleet.telemetry import domain as dom
from jobs.telemetry.options import JobOptions
from jobs.telemetry.records import DEAD_LETTERS, GAPS, ROLLUPS, STATS


class TelemetryCore(KeyedProcessFunction):
    """Per device: validate, dedup, lateness, gaps, rollups (fleet.telemetry.domain does the work).

    The readable reference core (``--core python``); the default is its Java port, see
    pyflink_internals.java_core."""

    def __init__(self, options: JobOptions):
        self.options = options
        self.rules = options.rules

    def open(self, ctx: RuntimeContext) -> None:
        # Expired entries are dropped by RocksDB's compaction filter. The strategy is spelled out
        # with a periodic-compaction time because PyFlink's default builds a py4j Duration, and
        # open() runs inside the TaskManager where there is no py4j gateway (thread mode fails
        # with "FileNotFoundError: 2" launching one).
        ttl = (StateTtlConfig.new_builder(Time.milliseconds(self.options.state_ttl_ms))
               .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
               .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
               .cleanup_in_rocksdb_compact_filter(1000, Time.days(30))
               # Without this, PyFlink also builds its *default* compaction strategy, whose
               # Duration.of_days(30) needs the py4j gateway that a TaskManager does not have.
               .disable_cleanup_in_background()
               .build())
        # One value per device: [tracker, buckets] as plain lists, ints, floats and a dict
        # (dom.encode_tracker / dom.encode_buckets), never domain classes, so savepoints survive
        # refactoring. Pickled because thread-mode state only maps basic types, arrays and maps to
        # Java types (LIST and ROW fall back to pickling anyway), and its array converters break on
        # an absent value and on RocksDB's serialisers; one state access per record is also the
        # cheapest.
        device = ValueStateDescriptor("device", Types.PICKLED_BYTE_ARRAY())
        device.enable_time_to_live(ttl)
        self.device = ctx.get_state(device)
        # Write-through cache of decoded states: every change is still written to Flink state
        # (what checkpoints capture), but the read, a Java call costing tens of microseconds
        # from thread-mode Python, is skipped for devices seen recently. Only this subtask writes
        # these keys, and a restore creates a new instance, so the cache cannot go stale.
        self.cache: dict[str, dom.DeviceState] = {}
        # Metric updates are Java calls too: counted here, pushed every few hundred records.
        self.counts = dict.fromkeys(("accepted", "duplicates", "late", "invalid", "gapsLost", "recordsLost"), 0)
        group = ctx.get_metrics_group().add_group("telemetry")
        self.counters = {name: group.counter(name) for name in self.counts}
        self.pending = 0

    def process_element(self, raw: str, ctx: KeyedProcessFunction.Context) -> Iterable:
        counts = self.counts
        point = dom.parse_envelope(raw, self.rules)
        if not isinstance(point, dom.Rejected):
            point = dom.check_key(point, ctx.get_current_key()) or point
        if isinstance(point, dom.Rejected):
            counts["invalid"] += 1
            yield DEAD_LETTERS, dom.dumps(dom.dead_letter(point, raw, _now_ms()))
            return
        state = self._load(point.device_id)
        step = dom.observe(state, point, self.rules)
        if step.outcome is dom.Outcome.ACCEPTED:
            counts["accepted"] += 1
            yield raw
        elif step.outcome is dom.Outcome.DUPLICATE:
            counts["duplicates"] += 1
        else:
            counts["late"] += 1
            late = dom.Rejected(dom.LATE, f"ts {point.ts} is {state.clock - point.ts} ms behind the device's newest "
                                          f"ts {state.clock} (allowed lateness {self.rules.allowed_lateness_ms} ms)",
                                point.device_id, point.mqtt_topic, point.ingest_ts)
            yield DEAD_LETTERS, dom.dumps(dom.dead_letter(late, raw, _now_ms()))
        self._store(state)
        if step.timers:
            timers = ctx.timer_service()
            wall = timers.current_processing_time() if self.options.wall_clock_timers else None
            for t in step.timers:
                timers.register_event_time_timer(t)
                if wall is not None:
                    timers.register_processing_time_timer(dom.wall_clock_timer(t, wall, self.rules))
        if step.rollups or step.gaps or step.stats_changed:
            yield from self._emit(point.device_id, state, step)
        self.pending += 1
        if self.pending >= 500:
            self._flush_counts()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable:
        device_id = ctx.get_current_key()
        state = self.cache.get(device_id)
        if state is None:
            stored = self.device.value()
            if stored is None:  # expired or never written
                return
            state = dom.decode_state(*stored)
        now = timestamp if ctx.time_domain() == TimeDomain.EVENT_TIME else dom.wall_clock_now(timestamp)
        step = dom.on_time(state, now, self.rules)
        if step.rollups or step.gaps:
            self._store(state)
        self._flush_counts()
        yield from self._emit(device_id, state, step)

    def _load(self, device_id: str) -> dom.DeviceState:
        state = self.cache.get(device_id)
        if state is None:
            stored = self.device.value()
            state = dom.decode_state(*stored) if stored is not None else dom.DeviceState()
            if len(self.cache) >= self.options.state_cache_size:
                del self.cache[next(iter(self.cache))]  # the longest cached; cheap and good enough
            self.cache[device_id] = state
        return state

    def _store(self, state: dom.DeviceState) -> None:
        self.device.update([dom.encode_tracker(state), dom.encode_buckets(state)])

    def _flush_counts(self) -> None:
        for name, n in self.counts.items():
            if n:
                self.counters[name].inc(n)
                self.counts[name] = 0
        self.pending = 0

    def _emit(self, device_id: str, state: dom.DeviceState, step: dom.Step) -> Iterable:
        dumps = dom.dumps
        for r in step.rollups:
            yield ROLLUPS, dumps({"device_id": device_id, "bucket_start": r.bucket_start, "metric": r.metric,
                                  "min": r.min, "max": r.max, "avg": r.avg, "sum": r.sum, "count": r.count})
        for g in step.gaps:
            if g.status == dom.GAP_LOST:
                self.counts["gapsLost"] += 1
                self.counts["recordsLost"] += g.missing
            yield GAPS, dumps({"device_id": device_id, "first_seq": g.first_seq, "last_seq": g.last_seq,
                               "missing": g.missing, "after_ts": g.after_ts, "before_ts": g.before_ts,
                               "status": g.status})
        if step.stats_changed:
            yield STATS, dumps({"device_id": device_id, "max_seq": state.max_seq, "last_ts": state.clock,
                                "received": state.received, "duplicates": state.duplicates, "late": state.late,
                                "lost": state.lost})


def _now_ms() -> int:
    return int(time.time() * 1000)
