"""The commands job's production sinks: Kafka (downlink, command events, dead letters) and Cassandra.

Kafka: at least once, not transactional, so a command reaches the bridge and an event the API
without a checkpoint wait; devices drop repeats by command_id, the API by command_id and state.
Keyed by device id through the Table API's Kafka connector, as the shadow job's (jobs/shadow/sinks.py):
one device's commands stay in order on one partition.

Cassandra (schemas/cql/005_commands.cql, 006_command_batches.cql): every command row to ``commands``
(by id) and ``commands_by_device`` (newest first), and a bulk command's rows to
``command_batch_members``, through java/flink-fleet's CassandraUpsertSink with batch size 1,
sent when it arrives; ``USING TIMESTAMP`` (logic.command_write_ts) orders a command's
writes, so a replay after a restart never puts an earlier state back.
"""

from __future__ import annotations

from pyflink.datastream import DataStream

from fleet.contract.topics import Kafka
from jobs.commands.options import JobOptions
from jobs.keyed_sinks import KeyedSinks


class ProductionSinks(KeyedSinks[JobOptions]):

    def downlink(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DOWNLINK)

    def events(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.COMMAND_EVENTS)

    def dead_letters(self, stream: DataStream) -> None:
        self._kafka(stream, Kafka.DEAD_LETTER)

    def commands(self, stream: DataStream) -> None:
        # Fields: command_id, device_id, state, name, created_at, updated_at, command, write_ts.
        self._cassandra(stream, "cassandra-commands",
                        "INSERT INTO commands (command_id, device_id, state, name, created_at, updated_at, command) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "0,1,2,3,4,5,6,7")
        self._cassandra(stream, "cassandra-commands-by-device",
                        "INSERT INTO commands_by_device (device_id, created_at, command_id, state, name, updated_at, "
                        "command) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "1,4,0,2,3,5,6,7")

    def batch_members(self, stream: DataStream) -> None:
        # Fields: batch_id, device_id, command_id, state, reason, updated_at, write_ts.
        self._cassandra(stream, "cassandra-command-batch-members",
                        "INSERT INTO command_batch_members (batch_id, device_id, command_id, state, reason, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", "0,1,2,3,4,5,6")
