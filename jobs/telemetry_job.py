"""The telemetry job: Kafka telemetry -> validated, deduplicated points -> Cassandra and the Parquet lake.

    source (raw envelope JSON, event time + watermarks)
      -> key by device_id
      -> telemetry-core (validate, dedup by seq, per-device lateness, gaps, 1-minute rollups)
           main output  : accepted points   -> Cassandra `telemetry` + Parquet lake
           side outputs : rollups           -> Cassandra `telemetry_rollup_1m`
                          gaps, stats       -> Cassandra `telemetry_gaps`, `telemetry_device_stats`
                          dead letters      -> Kafka `dead-letter`

``build`` assembles that pipeline from a source stream and a ``TelemetrySinks`` passed in, so the
pipeline tests run it on in-memory data (tests/pipeline/test_telemetry_job.py) and ``main``
plugs in Kafka, Cassandra and the lake. The rules live in fleet.domain.telemetry; the Flink
function here only loads state, calls the domain, stores state and emits.

Submit: ``fleet``'s launcher does it (fleet.stack.flink.submit_job), or by hand:
    flink run --python jobs/telemetry_job.py --pyFiles fleet,jobs [--allowed-lateness-ms 60000 ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from pyflink.common import Duration, Row, Types, WatermarkStrategy
from pyflink.common.time import Time
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (DataStream, KeyedProcessFunction, KeyedStream, OutputTag, RuntimeContext,
                                StreamExecutionEnvironment)
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from fleet.domain import telemetry as dom
from fleet.settings import Settings

log = logging.getLogger("telemetry_job")

# --- record shapes between operators ---------------------------------------------------------

POINT_FIELDS = ["device_id", "ts", "seq", "ingest_ts", "metrics", "attrs"]
POINT_TYPE = Types.ROW_NAMED(POINT_FIELDS, [
    Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG(), Types.MAP(Types.STRING(), Types.DOUBLE()), Types.STRING(),
])
ROLLUP_FIELDS = ["device_id", "bucket_start", "metric", "min", "max", "avg", "sum", "count"]
ROLLUP_TYPE = Types.ROW_NAMED(ROLLUP_FIELDS, [
    Types.STRING(), Types.LONG(), Types.STRING(), Types.DOUBLE(), Types.DOUBLE(), Types.DOUBLE(), Types.DOUBLE(),
    Types.LONG(),
])
GAP_FIELDS = ["device_id", "first_seq", "last_seq", "missing", "after_ts", "before_ts", "status"]
GAP_TYPE = Types.ROW_NAMED(GAP_FIELDS, [
    Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG(), Types.LONG(), Types.LONG(), Types.STRING(),
])
STATS_FIELDS = ["device_id", "max_seq", "last_ts", "received", "duplicates", "late", "lost"]
STATS_TYPE = Types.ROW_NAMED(STATS_FIELDS, [Types.STRING()] + [Types.LONG()] * 6)

ROLLUPS = OutputTag("rollups", ROLLUP_TYPE)
GAPS = OutputTag("gaps", GAP_TYPE)
STATS = OutputTag("device-stats", STATS_TYPE)
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())  # dead-letter JSON (schemas/kafka/dead-letter)


@dataclass(frozen=True)
class JobOptions:
    """Tuning of the job (command-line flags of ``main``); endpoints and paths come from Settings."""

    rules: dom.TelemetryRules = field(default_factory=dom.TelemetryRules)
    # Dedup horizon: a device's seq/gap/rollup state expires after this much inactivity.
    state_ttl_ms: int = 7 * 24 * 3600 * 1000
    # Watermarks (fleet-wide event time) only flush silent devices' rollups and gaps.
    out_of_orderness_ms: int = 5_000
    idleness_ms: int = 30_000
    raw_ttl_s: int = 30 * 24 * 3600
    rollup_ttl_s: int = 400 * 24 * 3600
    lake_part_mb: int = 128
    # The lake sink's parallelism: 1 writes one file per partition and checkpoint.
    lake_parallelism: int = 1
    cassandra_max_in_flight: int = 512
    cassandra_dc: str = "datacenter1"
    # "payload": event time from the envelope's ts (device time); "kafka": the record timestamp.
    event_time: str = "payload"
    group_id: str = "fleet-telemetry-job"
    # Skip Cassandra or the lake (benchmarks, partial stacks).
    cassandra: bool = True
    lake: bool = True


# --- operators -------------------------------------------------------------------------------

def device_key(raw: str) -> str:
    """Partition key of a raw envelope: its device_id ("" when unreadable; the core rejects it).

    The bridge writes device_id first; reading it without a JSON parse keeps the pre-shuffle
    operator cheap. A valid device id never needs escaping, so the fast path is exact for it.
    """
    if raw.startswith('{"device_id":"'):
        end = raw.find('"', 14)
        if end > 14:
            return raw[14:end]
    try:
        device_id = dom._loads(raw).get("device_id")
    except Exception:  # anything unreadable is keyed "" and dead-lettered by the core
        return ""
    return device_id if isinstance(device_id, str) else ""


class PayloadTimestamp(TimestampAssigner):
    """Event time = the envelope's ts (the device's sample time; the bridge copies payload.ts)."""

    def extract_timestamp(self, value: str, record_timestamp: int) -> int:
        start = value.find('"ts":')
        if start > 0:
            end = start + 5
            while end < len(value) and value[end].isdigit():
                end += 1
            if end > start + 5:
                return int(value[start + 5:end])
        return record_timestamp


class TelemetryCore(KeyedProcessFunction):
    """Per device: validate, dedup, lateness, gaps, rollups (fleet.domain.telemetry does the work)."""

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
        metrics = ctx.get_metrics_group().add_group("telemetry")
        self.accepted = metrics.counter("accepted")
        self.duplicates = metrics.counter("duplicates")
        self.late = metrics.counter("late")
        self.invalid = metrics.counter("invalid")
        self.gaps_lost = metrics.counter("gapsLost")
        self.missing_lost = metrics.counter("recordsLost")

    def process_element(self, raw: str, ctx: KeyedProcessFunction.Context) -> Iterable:
        point = dom.parse_envelope(raw, self.rules)
        if isinstance(point, dom.Rejected):
            self.invalid.inc()
            yield DEAD_LETTERS, dom.dumps(dom.dead_letter(point, raw, _now_ms()))
            return
        state = self._load()
        step = dom.observe(state, point, self.rules)
        if step.outcome is dom.Outcome.ACCEPTED:
            self.accepted.inc()
            yield Row(point.device_id, point.ts, point.seq, point.ingest_ts, point.metrics, point.attrs)
        elif step.outcome is dom.Outcome.DUPLICATE:
            self.duplicates.inc()
        else:
            self.late.inc()
            late = dom.Rejected(dom.LATE, f"ts {point.ts} is {state.clock - point.ts} ms behind the device's newest "
                                          f"ts {state.clock} (allowed lateness {self.rules.allowed_lateness_ms} ms)",
                                point.device_id, point.mqtt_topic, point.ingest_ts)
            yield DEAD_LETTERS, dom.dumps(dom.dead_letter(late, raw, _now_ms()))
        self._store(state)
        timers = ctx.timer_service()
        for t in step.timers:
            timers.register_event_time_timer(t)
        yield from self._emit(point.device_id, state, step)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable:
        stored = self.device.value()
        if stored is None:  # expired or never written
            return
        state = dom.decode_state(*stored)
        step = dom.on_time(state, timestamp, self.rules)
        if step.rollups or step.gaps:
            self._store(state)
        yield from self._emit(ctx.get_current_key(), state, step)

    def _load(self) -> dom.DeviceState:
        stored = self.device.value()
        return dom.decode_state(*stored) if stored is not None else dom.DeviceState()

    def _store(self, state: dom.DeviceState) -> None:
        self.device.update([dom.encode_tracker(state), dom.encode_buckets(state)])

    def _emit(self, device_id: str, state: dom.DeviceState, step: dom.Step) -> Iterable:
        for r in step.rollups:
            yield ROLLUPS, Row(device_id, r.bucket_start, r.metric, r.min, r.max, r.avg, r.sum, r.count)
        for g in step.gaps:
            if g.status == dom.GAP_LOST:
                self.gaps_lost.inc()
                self.missing_lost.inc(g.missing)
            yield GAPS, Row(device_id, g.first_seq, g.last_seq, g.missing, g.after_ts, g.before_ts, g.status)
        if step.stats_changed:
            yield STATS, Row(device_id, state.max_seq, state.clock, state.received, state.duplicates, state.late,
                             state.lost)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the pipeline ----------------------------------------------------------------------------

class TelemetrySinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream."""

    def points(self, points: DataStream) -> None: ...

    def rollups(self, rollups: DataStream) -> None: ...

    def gaps(self, gaps: DataStream) -> None: ...

    def stats(self, stats: DataStream) -> None: ...

    def dead_letters(self, dead_letters: DataStream) -> None: ...


def build(env: StreamExecutionEnvironment, settings: Settings, source: DataStream, sinks: TelemetrySinks,
          options: JobOptions = JobOptions()) -> DataStream:
    """Wire the pipeline. ``source``: raw envelope JSON strings carrying event timestamps and
    watermarks. Returns the accepted points stream (rows of POINT_TYPE)."""
    points = (
        key_by_in_order(source, device_key)
        .process(TelemetryCore(options), output_type=POINT_TYPE)
        .name("telemetry-core").uid("telemetry-core")
    )  # Row(device_id, ts, seq, ingest_ts, metrics, attrs): each (device_id, seq) once
    sinks.points(points)
    sinks.rollups(points.get_side_output(ROLLUPS))  # Row(device_id, bucket_start, metric, min, max, avg, sum, count)
    sinks.gaps(points.get_side_output(GAPS))  # Row(device_id, first_seq, last_seq, missing, after_ts, before_ts, status)
    sinks.stats(points.get_side_output(STATS))  # Row(device_id, max_seq, last_ts, received, duplicates, late, lost)
    sinks.dead_letters(points.get_side_output(DEAD_LETTERS))  # dead-letter JSON strings
    return points


def key_by_in_order(source: DataStream, selector) -> KeyedStream:
    """``source.key_by(selector)``, with the key extraction kept at the source's parallelism.

    PyFlink's key_by adds a Python operator that computes the key, created with the job's default
    parallelism; when that differs from the source's, a rebalance in front of it would reorder
    each device's records before the keyed state sees them (a spurious gap, a late record).
    Pinning it to the source's parallelism makes it a chained, order-preserving step.
    """
    keyed = source.key_by(selector, key_type=Types.STRING())
    parallelism = source._j_data_stream.getTransformation().getParallelism()
    add_key = keyed._j_data_stream.getTransformation().getInputs().get(0)
    add_key.setParallelism(parallelism)
    return keyed


def watermarks(options: JobOptions) -> WatermarkStrategy:
    """Bounded out-of-orderness with idleness; timestamps from the payload unless event_time is
    "kafka". (Apply with assign_timestamps_and_watermarks: from_source drops Python assigners.)"""
    strategy = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(options.out_of_orderness_ms))
                .with_idleness(Duration.of_millis(options.idleness_ms)))
    if options.event_time == "payload":
        strategy = strategy.with_timestamp_assigner(PayloadTimestamp())
    return strategy


# --- production sources and sinks ------------------------------------------------------------

def kafka_source(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions) -> DataStream:
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaOffsetResetStrategy, KafkaSource

    source = (KafkaSource.builder()
              .set_bootstrap_servers(settings.kafka_bootstrap)
              .set_topics(settings.topic("telemetry"))
              .set_group_id(options.group_id)
              # First start: everything retained; restarts resume from the checkpointed offsets.
              .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
              .set_value_only_deserializer(SimpleStringSchema())
              .set_property("partition.discovery.interval.ms", "60000")
              .build())
    if options.event_time == "kafka":
        # The record timestamp (the bridge's produce time): watermarks per partition, in Java.
        return env.from_source(source, watermarks(options), "kafka-telemetry").uid("kafka-telemetry")
    # from_source ignores a Python timestamp assigner, so the payload's ts is assigned after it.
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka-telemetry").uid("kafka-telemetry")
    return raw.assign_timestamps_and_watermarks(watermarks(options)).name("event-time-from-payload")


class ProductionSinks:
    """Cassandra (java/flink-fleet CassandraUpsertSink), the Parquet lake (TelemetryLakeSink) and
    Kafka dead letters. Connection details and paths from Settings; nothing hard-coded."""

    def __init__(self, settings: Settings, options: JobOptions):
        self.settings = settings
        self.options = options

    def _cassandra(self, stream: DataStream, name: str, cql: str, fields: str) -> None:
        from pyflink.datastream.connectors.base import Sink
        from pyflink.java_gateway import get_gateway

        s, o = self.settings, self.options
        points = ",".join(f"{host}:{s.cassandra_port}" for host in s.cassandra_contact_points)
        j_sink = get_gateway().jvm.fleet.flink.CassandraUpsertSink(
            points, o.cassandra_dc, s.cassandra_keyspace, cql, fields, o.cassandra_max_in_flight, 10, 20_000)
        stream.sink_to(Sink(j_sink)).name(name).uid(name)

    def points(self, points: DataStream) -> None:
        o = self.options
        if o.cassandra:
            self._cassandra(
                points, "cassandra-telemetry",
                "INSERT INTO telemetry (device_id, day, ts, seq, ingest_ts, metrics, attrs) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {int(o.raw_ttl_s)}",
                "0,1,1,2,3,4,5")
        if o.lake:
            from pyflink.datastream.connectors.base import Sink
            from pyflink.java_gateway import get_gateway

            base = (self.settings.lake_path / "telemetry").resolve()
            base.mkdir(parents=True, exist_ok=True)
            j_sink = get_gateway().jvm.fleet.flink.TelemetryLakeSink.create(base.as_uri(), o.lake_part_mb << 20)
            (points.sink_to(Sink(j_sink)).name("parquet-lake").uid("parquet-lake")
             .set_parallelism(o.lake_parallelism))

    def rollups(self, rollups: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                rollups, "cassandra-rollup-1m",
                "INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, sum, count) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {int(self.options.rollup_ttl_s)}",
                "0,1,2,1,3,4,5,6,7")

    def gaps(self, gaps: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                gaps, "cassandra-gaps",
                "INSERT INTO telemetry_gaps (device_id, first_seq, last_seq, missing, after_ts, before_ts, status) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {int(self.options.rollup_ttl_s)}",
                "0,1,2,3,4,5,6")

    def stats(self, stats: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                stats, "cassandra-device-stats",
                "INSERT INTO telemetry_device_stats (device_id, max_seq, last_ts, received, duplicates, late, lost) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                "0,1,2,3,4,5,6")

    def dead_letters(self, dead_letters: DataStream) -> None:
        from pyflink.common.serialization import SimpleStringSchema
        from pyflink.datastream.connectors import DeliveryGuarantee
        from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

        sink = (KafkaSink.builder()
                .set_bootstrap_servers(self.settings.kafka_bootstrap)
                .set_record_serializer(KafkaRecordSerializationSchema.builder()
                                       .set_topic(self.settings.topic("dead-letter"))
                                       .set_value_serialization_schema(SimpleStringSchema())
                                       .build())
                # Replays may repeat a dead letter; transactions are not worth it for this topic.
                .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
                .build())
        dead_letters.sink_to(sink).name("kafka-dead-letter").uid("kafka-dead-letter")


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> JobOptions:
    d = JobOptions()
    r = d.rules
    p = argparse.ArgumentParser(prog="telemetry_job", description=__doc__.split("\n")[0])
    p.add_argument("--allowed-lateness-ms", type=int, default=r.allowed_lateness_ms,
                   help="dead-letter a record this far behind its device's newest ts")
    p.add_argument("--max-future-skew-ms", type=int, default=r.max_future_skew_ms,
                   help="dead-letter a record whose ts is this far ahead of its ingest time")
    p.add_argument("--rollup-bucket-ms", type=int, default=r.rollup_bucket_ms)
    p.add_argument("--max-open-gaps", type=int, default=r.max_open_gaps)
    p.add_argument("--state-ttl-ms", type=int, default=d.state_ttl_ms, help="dedup horizon (per-device state TTL)")
    p.add_argument("--out-of-orderness-ms", type=int, default=d.out_of_orderness_ms)
    p.add_argument("--idleness-ms", type=int, default=d.idleness_ms)
    p.add_argument("--raw-ttl-s", type=int, default=d.raw_ttl_s)
    p.add_argument("--rollup-ttl-s", type=int, default=d.rollup_ttl_s)
    p.add_argument("--lake-part-mb", type=int, default=d.lake_part_mb)
    p.add_argument("--lake-parallelism", type=int, default=d.lake_parallelism)
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--event-time", choices=("payload", "kafka"), default=d.event_time)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    p.add_argument("--no-lake", dest="lake", action="store_false")
    a = p.parse_args(argv)
    rules = dom.TelemetryRules(a.allowed_lateness_ms, a.max_future_skew_ms, a.rollup_bucket_ms, a.max_open_gaps)
    return JobOptions(rules, a.state_ttl_ms, a.out_of_orderness_ms, a.idleness_ms, a.raw_ttl_s, a.rollup_ttl_s,
                      a.lake_part_mb, a.lake_parallelism, a.cassandra_max_in_flight, a.cassandra_dc, a.event_time,
                      a.group_id, a.cassandra, a.lake)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(settings, options), options)
    log.info("submitting telemetry job: topic %s -> keyspace %s, lake %s",
             settings.topic("telemetry"), settings.cassandra_keyspace, settings.lake_path)
    env.execute("telemetry")


if __name__ == "__main__":
    main()
