"""Kafka and Cassandra as the launcher leaves them: topics created, keyspace migrated.

Stands alone: the session's ``stack`` fixture starts what is not running (a skip on a developer
machine where it cannot start, a failure under CI=true).
"""

from __future__ import annotations

import uuid

import pytest

from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.infra.kafka import create_topics

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def kafka_settings(stack: Settings) -> Settings:
    return stack


@pytest.fixture(scope="module")
def cql(stack: Settings):
    from fleet.infra.cassandra import open_session

    session = open_session(stack)
    yield session
    session.cluster.shutdown()


def test_all_contract_topics_exist(kafka_settings: Settings):
    from kafka.admin import ConfigResource, ConfigResourceType

    from fleet.infra.kafka import admin_client

    admin = admin_client(kafka_settings)
    try:
        existing = set(admin.list_topics())
        missing = [kafka_settings.topic(n) for n in Kafka.ALL if kafka_settings.topic(n) not in existing]
        assert not missing, f"topics missing: {missing}"
        for name in Kafka.COMPACTED:
            full = kafka_settings.topic(name)
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, full)])
            assert configs["topic"][full]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()


def test_throwaway_topic_round_trip(kafka_settings: Settings):
    from kafka import KafkaConsumer, KafkaProducer

    from fleet.infra.kafka import admin_client

    scratch = kafka_settings.replace(topic_prefix=f"test-{uuid.uuid4().hex[:8]}.")
    topic = scratch.topic(Kafka.TELEMETRY)
    assert create_topics(scratch, [Kafka.TELEMETRY], partitions=1) == [topic]
    assert create_topics(scratch, [Kafka.TELEMETRY], partitions=1) == []  # idempotent
    try:
        producer = KafkaProducer(bootstrap_servers=scratch.kafka_bootstrap)
        producer.send(topic, key=b"dev-1", value=b"hello").get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(topic, bootstrap_servers=scratch.kafka_bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=10000)
        values = [m.value for m in consumer]
        consumer.close()
        assert values == [b"hello"]
    finally:
        admin = admin_client(scratch)
        admin.delete_topics([topic])
        admin.close()


def test_registry_tables_exist(cql, settings: Settings):
    rows = cql.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                       (settings.cassandra_keyspace,))
    tables = {r.table_name for r in rows}
    assert {"schema_migrations", "devices", "devices_by_group", "devices_by_status", "audit_log"} <= tables
    versions = {r.version for r in cql.execute(f"SELECT version FROM {settings.cassandra_keyspace}.schema_migrations")}
    assert "001_registry" in versions


def test_migrations_apply_once_to_a_throwaway_keyspace(cql, settings: Settings):
    from fleet.infra.migrations import apply_migrations, discover

    keyspace = f"test_mig_{uuid.uuid4().hex[:8]}"
    try:
        applied = apply_migrations(settings, session=cql, keyspace=keyspace)
        assert applied == [m.version for m in discover()]
        assert apply_migrations(settings, session=cql, keyspace=keyspace) == []
        cql.execute(f"INSERT INTO {keyspace}.devices (device_id, status) VALUES ('d-1', 'active')")
        assert cql.execute(f"SELECT status FROM {keyspace}.devices WHERE device_id = 'd-1'").one().status == "active"
    finally:
        cql.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
