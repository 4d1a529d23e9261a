"""Fixtures of the security tests: the broker and Cassandra (only), a throwaway keyspace, the API
app in-process (TestClient) on that keyspace, and API keys of every role.

The app uses the stack's real PKI and broker, so revocations really reach Mosquitto.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from fleet.config import Settings
from tests.support.stack import running


@pytest.fixture(scope="session")
def security_stack(settings: Settings):
    """Mosquitto and Cassandra, reused if running, else started (and stopped at the end)."""
    yield from running(settings, ["mosquitto", "cassandra"])


@pytest.fixture(scope="session")
def api_settings(security_stack: Settings):
    """Settings on a fresh, migrated keyspace; background workers off (tests drive them)."""
    from fleet.infra.cassandra import open_session
    from fleet.infra.migrations import apply_migrations

    keyspace = f"t_sec_{uuid.uuid4().hex[:10]}"
    session = open_session(security_stack)
    try:
        apply_migrations(security_stack, session=session, keyspace=keyspace)
        yield security_stack.replace(cassandra_keyspace=keyspace, provisioning_service=False,
                                     revocation_interval_s=0)
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        session.cluster.shutdown()


@pytest.fixture(scope="session")
def cassandra(api_settings: Settings):
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(api_settings)
    yield sessions.get()
    sessions.shutdown()


@pytest.fixture(scope="session")
def api(api_settings: Settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(api_settings)) as client:
        yield client


@dataclass
class Keys:
    store: object

    def make(self, role: str, groups=None, name: str | None = None) -> dict[str, str]:
        from fleet.access.auth import Role

        _, secret = self.store.create(name or f"test-{role}", Role(role), frozenset(groups) if groups else None)
        return {"X-API-Key": secret}

    def __post_init__(self):
        self.admin = self.make("admin")
        self.operator = self.make("operator")
        self.viewer = self.make("viewer")


@pytest.fixture(scope="session")
def keys(cassandra) -> Keys:
    from fleet.access.apikeys import ApiKeyStore

    return Keys(ApiKeyStore(cassandra))


@pytest.fixture
def uid():
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:10]}"
