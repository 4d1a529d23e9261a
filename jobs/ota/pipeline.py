"""The OTA job's graph: two keyed operators that talk through Kafka.

    Kafka ota-requests, ota-events (key = deployment id)
        -> key by deployment (Java) -> RolloutCore (fleet.ota.rollout; timers: the rate limit)
           main output : assignments and cancels -> Kafka `ota-assignments` (key device id)
           side outputs: deployment rows          -> Cassandra `ota_deployments`
                         rollback deployments     -> Cassandra `ota_deployments`, Kafka `ota-requests`
                         dead letters             -> Kafka `dead-letter`

    Kafka ota-assignments, ota-status, device-events (key = device id)
        -> key by device (Java) -> DeviceCore (fleet.ota.execution; timers: health windows, timeouts)
           main output : notices                  -> Kafka `downlink` (suffix ota/notify)
           side outputs: transitions              -> Kafka `ota-events` (key deployment id)
                         execution rows           -> Cassandra `ota_executions`, `ota_executions_by_device`
                         dead letters             -> Kafka `dead-letter`

The loop goes through Kafka because a Flink graph has no cycles; both hops are at least once and
both operators drop repeats (jobs/ota/logic.py). ``build`` takes the two sources and the sinks as
arguments, so the pipeline tests run it on in-memory data (tests/pipeline/test_ota_job.py).
"""

from __future__ import annotations

from typing import Protocol

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaSource

from fleet.config import Settings
from fleet.contract.topics import Kafka
from jobs.ota import pyflink_internals as internals
from jobs.ota.core import DeviceCore, RolloutCore
from jobs.ota.options import JobOptions
from jobs.ota.records import (
    DEPLOYMENTS,
    DEVICE_DEAD_LETTERS,
    EVENTS,
    EXECUTIONS,
    KAFKA_TYPE,
    NEW_DEPLOYMENTS,
    REQUESTS,
    ROLLOUT_DEAD_LETTERS,
)

DEFAULT_OPTIONS = JobOptions()  # frozen
ROLLOUT_TOPICS = (Kafka.OTA_REQUESTS, Kafka.OTA_EVENTS)
DEVICE_TOPICS = (Kafka.OTA_ASSIGNMENTS, Kafka.OTA_STATUS, Kafka.DEVICE_EVENTS)


class OtaSinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream."""

    def assignments(self, stream: DataStream) -> None: ...  # Row(device_id, JSON) -> ota-assignments

    def downlink(self, stream: DataStream) -> None: ...  # Row(device_id, downlink JSON)

    def events(self, stream: DataStream) -> None: ...  # Row(deployment_id, transition JSON) -> ota-events

    def dead_letters(self, stream: DataStream) -> None: ...  # Row(device_id | None, dead-letter JSON)

    def deployments(self, stream: DataStream) -> None: ...  # rows of logic.DEPLOYMENT_FIELDS

    def new_deployments(self, stream: DataStream) -> None: ...  # rows of logic.NEW_DEPLOYMENT_FIELDS (rollbacks)

    def requests(self, stream: DataStream) -> None: ...  # Row(deployment_id, JSON) -> ota-requests (rollbacks)

    def executions(self, stream: DataStream) -> None: ...  # rows of logic.EXECUTION_FIELDS


def build(env: StreamExecutionEnvironment, settings: Settings, rollout_source: DataStream,
          device_source: DataStream, sinks: OtaSinks, options: JobOptions = DEFAULT_OPTIONS) -> None:
    """Wire both operators on their sources (Row(key, raw JSON) each, from ``kafka_source``)."""
    assignments = (internals.key_by_device(rollout_source)
                   .process(RolloutCore(options.restore_grace_ms), output_type=KAFKA_TYPE).name("ota-rollout").uid("ota-rollout"))
    sinks.assignments(assignments)
    sinks.deployments(internals.side_output(assignments, DEPLOYMENTS))
    sinks.new_deployments(internals.side_output(assignments, NEW_DEPLOYMENTS))
    sinks.requests(internals.side_output(assignments, REQUESTS))
    downlink = (internals.key_by_device(device_source)
                .process(DeviceCore(str(settings.ota_url_key_path), settings.ota_url_ttl_s, options.restore_grace_ms),
                         output_type=KAFKA_TYPE)
                .name("ota-device").uid("ota-device"))
    sinks.downlink(downlink)
    sinks.events(internals.side_output(downlink, EVENTS))
    sinks.executions(internals.side_output(downlink, EXECUTIONS))
    sinks.dead_letters(internals.side_output(assignments, ROLLOUT_DEAD_LETTERS)
                       .union(internals.side_output(downlink, DEVICE_DEAD_LETTERS)))


def kafka_source(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions, topics: tuple[str, ...],
                 name: str) -> DataStream:
    """Row(key = the record key, raw value) from ``topics``, in partition order, no event time."""
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(settings.kafka_bootstrap)
               .set_topics(*(settings.topic(t) for t in topics))
               .set_group_id(f"{options.group_id}-{name}")
               # First start: everything retained (deployments created before the job ran, the
               # devices' last status); restarts resume from the checkpointed offsets.
               .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
               .set_property("partition.discovery.interval.ms", "60000")
               .set_property("fetch.max.wait.ms", "20"))
    internals.set_keyed_deserializer(builder)
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), name).uid(name)
