"""The API's stores, made by the app's lifespan and handed to routes by dependencies (api/deps.py).

Cassandra is connected on the first request that needs it, not at start-up: the process starts
(and answers /health) while Cassandra is still coming up, and a request meanwhile is a 503.
Each store is made once per app (they prepare their statements on construction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from fleet.access.apikeys import ApiKeyStore
from fleet.access.audit import AuditLog
from fleet.commands.batch_store import BatchStore
from fleet.commands.query import CommandReader
from fleet.config import Settings
from fleet.identity.ca import CertificateAuthority, pki_from_settings
from fleet.identity.onboarding import Onboarding
from fleet.infra.cassandra import CassandraSessions
from fleet.ota.catalog import CassandraCatalog
from fleet.ota.deployment_store import DeploymentStore
from fleet.ota.firmware import FirmwareStore
from fleet.ota.signing import FirmwareKeys
from fleet.ota.store import FilesystemBlobStore
from fleet.shadow.query import ShadowReader
from fleet.telemetry.store import TelemetryStore

T = TypeVar("T")


class Stores:
    def __init__(self, settings: Settings, cassandra: CassandraSessions | None = None, pki: CertificateAuthority | None = None):
        self.settings = settings
        self.cassandra = cassandra or CassandraSessions(settings)
        self.pki = pki or pki_from_settings(settings)
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}

    def session(self):
        """The shared cassandra.cluster.Session; StoreUnavailable (a 503) while Cassandra is down."""
        return self.cassandra.get()

    def _once(self, name: str, make: Callable[[], T]) -> T:
        made = self._made.get(name)
        if made is None:
            with self._lock:
                made = self._made.get(name)
                if made is None:  # a failed make (Cassandra down) is retried by the next caller
                    made = self._made[name] = make()
        return made

    def ready(self, name: str) -> bool:
        """Whether the store ``name`` is made (so using it cannot block on connecting)."""
        return name in self._made

    def __len__(self) -> int:
        return len(self._made)

    @property
    def api_keys(self) -> ApiKeyStore:
        return self._once("api_keys", lambda: ApiKeyStore(self.session()))

    @property
    def audit(self) -> AuditLog:
        return self._once("audit", lambda: AuditLog(self.session()))

    @property
    def onboarding(self) -> Onboarding:
        return self._once("onboarding", lambda: Onboarding(self.settings, self.session(), pki=self.pki))

    @property
    def telemetry(self) -> TelemetryStore:
        s = self.settings
        return self._once("telemetry", lambda: TelemetryStore(
            self.session(), s.lake_path, raw_ttl_days=s.telemetry_raw_ttl_days,
            rollup_ttl_days=s.telemetry_rollup_ttl_days))

    @property
    def shadows(self) -> ShadowReader:
        return self._once("shadows", lambda: ShadowReader(self.session()))

    @property
    def commands(self) -> CommandReader:
        return self._once("commands", lambda: CommandReader(self.session()))

    @property
    def batches(self) -> BatchStore:
        return self._once("batches", lambda: BatchStore(self.session()))

    @property
    def firmware(self) -> FirmwareStore:
        s = self.settings
        return self._once("firmware", lambda: FirmwareStore(
            FilesystemBlobStore(s.firmware_path), CassandraCatalog(self.session()),
            FirmwareKeys.from_files(s.firmware_key_path, s.firmware_vendor_key_paths),
            max_bytes=s.firmware_max_image_bytes))

    @property
    def firmware_catalog(self) -> CassandraCatalog:
        """The catalog alone (deployments read it; no firmware keys needed)."""
        return self._once("firmware_catalog", lambda: CassandraCatalog(self.session()))

    @property
    def ota_deployments(self) -> DeploymentStore:
        return self._once("ota_deployments", lambda: DeploymentStore(self.session()))

    def close(self) -> None:
        with self._lock:
            self._made.clear()
        self.cassandra.shutdown()
