"""The OTA job's production sinks: Kafka (ota-assignments, downlink, ota-events, dead letters) and Cassandra.

Kafka: at least once, not transactional, so a release reaches the device operator, a notice the
bridge and a transition the rollout without a checkpoint wait; each side drops repeats
(jobs/ota/logic.py), and devices drop a notice for a deployment they finished. Through the Table
API's Kafka connector keyed by the row's first field, as the commands job's (jobs/commands/sinks.py).

Cassandra (schemas/cql/009_ota.cql), through java/flink-fleet's CassandraUpsertSink, every row
sent as it arrives, ordered by ``USING TIMESTAMP`` (logic.deployment_row, logic.execution_row).
"""

from __future__ import annotations

from pyflink.datastream import DataStream

from fleet.contract.topics import Kafka
from jobs.keyed_sinks import KeyedSinks
from jobs.ota.options import JobOptions


class ProductionSinks(KeyedSinks[JobOptions]):

    def assignments(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.OTA_ASSIGNMENTS)

    def downlink(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DOWNLINK)

    def events(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.OTA_EVENTS)

    def dead_letters(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DEAD_LETTER)

    def deployments(self, stream: DataStream) -> None:
        # Fields: deployment_id, state, summary, updated_at, write_ts.
        self._cassandra(stream, "cassandra-ota-deployments",
                        "UPDATE ota_deployments USING TIMESTAMP ? SET state = ?, summary = ?, updated_at = ? "
                        "WHERE deployment_id = ?", "4,1,2,3,0")

    def new_deployments(self, stream: DataStream) -> None:
        # Fields: deployment_id, name, firmware_id, device_type, version, state, created_at, created_by,
        # updated_at, plan, target_count, rollback_of, write_ts. IF NOT EXISTS would be an LWT per row;
        # the write timestamp (its creation) sits below every later state update of the job instead.
        self._cassandra(stream, "cassandra-ota-new-deployments",
                        "INSERT INTO ota_deployments (deployment_id, name, firmware_id, device_type, version, state, "
                        "created_at, created_by, updated_at, plan, target_count, rollback_of) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                        "0,1,2,3,4,5,6,7,8,9,10,11,12")

    def requests(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.OTA_REQUESTS)

    def executions(self, stream: DataStream) -> None:
        # Fields: deployment_id, device_id, state, wave, attempt, updated_at, execution, write_ts.
        self._cassandra(stream, "cassandra-ota-executions",
                        "INSERT INTO ota_executions (deployment_id, device_id, state, wave, attempt, updated_at, "
                        "execution) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "0,1,2,3,4,5,6,7")
        self._cassandra(stream, "cassandra-ota-executions-by-device",
                        "INSERT INTO ota_executions_by_device (device_id, deployment_id, state, wave, attempt, "
                        "updated_at, execution) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "1,0,2,3,4,5,6,7")
