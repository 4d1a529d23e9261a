"""The commands job's graph.

    Kafka command-requests, command-results, device-events (key = device id)
        -> key by device (Java)
        -> CommandsCore (keyed state: the device's commands; processing-time timers)
           main output  : downlink          -> Kafka `downlink` (key device_id, suffix "commands")
           side outputs : command events    -> Kafka `command-events` (every transition, refusals)
                          dead letters      -> Kafka `dead-letter`
                          commands          -> Cassandra `commands`, `commands_by_device`
                          batch members     -> Cassandra `command_batch_members` (bulk commands)

``build`` takes the source and the sinks as arguments, so the pipeline tests run it on in-memory
data with collecting sinks (tests/pipeline/test_commands_job.py) and ``job.main`` on Kafka with
``sinks.ProductionSinks``.
"""

from __future__ import annotations

from typing import Protocol

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaSource

from fleet.config import Settings
from fleet.contract.topics import Kafka
from jobs.commands import pyflink_internals as internals
from jobs.commands.core import CommandsCore
from jobs.commands.options import JobOptions
from jobs.commands.records import BATCH_MEMBERS, COMMANDS, DEAD_LETTERS, EVENTS, KAFKA_TYPE

DEFAULT_OPTIONS = JobOptions()  # frozen
INPUT_TOPICS = (Kafka.COMMAND_REQUESTS, Kafka.COMMAND_RESULTS, Kafka.DEVICE_EVENTS)


class CommandSinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream."""

    def downlink(self, stream: DataStream) -> None: ...  # Row(device_id, downlink JSON)

    def events(self, stream: DataStream) -> None: ...  # Row(device_id, command-event JSON)

    def dead_letters(self, stream: DataStream) -> None: ...  # Row(device_id | None, dead-letter JSON)

    def commands(self, stream: DataStream) -> None: ...  # rows of logic.COMMAND_FIELDS

    def batch_members(self, stream: DataStream) -> None: ...  # rows of logic.BATCH_MEMBER_FIELDS


def build(env: StreamExecutionEnvironment, settings: Settings, source: DataStream, sinks: CommandSinks,
          options: JobOptions = DEFAULT_OPTIONS) -> DataStream:
    """Wire the pipeline on ``source`` (Row(device_id, raw JSON), from ``kafka_source`` or
    ``from_json``); returns the downlink stream."""
    keyed = internals.key_by_device(source)
    downlink = (keyed.process(CommandsCore(options), output_type=KAFKA_TYPE)
                .name("commands-core").uid("commands-core"))
    sinks.downlink(downlink)
    sinks.events(internals.side_output(downlink, EVENTS))
    sinks.dead_letters(internals.side_output(downlink, DEAD_LETTERS))
    sinks.commands(internals.side_output(downlink, COMMANDS))
    sinks.batch_members(internals.side_output(downlink, BATCH_MEMBERS))
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
               # First start: everything retained (commands submitted before the job ran, and the
               # devices' last status, so it knows who is online); restarts resume from the
               # checkpointed offsets.
               .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
               .set_property("partition.discovery.interval.ms", "60000")
               # Latency over batching: the command round trip's p50 target is 100 ms.
               .set_property("fetch.max.wait.ms", "20"))
    internals.set_keyed_deserializer(builder)
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "kafka-command-inputs") \
        .uid("kafka-command-inputs")
