"""Every reach of the shadow job into PyFlink's private API and the Java side, in one place.

``java_core`` builds the Java shadow core (fleet.flink.shadow.ShadowCore) on the keyed stream. The
generic pieces (Java keying, Java side outputs, the Java Cassandra sink, the effective config)
are the telemetry job's (jobs.telemetry.pyflink_internals), re-exported here so that the shadow
job's other modules import only this one. The Java classes are java/flink-fleet's.
"""

from __future__ import annotations

from typing import Any

from py4j.java_gateway import JavaClass
from pyflink.datastream import DataStream, KeyedStream, OutputTag
from pyflink.datastream.connectors.base import Sink
from pyflink.datastream.connectors.kafka import KafkaSourceBuilder
from pyflink.java_gateway import get_gateway

from fleet.shadow import domain as dom
from jobs.shadow.records import CONNECTIVITY, DEAD_LETTERS, HISTORY, SHADOWS, VERDICTS
from jobs.telemetry.pyflink_internals import discard, effective_config, key_by_device, side_output

__all__ = ["cassandra_sink", "discard", "effective_config", "java_core", "key_by_device", "key_from_json",
           "lake_sink", "side_output", "set_keyed_deserializer"]


def _jvm() -> Any:
    return get_gateway().jvm


def java_core(keyed: KeyedStream, rules: dom.ShadowRules) -> tuple[DataStream, dict[OutputTag, DataStream]]:
    """The core as fleet.flink.shadow.ShadowCore (same rules, same outputs as jobs.shadow.core.ShadowCore):
    its main output (the downlink) and its side outputs, keyed by the Python OutputTags (same ids and types)."""
    j = _jvm().fleet.flink.shadow.ShadowCore
    if not isinstance(j, JavaClass):  # py4j makes an unknown class a package
        raise RuntimeError("fleet.flink.shadow.ShadowCore is not on the class path: java/flink-fleet's jar in lib/ "
                           "predates it (rebuild it and restart the cluster), or run with --core python")
    j_core = j(rules.max_state_bytes, rules.max_depth, rules.max_keys, rules.key_pattern, rules.name_pattern,
               rules.max_client_token_length, rules.burst, rules.per_second)
    # Own uid: its state is not the Python operator's (switching cores starts from fresh state).
    j_downlink = keyed._j_data_stream.process(j_core).name("shadow-core").uid("shadow-core-java")
    j_tags = {VERDICTS: j.verdictsTag(), DEAD_LETTERS: j.deadLettersTag(), SHADOWS: j.shadowsTag(),
              HISTORY: j.historyTag(), CONNECTIVITY: j.connectivityTag()}
    return DataStream(j_downlink), {tag: DataStream(j_downlink.getSideOutput(j_tag)) for tag, j_tag in j_tags.items()}


def key_from_json(raw: DataStream) -> DataStream:
    """Raw JSON strings (tests' lists) -> Row(device_id from the JSON, raw), in Java, at ``raw``'s
    parallelism (no reordering): what set_keyed_deserializer makes of Kafka records."""
    j = _jvm().fleet.flink.telemetry.Envelopes
    parallelism = raw._j_data_stream.getTransformation().getParallelism()
    keyed = raw._j_data_stream.map(j.keyFromJson(), j.keyedType()).name("key-from-json").setParallelism(parallelism)
    return DataStream(keyed)


def set_keyed_deserializer(builder: KafkaSourceBuilder) -> KafkaSourceBuilder:
    """Records as Row(device_id = the record key, raw value)."""
    builder._j_builder.setDeserializer(_jvm().fleet.flink.telemetry.Envelopes.kafkaDeserializer())
    return builder


def cassandra_sink(contact_points: str, local_dc: str, keyspace: str, cql: str, fields: str, max_in_flight: int) -> Sink:
    """fleet.flink.sinks.CassandraUpsertSink with batch size 1: every row is sent as it arrives
    (asynchronously, ``max_in_flight`` at most), not held for a batch or a checkpoint; a checkpoint
    only waits for the writes in flight. 10 retries, 20 s request timeout, as the telemetry job's."""
    return Sink(_jvm().fleet.flink.sinks.CassandraUpsertSink(
        contact_points, local_dc, keyspace, cql, fields, max_in_flight, 10, 20_000, 1))


def lake_sink(base_uri: str, part_bytes: int, schema: str, table: str, partition_column: str) -> Sink:
    """fleet.flink.sinks.ParquetLakeSink: Rows (field i -> column i of the Parquet message type
    ``schema``) -> hourly partitions of ``partition_column`` under ``base_uri``, committed at checkpoints."""
    return Sink(_jvm().fleet.flink.sinks.ParquetLakeSink.create(base_uri, part_bytes, schema, table, partition_column))
