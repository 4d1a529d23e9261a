"""The sink plumbing the shadow, commands and OTA jobs share: keyed Kafka topics and Cassandra upserts.

Kafka: Row(key, value) through the Table API's Kafka connector, keyed by the row's first field
(one device's or one deployment's records stay in order on one partition), at least once, not
transactional, ``linger.ms`` 0: what these jobs write (downlink, verdicts, events) must not wait for
a checkpoint, and every consumer drops repeats. Cassandra: java/flink-fleet's CassandraUpsertSink,
every row sent as it arrives (``USING TIMESTAMP`` in each job's statements orders them).
"""

from __future__ import annotations

from functools import cached_property
from typing import Generic, Protocol, TypeVar

from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from fleet.config import Settings
from jobs.shadow import pyflink_internals as internals


class CassandraOptions(Protocol):
    @property
    def cassandra(self) -> bool: ...  # False: discard the rows (benchmarks, partial stacks)

    @property
    def cassandra_dc(self) -> str: ...

    @property
    def cassandra_max_in_flight(self) -> int: ...


OptionsT = TypeVar("OptionsT", bound=CassandraOptions)


class KeyedSinks(Generic[OptionsT]):
    """Base of a job's ProductionSinks: ``_kafka(stream, topic)`` and ``_cassandra(stream, name, cql, fields)``."""

    def __init__(self, env: StreamExecutionEnvironment, settings: Settings, options: OptionsT):
        self.env = env
        self.settings = settings
        self.options = options

    @cached_property
    def tables(self) -> StreamTableEnvironment:
        # On first use: a job (or test) that sends nothing to Kafka does not need one.
        return StreamTableEnvironment.create(self.env)

    def _kafka(self, stream: DataStream, topic: str) -> None:
        s = self.settings
        table = f"sink_{topic.replace('-', '_')}"
        self.tables.execute_sql(f"""
            CREATE TEMPORARY TABLE {table} (device_id STRING, `value` STRING) WITH (
              'connector' = 'kafka',
              'topic' = '{s.topic(topic)}',
              'properties.bootstrap.servers' = '{s.kafka_bootstrap}',
              'key.format' = 'raw',
              'key.fields' = 'device_id',
              'value.format' = 'raw',
              'value.fields-include' = 'EXCEPT_KEY',
              'sink.delivery-guarantee' = 'at-least-once',
              'properties.linger.ms' = '0'
            )""")
        statements = self.tables.create_statement_set()
        statements.add_insert(table, self.tables.from_data_stream(stream))
        statements.attach_as_datastream()

    def _cassandra(self, stream: DataStream, name: str, cql: str, fields: str) -> None:
        s, o = self.settings, self.options
        if not o.cassandra:
            internals.discard(stream, f"discard-{name}")
            return
        points = ",".join(f"{host}:{s.cassandra_port}" for host in s.cassandra_contact_points)
        sink = internals.cassandra_sink(points, o.cassandra_dc, s.cassandra_keyspace, cql, fields,
                                        o.cassandra_max_in_flight)
        stream.sink_to(sink).name(name).uid(name)
