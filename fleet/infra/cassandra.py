"""A Cassandra session per process, opened lazily and closed once.

Processes (the API, the bridge's registry check, CLI commands) hold one ``CassandraSessions``
built from their settings; nothing connects at import time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from fleet.config import Settings

if TYPE_CHECKING:  # the driver ships no type hints: Any to mypy, names for the reader
    from cassandra.cluster import Cluster, Session


class StoreUnavailable(RuntimeError):
    """Cassandra cannot be reached or the keyspace is missing (not migrated yet)."""


class CassandraSessions:
    def __init__(self, settings: Settings, *, connect_timeout: float = 10.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self._session: Session | None = None

    def get(self) -> Session:
        """The shared ``cassandra.cluster.Session`` on the keyspace; connects on first use."""
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None:
                self._session = self._connect()
        return self._session

    def _connect(self) -> Session:
        from cassandra.cluster import NoHostAvailable

        s = self.settings
        try:
            session = open_session(s, s.cassandra_keyspace, connect_timeout=self.connect_timeout)
        except NoHostAvailable as exc:
            raise StoreUnavailable(f"Cassandra at {s.cassandra_hosts}:{s.cassandra_port} is unreachable") from exc
        except Exception as exc:  # InvalidRequest: keyspace missing
            raise StoreUnavailable(f"Cassandra keyspace {s.cassandra_keyspace!r} is not available: {exc}") from exc
        self._cluster = session.cluster
        return session

    def shutdown(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.shutdown()
            self._cluster = self._session = None


def open_session(settings: Settings, keyspace: str | None = None, connect_timeout: float = 10.0) -> Session:
    """A cassandra-driver Session to the configured node; close it with ``session.cluster.shutdown()``."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    # An explicit policy avoids the driver's start-up warning and pins the local DC.
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), request_timeout=30.0,
    )
    cluster = Cluster(
        contact_points=settings.cassandra_contact_points, port=settings.cassandra_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=connect_timeout,
        # Cassandra 4.0+ speaks v5; without a pin the driver tries v6-beta first and logs
        # a downgrade warning on every connect.
        protocol_version=5,
        control_connection_timeout=connect_timeout,
    )
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()
        raise
