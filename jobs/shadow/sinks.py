"""The shadow job's production sinks: Kafka (downlink, verdicts, dead letters) and Cassandra.

Kafka: at least once, not transactional, so a record is visible to the bridge and the API as soon
as it is written (no checkpoint wait); devices drop repeats by version, the API by request_id.
Records are keyed by device id (the downlink must keep one device's messages in order on one
partition), which PyFlink's DataStream KafkaSink cannot do (its key schema sees the whole record):
the rows go through the Table API's Kafka connector with a raw key and a raw value instead.

Cassandra (schemas/cql/004_shadow.cql): java/flink-fleet's CassandraUpsertSink with batch size 1,
every row sent when it arrives; the statements carry ``USING TIMESTAMP`` (logic.shadow_write_ts,
by version; connectivity by time), so a replay after a restart never puts an older row back.

The lake (schemas/parquet/shadow_changes.md): every accepted version, from the history rows, to
``<lake>/shadow_changes`` through java/flink-fleet's ParquetLakeSink, the telemetry lake's
machinery: hourly partitions of the change's ``ts``, files committed on checkpoints, so each
version exactly once (a restore rewinds the documents and the uncommitted files together).
"""

from __future__ import annotations

from pyflink.datastream import DataStream

from fleet.contract.topics import Kafka
from jobs.keyed_sinks import KeyedSinks
from jobs.shadow import pyflink_internals as internals
from jobs.shadow.options import JobOptions

# The lake table's Parquet schema, filled from logic.HISTORY_FIELDS' rows in order (their trailing
# write_ts is not written). fleet.lake.dataset.SHADOW_CHANGES_SCHEMA is how pyarrow reads it.
SHADOW_CHANGES_TABLE = "shadow_changes"
SHADOW_CHANGES_PARQUET = """message shadow_changes {
  required binary device_id (STRING);
  required binary shadow_name (STRING);
  required int64 version;
  required int64 ts (TIMESTAMP(MILLIS,true));
  required binary source_kind (STRING);
  required binary actor (STRING);
  optional binary client_token (STRING);
  required binary patch (STRING);
  required binary desired (STRING);
  required binary reported (STRING);
}
"""
# Bulk files roll on every checkpoint anyway; this only bounds a burst.
LAKE_PART_BYTES = 128 << 20


class ProductionSinks(KeyedSinks[JobOptions]):

    def downlink(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DOWNLINK)

    def verdicts(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.SHADOW_VERDICTS)

    def dead_letters(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DEAD_LETTER)

    def shadows(self, stream: DataStream) -> None:
        self._cassandra(stream, "cassandra-shadows",
                        "INSERT INTO shadows (device_id, name, version, desired, reported, metadata, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "0,1,2,3,4,5,6,7")

    def history(self, stream: DataStream) -> None:
        self._cassandra(stream, "cassandra-shadow-history",
                        "INSERT INTO shadow_history (device_id, name, version, ts, source_kind, actor, client_token, "
                        "patch, desired, reported) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                        "0,1,2,3,4,5,6,7,8,9,10")

    def shadow_changes(self, stream: DataStream) -> None:
        if not self.options.lake:
            internals.discard(stream, "discard-lake-shadow-changes")
            return
        base = (self.settings.lake_path / SHADOW_CHANGES_TABLE).resolve()
        base.mkdir(parents=True, exist_ok=True)
        sink = internals.lake_sink(base.as_uri(), LAKE_PART_BYTES, SHADOW_CHANGES_PARQUET, SHADOW_CHANGES_TABLE, "ts")
        # Parallelism 1: one file per hour partition and checkpoint (shadow changes are few).
        stream.sink_to(sink).name("parquet-lake-shadow-changes").uid("parquet-lake-shadow-changes").set_parallelism(1)

    def connectivity(self, stream: DataStream) -> None:
        self._cassandra(stream, "cassandra-device-connectivity",
                        "INSERT INTO device_connectivity (device_id, connected, connected_since, last_seen, "
                        "disconnect_reason, firmware_version) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                        "0,1,2,3,4,5,6")
