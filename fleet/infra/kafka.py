"""Kafka administration the platform needs in production: creating its topics (``fleet init``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.infra.errors import InfraError

if TYPE_CHECKING:  # kafka-python ships no type hints: Any to mypy, a name for the reader
    from kafka.admin import KafkaAdminClient

_TOPIC_ALREADY_EXISTS = 36  # Kafka's error code


def admin_client(settings: Settings, timeout_ms: int = 10000) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient  # imported lazily: the launcher may not need it

    return KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="fleet-admin",
        request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
    )


def create_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the logical topics ``names`` (prefixed by ``settings.topic``) if absent.

    Idempotent: topics that already exist are left as they are (partition count included).
    Logical names in ``Kafka.COMPACTED`` get ``cleanup.policy=compact``. Returns the full names
    of the topics created by this call (empty when all existed); all of them are in the metadata
    with a leader on return.
    """
    wanted: dict[str, dict[str, Any]] = {}
    for name in names:
        configs = {"cleanup.policy": "compact"} if name in Kafka.COMPACTED else {}
        wanted[settings.topic(name)] = {
            "num_partitions": partitions or settings.topic_partitions,
            "replication_factor": 1,
            "configs": configs,
        }
    from kafka.errors import KafkaError

    try:
        admin = admin_client(settings)
    except KafkaError as exc:
        raise InfraError(f"cannot reach Kafka at {settings.kafka_bootstrap} to create topics: {exc}") from exc
    try:
        result = admin.create_topics(wanted, timeout_ms=30000, raise_errors=False)
        failed = [
            f"{t['name']}: {t.get('error_message') or t['error_code']}"
            for t in result.get("topics", [])
            if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if failed:
            raise InfraError("creating Kafka topics failed: " + "; ".join(failed))
        admin.wait_for_topics(list(wanted))
    finally:
        admin.close()
    return [t["name"] for t in result.get("topics", []) if t["error_code"] == 0]
