"""The telemetry job: Kafka telemetry -> validated, deduplicated points -> Cassandra and the Parquet lake.

    source: Row(device_id, raw envelope JSON), event time = envelope ts, watermarks (all in Java)
      -> key by device_id (Java)
      -> telemetry-core (validate, dedup by seq, per-device lateness, gaps, 1-minute rollups)
           main output  : accepted envelopes -> Cassandra `telemetry` + Parquet lake
           side outputs : rollups            -> Cassandra `telemetry_rollup_1m`
                          gaps, stats        -> Cassandra `telemetry_gaps`, `telemetry_device_stats`
                          dead letters       -> Kafka `dead-letter`
    Everything the core emits is JSON text, and Java (fleet.flink.sinks.Rows) turns it into rows behind it.

The core comes in two implementations of the same rules, chosen with ``--core``:

- ``java`` (the default): fleet.flink.telemetry.TelemetryCore in java/flink-fleet, a Java
  KeyedProcessFunction with its own compact per-device state (uid ``telemetry-core-java``).
- ``python``: ``TelemetryCore`` below, a thin thread-mode shell around fleet.telemetry.domain
  (uid ``telemetry-core``). fleet.telemetry.domain is the readable reference and the spec of the
  rules (unit-tested table-driven); the Java core is a line-by-line port of it, and the pipeline
  tests run both cores on the same records and hand-computed expectations.

Java is the default because it is measured to be much cheaper. The Python operator, at ~100+ us
of CPU per record (JSON parsing, the domain, and every state access and emitted record crossing
between the JVM and the embedded interpreter), was the pipeline's largest CPU cost; the Java core
spends ~3 us per record on the same rules plus its RocksDB state access, and with it and the
production sinks no Python runs per record at all. bench/telemetry_bench.py --runs discard
--core java,python on the 2-core dev box (source + keying + core, 600k records): 65,000-124,000
records/s with Java against 8,400-9,400 with Python (figures and conditions in its docstring).

The two cores keep separate state (different uids and encodings): switching core on a running
job means starting without that state (``--allowNonRestoredState`` from a savepoint), i.e. with a
fresh dedup horizon and gap tracking.

``build`` assembles that pipeline from a source stream and a ``TelemetrySinks`` passed in, so the
pipeline tests run it on in-memory data (tests/pipeline/test_telemetry_job.py) and ``main``
plugs in Kafka, Cassandra and the lake.

Submit: ``fleet``'s launcher does it (devtools.stack.flink.submit_job), or by hand:
    flink run --python jobs/telemetry_job.py --pyFiles <zip of fleet/ and jobs/> [--core java|python] [...]
(java/flink-fleet's jar and the connector jars must be in the cluster's lib/.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.time import Time
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    KeyedStream,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
    TimeDomain,
)
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor
from pyflink.java_gateway import get_gateway

from fleet.config import Settings
from fleet.infra.job_config import REQUIRED_DEFAULTS, JobConfigError, check, configured_lake_path, missing_defaults
from fleet.telemetry import domain as dom

log = logging.getLogger("telemetry_job")

# --- record shapes between operators ---------------------------------------------------------

# What sources hand to build(): Row(device_id, raw envelope JSON), key first, the shape PyFlink's
# keyed operators take (see fleet.flink.telemetry.Envelopes in java/flink-fleet).
ENVELOPE_TYPE = Types.ROW([Types.STRING(), Types.STRING()])
# Outputs of the core, all JSON text (field names as below): the accepted envelopes as
# received, and one object per rollup row, gap report and device-stats update.
POINT_FIELDS = ["device_id", "ts", "seq", "ingest_ts", "metrics", "attrs"]  # as Java's Rows.envelopeToPoint makes
ROLLUP_FIELDS = ["device_id", "bucket_start", "metric", "min", "max", "avg", "sum", "count"]
ROLLUP_TYPES = "STRING,LONG,STRING,DOUBLE,DOUBLE,DOUBLE,DOUBLE,LONG"
GAP_FIELDS = ["device_id", "first_seq", "last_seq", "missing", "after_ts", "before_ts", "status"]
GAP_TYPES = "STRING,LONG,LONG,LONG,LONG,LONG,STRING"
STATS_FIELDS = ["device_id", "max_seq", "last_ts", "received", "duplicates", "late", "lost"]
STATS_TYPES = "STRING,LONG,LONG,LONG,LONG,LONG,LONG"

ROLLUPS = OutputTag("rollups", Types.STRING())
GAPS = OutputTag("gaps", Types.STRING())
STATS = OutputTag("device-stats", Types.STRING())
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())  # dead-letter JSON (schemas/kafka/dead-letter)

CORES = ("java", "python")


@dataclass(frozen=True)
class JobOptions:
    """Tuning of the job (command-line flags of ``main``); endpoints and paths come from Settings."""

    rules: dom.TelemetryRules = field(default_factory=dom.TelemetryRules)
    # Dedup horizon: a device's seq/gap/rollup state expires after this much inactivity.
    state_ttl_ms: int = 7 * 24 * 3600 * 1000
    # Watermarks (fleet-wide event time) only flush silent devices' rollups and gaps.
    out_of_orderness_ms: int = 5_000
    # Also by the wall clock (processing-time timers, dom.wall_clock_timer): a quiet device's last
    # minute appears within the allowed lateness and a few seconds even when no device sends.
    wall_clock_timers: bool = True
    idleness_ms: int = 30_000
    raw_ttl_s: int = 30 * 24 * 3600
    rollup_ttl_s: int = 400 * 24 * 3600
    lake_part_mb: int = 128
    # The lake sink's parallelism: 1 writes one file per partition and checkpoint.
    lake_parallelism: int = 1
    # Requests (batches of up to 64 rows) in flight per Cassandra sink subtask. Each checkpoint
    # waits for all of them, so the queue should not be deeper than Cassandra clears in well under
    # a second (512 x 64 rows could take it seconds); 32-512 measured alike within this machine's noise.
    cassandra_max_in_flight: int = 128
    # Rows per UNLOGGED batch request, at most (also kept under ~24 KiB; a partition's rows go
    # together; 1 = one request per row; see CassandraUpsertSink). 64 measured ~35% less Cassandra
    # CPU per row than 16.
    cassandra_batch: int = 64
    cassandra_dc: str = "datacenter1"
    # "payload": event time from the envelope's ts (device time); "kafka": the record timestamp.
    event_time: str = "payload"
    # Decoded per-device states kept in memory per subtask (a read cache; Flink state is the truth).
    state_cache_size: int = 100_000
    group_id: str = "fleet-telemetry-job"
    # Skip Cassandra or the lake (benchmarks, partial stacks).
    cassandra: bool = True
    lake: bool = True
    # The telemetry-core implementation: "java" (fleet.flink.telemetry.TelemetryCore) or "python" (TelemetryCore below).
    core: str = "java"

    def __post_init__(self) -> None:
        if self.core not in CORES:
            raise ValueError(f"core must be one of {', '.join(CORES)}, got {self.core!r}")


# --- operators -------------------------------------------------------------------------------

class TelemetryCore(KeyedProcessFunction):
    """Per device: validate, dedup, lateness, gaps, rollups (fleet.telemetry.domain does the work).

    The readable reference core (``--core python``); the default is its Java port, see java_core."""

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


# --- the pipeline ----------------------------------------------------------------------------

class TelemetrySinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream
    (``discard`` for an unwanted one). Streams are JSON text, see the *_FIELDS lists above."""

    def points(self, points: DataStream) -> None: ...

    def rollups(self, rollups: DataStream) -> None: ...

    def gaps(self, gaps: DataStream) -> None: ...

    def stats(self, stats: DataStream) -> None: ...

    def dead_letters(self, dead_letters: DataStream) -> None: ...


def build(env: StreamExecutionEnvironment, settings: Settings, source: DataStream, sinks: TelemetrySinks,
          options: JobOptions = JobOptions()) -> DataStream:
    """Wire the pipeline. ``source``: Row(device_id, raw envelope JSON) (ENVELOPE_TYPE) carrying
    event timestamps and watermarks, from ``kafka_source`` or ``envelopes``. Returns the accepted
    envelopes stream."""
    keyed = key_by_device(source)
    if options.core == "java":
        points, outputs = java_core(keyed, options)
    else:
        points = (
            keyed.process(TelemetryCore(options), output_type=Types.STRING())
            .name("telemetry-core").uid("telemetry-core")
        )
        outputs = {tag: side_output(points, tag) for tag in (ROLLUPS, GAPS, STATS, DEAD_LETTERS)}
    # points: envelope JSON, each (device_id, seq) once
    sinks.points(points)
    sinks.rollups(outputs[ROLLUPS])  # {device_id, bucket_start, metric, min, max, avg, sum, count}
    sinks.gaps(outputs[GAPS])  # {device_id, first_seq, last_seq, missing, after_ts, before_ts, status}
    sinks.stats(outputs[STATS])  # {device_id, max_seq, last_ts, received, duplicates, late, lost}
    sinks.dead_letters(outputs[DEAD_LETTERS])  # dead-letter JSON
    return points


def java_core(keyed: KeyedStream, options: JobOptions) -> tuple[DataStream, dict[OutputTag, DataStream]]:
    """The core as fleet.flink.telemetry.TelemetryCore (same rules, same outputs as the Python operator):
    its main output and its side outputs, keyed by the Python OutputTags (same ids)."""
    from py4j.java_gateway import JavaClass

    j = get_gateway().jvm.fleet.flink.telemetry.TelemetryCore
    if not isinstance(j, JavaClass):  # py4j makes an unknown class a package
        raise RuntimeError("fleet.flink.telemetry.TelemetryCore is not on the class path: java/flink-fleet's jar in lib/ "
                           "predates it (rebuild it and restart the cluster), or run with --core python")
    r = options.rules
    j_core = j(r.allowed_lateness_ms, r.max_future_skew_ms, r.rollup_bucket_ms, r.max_open_gaps, options.state_ttl_ms,
               options.wall_clock_timers)
    # Own uid: its state (a byte[] per device) is not the Python operator's (pickled lists).
    j_points = keyed._j_data_stream.process(j_core).name("telemetry-core").uid("telemetry-core-java")
    j_tags = {ROLLUPS: j.rollupsTag(), GAPS: j.gapsTag(), STATS: j.statsTag(), DEAD_LETTERS: j.deadLettersTag()}
    return DataStream(j_points), {tag: DataStream(j_points.getSideOutput(j_tag)) for tag, j_tag in j_tags.items()}


def side_output(stream: DataStream, tag: OutputTag) -> DataStream:
    """The Java side output of a Python operator, without the Python identity map that PyFlink's
    get_side_output appends (a Python call per side-output record). The tag is registered on the
    Python operator here, as get_side_output's Python consumer would otherwise make PyFlink do:
    without it the operator fails with "Unknown OutputTag id" when only Java reads the output."""
    gateway = get_gateway()
    j_tag = tag.get_java_output_tag()
    operator = stream._j_data_stream.getTransformation().getOperatorFactory().getOperator()
    tags = gateway.jvm.java.util.Collections.singletonList(j_tag)
    operator.addSideOutputTags(tags)
    return DataStream(stream._j_data_stream.getSideOutput(j_tag))


def discard(stream: DataStream, name: str) -> None:
    """Consume a stream nobody wants (see TelemetrySinks)."""
    from pyflink.datastream.connectors.base import Sink

    j_sink = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    stream.sink_to(Sink(j_sink)).name(name).uid(name)


def to_rows(stream: DataStream, j_map, name: str) -> DataStream:
    """JSON strings -> typed Rows with a Java MapFunction from fleet.flink.sinks.Rows, chained in place."""
    return DataStream(stream._j_data_stream.map(j_map).name(name))


def key_by_device(envelopes: DataStream) -> KeyedStream:
    """Key Row(device_id, raw) by its first field, in Java.

    PyFlink's key_by runs a Python operator per record just to compute the key (created at the
    job's default parallelism, it may also sit behind a rebalance that reorders records). These
    records already have the shape its keyed operators take, so the KeyedStream is built directly.
    """
    gateway = get_gateway()
    j_keyed = envelopes._j_data_stream.keyBy(gateway.jvm.KeyByKeySelector(),
                                             Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, Types.STRING(), envelopes)


def envelopes(raw: DataStream, options: JobOptions) -> DataStream:
    """Raw envelope strings (a file, a test's list) -> Row(device_id, raw) with event time from the
    envelope's ts and bounded out-of-orderness watermarks: what kafka_source makes of Kafka
    records, for other sources. Runs at ``raw``'s parallelism, so no reordering."""
    j = get_gateway().jvm.fleet.flink.telemetry.Envelopes
    parallelism = raw._j_data_stream.getTransformation().getParallelism()
    keyed = raw._j_data_stream.map(j.keyFromJson(), j.keyedType()).name("key-from-json").setParallelism(parallelism)
    timed = keyed.assignTimestampsAndWatermarks(
        j.payloadTimeWatermarks(options.out_of_orderness_ms, options.idleness_ms))
    return DataStream(timed.name("event-time").setParallelism(parallelism))


# --- production sources and sinks ------------------------------------------------------------

def kafka_source(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions) -> DataStream:
    """Row(device_id = the record key, raw value) from the telemetry topic, with event time and
    per-partition watermarks computed inside the source, in Java (fleet.flink.telemetry.Envelopes)."""
    from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaSource

    j = get_gateway().jvm.fleet.flink.telemetry.Envelopes
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(settings.kafka_bootstrap)
               .set_topics(settings.topic("telemetry"))
               .set_group_id(options.group_id)
               # First start: everything retained; restarts resume from the checkpointed offsets.
               .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
               .set_property("partition.discovery.interval.ms", "60000")
               # Fewer, fuller fetches: the broker's CPU goes per request, and 50 ms is small
               # next to the checkpoint-bound latency of the sinks.
               .set_property("fetch.min.bytes", str(64 * 1024))
               .set_property("fetch.max.wait.ms", "50"))
    builder._j_builder.setDeserializer(j.kafkaDeserializer())  # key + value: not exposed by PyFlink
    if options.event_time == "kafka":
        strategy = j.recordTimeWatermarks(options.out_of_orderness_ms, options.idleness_ms)
    else:
        strategy = j.payloadTimeWatermarks(options.out_of_orderness_ms, options.idleness_ms)
    return env.from_source(builder.build(), WatermarkStrategy(strategy), "kafka-telemetry").uid("kafka-telemetry")


class ProductionSinks:
    """Cassandra (java/flink-fleet CassandraUpsertSink), the Parquet lake (TelemetryLakeSink) and
    Kafka dead letters. Connection details and paths from Settings; nothing hard-coded."""

    def __init__(self, settings: Settings, options: JobOptions):
        self.settings = settings
        self.options = options

    def _cassandra(self, stream: DataStream, name: str, cql: str, fields: str) -> None:
        """``stream``: Rows whose fields fill the CQL's bind markers (marker i <- field fields[i])."""
        from pyflink.datastream.connectors.base import Sink

        s, o = self.settings, self.options
        points = ",".join(f"{host}:{s.cassandra_port}" for host in s.cassandra_contact_points)
        j_sink = get_gateway().jvm.fleet.flink.sinks.CassandraUpsertSink(
            points, o.cassandra_dc, s.cassandra_keyspace, cql, fields, o.cassandra_max_in_flight, 10, 20_000,
            o.cassandra_batch)
        stream.sink_to(Sink(j_sink)).name(name).uid(name)

    def points(self, points: DataStream) -> None:
        o = self.options
        if not (o.cassandra or o.lake):
            discard(points, "discard-points")
            return
        points = to_rows(points, get_gateway().jvm.fleet.flink.sinks.Rows.envelopeToPoint(), "envelope-to-row")
        if o.cassandra:
            self._cassandra(
                points, "cassandra-telemetry",
                "INSERT INTO telemetry (device_id, day, ts, seq, ingest_ts, metrics, attrs) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {int(o.raw_ttl_s)}",
                "0,1,1,2,3,4,5")
        if o.lake:
            from pyflink.datastream.connectors.base import Sink

            base = (self.settings.lake_path / "telemetry").resolve()
            base.mkdir(parents=True, exist_ok=True)
            j_sink = get_gateway().jvm.fleet.flink.telemetry.TelemetryLakeSink.create(base.as_uri(), o.lake_part_mb << 20)
            (points.sink_to(Sink(j_sink)).name("parquet-lake").uid("parquet-lake")
             .set_parallelism(o.lake_parallelism))

    def rollups(self, rollups: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                self._rows(rollups, ROLLUP_FIELDS, ROLLUP_TYPES, "rollup-to-row"), "cassandra-rollup-1m",
                "INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, sum, count) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {int(self.options.rollup_ttl_s)}",
                "0,1,2,1,3,4,5,6,7")

    def gaps(self, gaps: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                self._rows(gaps, GAP_FIELDS, GAP_TYPES, "gap-to-row"), "cassandra-gaps",
                "INSERT INTO telemetry_gaps (device_id, first_seq, last_seq, missing, after_ts, before_ts, status) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {int(self.options.rollup_ttl_s)}",
                "0,1,2,3,4,5,6")

    def stats(self, stats: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                self._rows(stats, STATS_FIELDS, STATS_TYPES, "stats-to-row"), "cassandra-device-stats",
                "INSERT INTO telemetry_device_stats (device_id, max_seq, last_ts, received, duplicates, late, lost) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                "0,1,2,3,4,5,6")

    @staticmethod
    def _rows(stream: DataStream, fields: list[str], types: str, name: str) -> DataStream:
        return to_rows(stream, get_gateway().jvm.fleet.flink.sinks.Rows.jsonToRow(",".join(fields), types), name)

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
    p.add_argument("--no-wall-clock-timers", dest="wall_clock_timers", action="store_false",
                   help="publish quiet devices' rollups and gaps only when fleet-wide event time moves")
    p.add_argument("--raw-ttl-s", type=int, default=d.raw_ttl_s)
    p.add_argument("--rollup-ttl-s", type=int, default=d.rollup_ttl_s)
    p.add_argument("--lake-part-mb", type=int, default=d.lake_part_mb)
    p.add_argument("--lake-parallelism", type=int, default=d.lake_parallelism)
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--cassandra-batch", type=int, default=d.cassandra_batch)
    p.add_argument("--event-time", choices=("payload", "kafka"), default=d.event_time)
    p.add_argument("--state-cache-size", type=int, default=d.state_cache_size)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    p.add_argument("--no-lake", dest="lake", action="store_false")
    p.add_argument("--core", choices=CORES, default=d.core,
                   help="telemetry-core implementation: java (default, fast) or python (the reference)")
    a = p.parse_args(argv)
    rules = dom.TelemetryRules(a.allowed_lateness_ms, a.max_future_skew_ms, a.rollup_bucket_ms, a.max_open_gaps)
    fields = {f for f in JobOptions.__dataclass_fields__ if f != "rules"}
    return JobOptions(rules=rules, **{name: getattr(a, name) for name in fields})


def ensure_exactly_once(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions) -> None:
    """Set exactly-once checkpointing where the cluster config leaves it unset (a bare cluster's
    defaults are checkpointing off), then verify the effective config and the lake path."""
    from pyflink.common import Configuration

    j_conf = env._j_stream_execution_environment.getConfiguration().toMap()
    missing = missing_defaults({k: j_conf.get(k) for k in REQUIRED_DEFAULTS})
    if missing:
        log.info("cluster config leaves %s unset: the job sets them", sorted(missing))
        conf = Configuration()
        for k, v in missing.items():
            conf.set_string(k, v)
        env.configure(conf)
    cp = env.get_checkpoint_config()
    retention = cp.get_externalized_checkpoint_retention() if cp.is_externalized_checkpoints_enabled() else None
    check(cp.get_checkpoint_interval(), cp.get_checkpointing_mode().name,
          retention.name if retention is not None else None,
          configured_lake_path(os.environ), options.lake)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    try:
        ensure_exactly_once(env, settings, options)
    except JobConfigError as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(settings, options), options)
    log.info("submitting telemetry job: topic %s -> keyspace %s, lake %s",
             settings.topic("telemetry"), settings.cassandra_keyspace, settings.lake_path)
    env.execute("telemetry")


if __name__ == "__main__":
    main()
