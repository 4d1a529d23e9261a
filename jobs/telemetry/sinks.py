"""The telemetry job's production sinks: Cassandra, the Parquet lake and Kafka dead letters.

``ProductionSinks`` is the ``TelemetrySinks`` (see pipeline) that ``job.main`` plugs in. The
Cassandra tables are schemas/cql/002_telemetry.cql's, written with idempotent upserts
(java/flink-fleet CassandraUpsertSink) and the retention of Settings.telemetry_*_ttl_days, the
values the API reads too; the lake is schemas/parquet/telemetry.md (TelemetryLakeSink).
Connection details and paths come from Settings; nothing is hard-coded.
"""

from __future__ import annotations

from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream
from pyflink.datastream.connectors import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

from fleet.config import Settings
from jobs.telemetry import pyflink_internals as internals
from jobs.telemetry.options import JobOptions
from jobs.telemetry.records import GAP_FIELDS, GAP_TYPES, ROLLUP_FIELDS, ROLLUP_TYPES, STATS_FIELDS, STATS_TYPES

DAY_S = 24 * 3600


class ProductionSinks:
    """Cassandra (java/flink-fleet CassandraUpsertSink), the Parquet lake (TelemetryLakeSink) and
    Kafka dead letters. Connection details, paths and TTLs from Settings; nothing hard-coded."""

    def __init__(self, settings: Settings, options: JobOptions):
        self.settings = settings
        self.options = options

    @property
    def raw_ttl_s(self) -> int:
        """Cassandra TTL of raw points: the API reads older days from the lake."""
        return int(self.settings.telemetry_raw_ttl_days) * DAY_S

    @property
    def rollup_ttl_s(self) -> int:
        """Cassandra TTL of rollups and gap reports."""
        return int(self.settings.telemetry_rollup_ttl_days) * DAY_S

    def _cassandra(self, stream: DataStream, name: str, cql: str, fields: str) -> None:
        """``stream``: Rows whose fields fill the CQL's bind markers (marker i <- field fields[i])."""
        s, o = self.settings, self.options
        points = ",".join(f"{host}:{s.cassandra_port}" for host in s.cassandra_contact_points)
        sink = internals.cassandra_upsert_sink(points, o.cassandra_dc, s.cassandra_keyspace, cql, fields,
                                               o.cassandra_max_in_flight, 10, 20_000, o.cassandra_batch)
        stream.sink_to(sink).name(name).uid(name)

    def points(self, points: DataStream) -> None:
        o = self.options
        if not (o.cassandra or o.lake):
            internals.discard(points, "discard-points")
            return
        points = internals.envelope_rows(points, "envelope-to-row")
        if o.cassandra:
            self._cassandra(
                points, "cassandra-telemetry",
                "INSERT INTO telemetry (device_id, day, ts, seq, ingest_ts, metrics, attrs) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {self.raw_ttl_s}",
                "0,1,1,2,3,4,5")
        if o.lake:
            base = (self.settings.lake_path / "telemetry").resolve()
            base.mkdir(parents=True, exist_ok=True)
            sink = internals.lake_sink(base.as_uri(), o.lake_part_mb << 20)
            points.sink_to(sink).name("parquet-lake").uid("parquet-lake").set_parallelism(o.lake_parallelism)

    def rollups(self, rollups: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                internals.json_rows(rollups, ROLLUP_FIELDS, ROLLUP_TYPES, "rollup-to-row"), "cassandra-rollup-1m",
                "INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, sum, count) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {self.rollup_ttl_s}",
                "0,1,2,1,3,4,5,6,7")

    def gaps(self, gaps: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                internals.json_rows(gaps, GAP_FIELDS, GAP_TYPES, "gap-to-row"), "cassandra-gaps",
                "INSERT INTO telemetry_gaps (device_id, first_seq, last_seq, missing, after_ts, before_ts, status) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {self.rollup_ttl_s}",
                "0,1,2,3,4,5,6")

    def stats(self, stats: DataStream) -> None:
        if self.options.cassandra:
            self._cassandra(
                internals.json_rows(stats, STATS_FIELDS, STATS_TYPES, "stats-to-row"), "cassandra-device-stats",
                "INSERT INTO telemetry_device_stats (device_id, max_seq, last_ts, received, duplicates, late, lost) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                "0,1,2,3,4,5,6")

    def dead_letters(self, dead_letters: DataStream) -> None:
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
