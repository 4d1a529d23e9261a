"""Security work the API process does besides answering requests.

- the MQTT provisioning service (claims and rotations), when ``settings.provisioning_service``;
- revoking superseded certificates when their grace period ends, every ``revocation_interval_s``.

Started by the app's lifespan; Cassandra or the broker being down at start-up is retried, never fatal.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from api.stores import Stores
from fleet.logs import log_fields

if TYPE_CHECKING:
    from fleet.identity.provisioner import ProvisioningService

log = logging.getLogger(__name__)


class SecurityWorkers:
    def __init__(self, stores: Stores):
        self.stores = stores
        self.settings = stores.settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.provisioner: ProvisioningService | None = None

    def start(self) -> SecurityWorkers:
        if self.settings.provisioning_service or self.settings.revocation_interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="security-workers", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.settings.revocation_interval_s or 5
        while not self._stop.is_set():
            try:
                onboarding = self.stores.onboarding  # the routes' own
                if self.settings.provisioning_service and self.provisioner is None:
                    from fleet.identity.provisioner import ProvisioningService

                    self.provisioner = ProvisioningService(self.settings, onboarding).start()
                if self.settings.revocation_interval_s > 0:
                    revoked = onboarding.run_due_revocations()
                    if revoked:
                        log.info("superseded certificates revoked", extra=log_fields(count=revoked))
            except Exception as exc:  # retried on the next tick
                log.warning("security workers not ready", extra=log_fields(error=str(exc)))
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.provisioner is not None:
            self.provisioner.stop()
