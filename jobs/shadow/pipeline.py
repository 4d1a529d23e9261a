"""The shadow pipeline: ``build`` wires a source, the shadow core and a ``ShadowSinks``.

    source: Row(device_id, raw JSON) from shadow-reported, device-events and shadow-desired
      -> key by device_id (Java)
      -> shadow-core (--core java: fleet.flink.shadow.ShadowCore; python: jobs.shadow.core.ShadowCore
                      around jobs.shadow.logic and fleet.shadow.domain; see jobs/shadow/__init__.py)
           main output  : downlink          -> Kafka `downlink` (key device_id)
           side outputs : verdicts          -> Kafka `shadow-verdicts`
                          dead letters      -> Kafka `dead-letter`
                          shadows, history  -> Cassandra `shadows`, `shadow_history`
                          history           -> the Parquet lake `shadow_changes`
                          connectivity      -> Cassandra `device_connectivity`

``build`` takes the source and the sinks as arguments, so the pipeline tests run it on in-memory
data with collecting sinks (tests/pipeline/test_shadow_job.py) and ``job.main`` on Kafka with
``sinks.ProductionSinks``.
"""

from __future__ import annotations

from typing import Protocol

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaSource

from fleet.config import Settings
from fleet.contract.topics import Kafka
from jobs.shadow import pyflink_internals as internals
from jobs.shadow.core import ShadowCore
from jobs.shadow.options import JobOptions
from jobs.shadow.records import CONNECTIVITY, DEAD_LETTERS, HISTORY, KAFKA_TYPE, SHADOWS, SIDE_OUTPUTS, VERDICTS

DEFAULT_OPTIONS = JobOptions()  # frozen
INPUT_TOPICS = (Kafka.SHADOW_REPORTED, Kafka.DEVICE_EVENTS, Kafka.SHADOW_DESIRED)


class ShadowSinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream."""

    def downlink(self, stream: DataStream) -> None: ...  # Row(device_id, downlink JSON)

    def verdicts(self, stream: DataStream) -> None: ...  # Row(device_id, verdict JSON)

    def dead_letters(self, stream: DataStream) -> None: ...  # Row(device_id | None, dead-letter JSON)

    def shadows(self, stream: DataStream) -> None: ...  # rows of logic.SHADOW_FIELDS

    def history(self, stream: DataStream) -> None: ...  # rows of logic.HISTORY_FIELDS

    def shadow_changes(self, stream: DataStream) -> None: ...  # the same rows, for the lake

    def connectivity(self, stream: DataStream) -> None: ...  # rows of logic.CONNECTIVITY_FIELDS


def build(env: StreamExecutionEnvironment, settings: Settings, source: DataStream, sinks: ShadowSinks,
          options: JobOptions = DEFAULT_OPTIONS) -> DataStream:
    """Wire the pipeline on ``source`` (Row(device_id, raw JSON), from ``kafka_source`` or
    ``from_json``); returns the downlink stream."""
    keyed = internals.key_by_device(source)
    outputs: dict[OutputTag, DataStream]
    if options.core == "java":
        downlink, outputs = internals.java_core(keyed, options.rules)
    else:
        downlink = (keyed.process(ShadowCore(options), output_type=KAFKA_TYPE)
                    .name("shadow-core").uid("shadow-core"))
        outputs = {tag: internals.side_output(downlink, tag) for tag in SIDE_OUTPUTS}
    sinks.downlink(downlink)
    sinks.verdicts(outputs[VERDICTS])
    sinks.dead_letters(outputs[DEAD_LETTERS])
    sinks.shadows(outputs[SHADOWS])
    history = outputs[HISTORY]
    sinks.history(history)
    sinks.shadow_changes(history)
    sinks.connectivity(outputs[CONNECTIVITY])
    return downlink


def from_json(raw: DataStream) -> DataStream:
    """Raw JSON strings (a test's list) -> Row(device_id, raw), keyed from the JSON's device_id."""
    return internals.key_from_json(raw)


def kafka_source(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions) -> DataStream:
    """Row(device_id = the record key, raw value) from the three input topics, in partition order.
    No event time: records are applied in arrival order per device."""
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(settings.kafka_bootstrap)
               .set_topics(*(settings.topic(t) for t in INPUT_TOPICS))
               .set_group_id(options.group_id)
               # First start: everything retained (desired changes made before the job ran);
               # restarts resume from the checkpointed offsets.
               .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
               .set_property("partition.discovery.interval.ms", "60000")
               # Latency over batching: a desired change must reach the device within ~300 ms.
               .set_property("fetch.max.wait.ms", "20"))
    internals.set_keyed_deserializer(builder)
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "kafka-shadow-inputs") \
        .uid("kafka-shadow-inputs")
