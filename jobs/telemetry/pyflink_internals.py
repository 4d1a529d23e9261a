"""Every reach of the telemetry job into PyFlink's private API and the Java side, in one place.

PyFlink's public Python API has no way to use a Java operator, a Java sink or a Java key selector
on a DataStream, nor to set a Kafka source's deserializer; the job needs all of them (the Java
core, the Java sinks, keying without a Python operator per record). So these functions use the
underlying Java objects (``_j_data_stream``, ``_j_builder``, the py4j gateway) and wrap the results
back into PyFlink's classes. The rest of the job only calls them, and only with PyFlink's public
types: when a PyFlink upgrade moves an internal, this module is what needs a look.

The Java classes are java/flink-fleet's (fleet.flink.telemetry, fleet.flink.sinks); its jar must
be on the cluster's class path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from py4j.java_gateway import JavaClass
from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import Sink
from pyflink.datastream.connectors.kafka import KafkaSourceBuilder
from pyflink.java_gateway import get_gateway

from fleet.telemetry import domain as dom
from jobs.telemetry.records import DEAD_LETTERS, GAPS, ROLLUPS, STATS


def _jvm() -> Any:
    return get_gateway().jvm


# --- operators ------------------------------------------------------------------------------------

def java_core(keyed: KeyedStream, rules: dom.TelemetryRules, state_ttl_ms: int,
              wall_clock_timers: bool) -> tuple[DataStream, dict[OutputTag, DataStream]]:
    """The core as fleet.flink.telemetry.TelemetryCore (same rules, same outputs as the Python operator):
    its main output and its side outputs, keyed by the Python OutputTags (same ids)."""
    j = _jvm().fleet.flink.telemetry.TelemetryCore
    if not isinstance(j, JavaClass):  # py4j makes an unknown class a package
        raise RuntimeError("fleet.flink.telemetry.TelemetryCore is not on the class path: java/flink-fleet's jar in lib/ "
                           "predates it (rebuild it and restart the cluster), or run with --core python")
    j_core = j(rules.allowed_lateness_ms, rules.max_future_skew_ms, rules.rollup_bucket_ms, rules.max_open_gaps,
               state_ttl_ms, wall_clock_timers)
    # Own uid: its state (a byte[] per device) is not the Python operator's (pickled lists).
    j_points = keyed._j_data_stream.process(j_core).name("telemetry-core").uid("telemetry-core-java")
    j_tags = {ROLLUPS: j.rollupsTag(), GAPS: j.gapsTag(), STATS: j.statsTag(), DEAD_LETTERS: j.deadLettersTag()}
    return DataStream(j_points), {tag: DataStream(j_points.getSideOutput(j_tag)) for tag, j_tag in j_tags.items()}


def side_output(stream: DataStream, tag: OutputTag) -> DataStream:
    """The Java side output of a Python operator, without the Python identity map that PyFlink's
    get_side_output appends (a Python call per side-output record). The tag is registered on the
    Python operator here, as get_side_output's Python consumer would otherwise make PyFlink do:
    without it the operator fails with "Unknown OutputTag id" when only Java reads the output."""
    j_tag = tag.get_java_output_tag()
    operator = stream._j_data_stream.getTransformation().getOperatorFactory().getOperator()
    operator.addSideOutputTags(_jvm().java.util.Collections.singletonList(j_tag))
    return DataStream(stream._j_data_stream.getSideOutput(j_tag))


def key_by_device(envelopes: DataStream) -> KeyedStream:
    """Key Row(device_id, raw) by its first field, in Java.

    PyFlink's key_by runs a Python operator per record just to compute the key (created at the
    job's default parallelism, it may also sit behind a rebalance that reorders records). These
    records already have the shape its keyed operators take, so the KeyedStream is built directly.
    """
    j_keyed = envelopes._j_data_stream.keyBy(_jvm().KeyByKeySelector(),
                                             Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, Types.STRING(), envelopes)


def envelope_rows(stream: DataStream, name: str) -> DataStream:
    """Accepted envelope JSON -> Row(device_id, day, ts, seq, ingest_ts, metrics, attrs) with
    fleet.flink.sinks.Rows.envelopeToPoint, chained in place."""
    return _to_rows(stream, _jvm().fleet.flink.sinks.Rows.envelopeToPoint(), name)


def json_rows(stream: DataStream, fields: Iterable[str], types: str, name: str) -> DataStream:
    """JSON objects -> Rows of ``fields`` (Flink type names ``types``, comma-separated) with
    fleet.flink.sinks.Rows.jsonToRow, chained in place."""
    return _to_rows(stream, _jvm().fleet.flink.sinks.Rows.jsonToRow(",".join(fields), types), name)


def _to_rows(stream: DataStream, j_map: Any, name: str) -> DataStream:
    return DataStream(stream._j_data_stream.map(j_map).name(name))


# --- sources ----------------------------------------------------------------------------------------

def keyed_envelopes(raw: DataStream, out_of_orderness_ms: int, idleness_ms: int) -> DataStream:
    """Raw envelope strings -> Row(device_id, raw) with event time from the envelope's ts and
    bounded out-of-orderness watermarks (fleet.flink.telemetry.Envelopes), at ``raw``'s parallelism."""
    j = _jvm().fleet.flink.telemetry.Envelopes
    parallelism = raw._j_data_stream.getTransformation().getParallelism()
    keyed = raw._j_data_stream.map(j.keyFromJson(), j.keyedType()).name("key-from-json").setParallelism(parallelism)
    timed = keyed.assignTimestampsAndWatermarks(j.payloadTimeWatermarks(out_of_orderness_ms, idleness_ms))
    return DataStream(timed.name("event-time").setParallelism(parallelism))


def set_envelope_deserializer(builder: KafkaSourceBuilder) -> KafkaSourceBuilder:
    """Records as Row(device_id = the record key, raw value): key and value together, which
    PyFlink's KafkaSourceBuilder does not expose."""
    builder._j_builder.setDeserializer(_jvm().fleet.flink.telemetry.Envelopes.kafkaDeserializer())
    return builder


def envelope_watermarks(event_time: str, out_of_orderness_ms: int, idleness_ms: int) -> WatermarkStrategy:
    """Event time from the envelope's ts ("payload") or the Kafka record timestamp ("kafka"), with
    bounded out-of-orderness and idleness, computed in Java inside the source."""
    j = _jvm().fleet.flink.telemetry.Envelopes
    if event_time == "kafka":
        return WatermarkStrategy(j.recordTimeWatermarks(out_of_orderness_ms, idleness_ms))
    return WatermarkStrategy(j.payloadTimeWatermarks(out_of_orderness_ms, idleness_ms))


# --- sinks ------------------------------------------------------------------------------------------

def discard(stream: DataStream, name: str) -> None:
    """Consume a stream nobody wants (a Java DiscardingSink)."""
    j_sink = _jvm().org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    stream.sink_to(Sink(j_sink)).name(name).uid(name)


def cassandra_upsert_sink(contact_points: str, local_dc: str, keyspace: str, cql: str, fields: str,
                          max_in_flight: int, max_retries: int, request_timeout_ms: int, batch: int) -> Sink:
    """fleet.flink.sinks.CassandraUpsertSink: Rows whose fields fill the CQL's bind markers
    (marker i <- field fields[i]), idempotent upserts flushed at every checkpoint."""
    return Sink(_jvm().fleet.flink.sinks.CassandraUpsertSink(
        contact_points, local_dc, keyspace, cql, fields, max_in_flight, max_retries, request_timeout_ms, batch))


def lake_sink(base_uri: str, part_bytes: int) -> Sink:
    """fleet.flink.telemetry.TelemetryLakeSink: point Rows -> Parquet files under ``base_uri``,
    committed at checkpoints (schemas/parquet/telemetry.md)."""
    return Sink(_jvm().fleet.flink.telemetry.TelemetryLakeSink.create(base_uri, part_bytes))


# --- the environment --------------------------------------------------------------------------------

def effective_config(env: StreamExecutionEnvironment, keys: Iterable[str]) -> dict[str, str | None]:
    """The environment's configuration value of each key (None when unset): the cluster's and
    the client's config merged, which PyFlink does not expose."""
    j_conf = env._j_stream_execution_environment.getConfiguration().toMap()
    return {k: j_conf.get(k) for k in keys}
