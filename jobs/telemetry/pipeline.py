"""The telemetry pipeline: ``build`` wires a source, the telemetry core and a ``TelemetrySinks``.

``build`` takes the source stream and the sinks as arguments, so the pipeline tests run it on
in-memory data with collecting sinks (tests/pipeline/test_telemetry_job.py), the benchmark on a
file (bench/telemetry_bench_job.py), and ``job.main`` on Kafka with ``sinks.ProductionSinks``.
The two sources of Row(device_id, raw envelope JSON) with event time are here too:
``kafka_source`` (production) and ``envelopes`` (any stream of raw envelope strings).
"""

from __future__ import annotations

from typing import Protocol

from pyflink.common import Types
from pyflink.datastream import DataStream, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaSource

from fleet.config import Settings
from jobs.telemetry import pyflink_internals as internals
from jobs.telemetry.options import JobOptions
from jobs.telemetry.python_core import TelemetryCore
from jobs.telemetry.records import DEAD_LETTERS, GAPS, ROLLUPS, SIDE_OUTPUTS, STATS

DEFAULT_OPTIONS = JobOptions()  # frozen


class TelemetrySinks(Protocol):
    """Where the job's outputs go; each method attaches (and names) a sink to its stream
    (``pyflink_internals.discard`` for an unwanted one). Streams are JSON text, see the *_FIELDS
    lists in records."""

    def points(self, points: DataStream) -> None: ...

    def rollups(self, rollups: DataStream) -> None: ...

    def gaps(self, gaps: DataStream) -> None: ...

    def stats(self, stats: DataStream) -> None: ...

    def dead_letters(self, dead_letters: DataStream) -> None: ...


def build(env: StreamExecutionEnvironment, settings: Settings, source: DataStream, sinks: TelemetrySinks,
          options: JobOptions = DEFAULT_OPTIONS) -> DataStream:
    """Wire the pipeline. ``source``: Row(device_id, raw envelope JSON) (records.ENVELOPE_TYPE)
    carrying event timestamps and watermarks, from ``kafka_source`` or ``envelopes``. Returns the
    accepted envelopes stream."""
    keyed = internals.key_by_device(source)
    outputs: dict[OutputTag, DataStream]
    if options.core == "java":
        points, outputs = internals.java_core(keyed, options.rules, options.state_ttl_ms, options.wall_clock_timers)
    else:
        points = (
            keyed.process(TelemetryCore(options), output_type=Types.STRING())
            .name("telemetry-core").uid("telemetry-core")
        )
        outputs = {tag: internals.side_output(points, tag) for tag in SIDE_OUTPUTS}
    # points: envelope JSON, each (device_id, seq) once
    sinks.points(points)
    sinks.rollups(outputs[ROLLUPS])  # {device_id, bucket_start, metric, min, max, avg, sum, count}
    sinks.gaps(outputs[GAPS])  # {device_id, first_seq, last_seq, missing, after_ts, before_ts, status}
    sinks.stats(outputs[STATS])  # {device_id, max_seq, last_ts, received, duplicates, late, lost}
    sinks.dead_letters(outputs[DEAD_LETTERS])  # dead-letter JSON
    return points


def envelopes(raw: DataStream, options: JobOptions) -> DataStream:
    """Raw envelope strings (a file, a test's list) -> Row(device_id, raw) with event time from the
    envelope's ts and bounded out-of-orderness watermarks: what kafka_source makes of Kafka
    records, for other sources. Runs at ``raw``'s parallelism, so no reordering."""
    return internals.keyed_envelopes(raw, options.out_of_orderness_ms, options.idleness_ms)


def kafka_source(env: StreamExecutionEnvironment, settings: Settings, options: JobOptions) -> DataStream:
    """Row(device_id = the record key, raw value) from the telemetry topic, with event time and
    per-partition watermarks computed inside the source, in Java (fleet.flink.telemetry.Envelopes)."""
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
    internals.set_envelope_deserializer(builder)
    strategy = internals.envelope_watermarks(options.event_time, options.out_of_orderness_ms, options.idleness_ms)
    return env.from_source(builder.build(), strategy, "kafka-telemetry").uid("kafka-telemetry")
