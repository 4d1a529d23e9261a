"""Cutting a client off the broker *now*: CRL reload confirmed by a canary, then session takeover.

Mosquitto checks the CRL only during the TLS handshake, so revoking a certificate needs three
steps to end a device's access within seconds:

1. the new CRL is written (fleet.identity.pki) and the broker is told to reload (SIGHUP on the local
   stack, or ``broker_reload_command`` elsewhere);
2. we wait until the reload is *in force*: every CRL revokes a fresh canary certificate, and we
   retry a handshake with it until the broker refuses it (a SIGHUP takes 10-70 ms to apply here;
   a fixed sleep would be either slow or wrong);
3. the live connection is dropped by a session takeover: a platform service connects on the
   service listener with the device's client id (on the device listener client id = CN, so a
   device cannot do this to another) and disconnects at once. The device's reconnect then fails
   the TLS handshake.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.config import Settings
from fleet.identity.ca import CertificateAuthority, pki_from_settings
from fleet.logs import log_fields
from fleet.mqtt.client import connect_once

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker could not be reloaded or reached."""


def mqtt_connects(host: str, port: int, ca_file: Path, cert: Path, key: Path, client_id: str,
                  timeout: float = 2.0) -> bool:
    """True when TLS and MQTT CONNECT succeed with this certificate (then disconnects cleanly).

    A clean session: with a live client's id this takes over its session and ends it.
    """
    return connect_once(host, port, ca_file, cert, key, client_id, timeout=timeout)


@dataclass
class CutoffReport:
    crl_in_force_ms: float | None = None
    disconnected: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None


class BrokerControl:
    def __init__(self, settings: Settings, pki: CertificateAuthority | None = None):
        self.settings = settings
        self.pki = pki or pki_from_settings(settings)
        self.service_name = settings.api_service_identity

    def _listener(self, ca: str) -> int:
        s = self.settings
        return {"issuing": s.mqtt_device_port, "services": s.mqtt_service_port,
                "claim": s.mqtt_provisioning_port}[ca]

    def reload(self) -> None:
        if self.settings.broker_reload_command:
            result = subprocess.run(self.settings.broker_reload_command, shell=True, capture_output=True,
                                    timeout=10)
            if result.returncode != 0:
                raise BrokerError(f"broker reload command failed with exit code {result.returncode}")
            return
        pid_file = self.settings.run_dir / "mosquitto.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot signal the broker (pid file {pid_file}): {exc}") from None

    def wait_crl_in_force(self, ca: str = "issuing", timeout: float | None = None) -> float:
        """Seconds until the broker refuses ``ca``'s newest canary; BrokerError on timeout."""
        timeout = self.settings.cutoff_timeout_s if timeout is None else timeout
        cert, key = self.pki.canary_paths(ca)
        port = self._listener(ca)
        t0 = time.monotonic()
        while mqtt_connects(self.settings.mqtt_host, port, self.pki.ca_chain_path, cert, key,
                            client_id=f"crl-canary-{ca}", timeout=1.0):
            if time.monotonic() - t0 > timeout:
                raise BrokerError(f"the broker did not apply the new {ca} CRL within {timeout:.0f}s")
            time.sleep(0.02)
        return time.monotonic() - t0

    def disconnect(self, client_id: str) -> None:
        cert, key = self.pki.service_identity(self.service_name)
        if not mqtt_connects(self.settings.mqtt_host, self.settings.mqtt_service_port, self.pki.ca_chain_path,
                             cert, key, client_id=client_id):
            raise BrokerError(f"could not take over the session of {client_id!r} on the service listener")

    def cut_off(self, client_ids: list[str], ca: str = "issuing") -> CutoffReport:
        """Reload, confirm the CRL is in force, drop the live connections. Never raises."""
        report = CutoffReport()
        t0 = time.monotonic()
        try:
            self.reload()
            report.crl_in_force_ms = round(self.wait_crl_in_force(ca) * 1000, 1)
            for client_id in client_ids:
                self.disconnect(client_id)
                report.disconnected.append(client_id)
        except BrokerError as exc:
            report.error = str(exc)
        report.elapsed_ms = round((time.monotonic() - t0) * 1000, 1)
        log.info("broker cut-off", extra=log_fields(clients=client_ids, ca=ca, elapsed_ms=report.elapsed_ms,
                                                     crl_in_force_ms=report.crl_in_force_ms, error=report.error))
        return report

    def refresh(self, ca: str = "issuing") -> CutoffReport:
        """Reload and confirm a CRL change without dropping anyone (re-enabling, repairs)."""
        return self.cut_off([], ca)
