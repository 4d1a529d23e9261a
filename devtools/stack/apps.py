"""The platform's own long-running processes (bridge, API) as stack components."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from devtools.stack.component import ProcessComponent
from devtools.stack.process import port_open
from fleet.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _http_ok(url: str, timeout: float = 2.0, context=None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that recreates ``settings`` in a child process (FLEET_* variables)."""
    env = dict(os.environ)
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


class BridgeComponent(ProcessComponent):
    """One MQTT->Kafka bridge process (more can join the same shared subscription)."""

    name = "bridge"
    start_timeout = 30.0

    def __init__(self, settings: Settings, instance: int = 0):
        if instance:
            settings = settings.replace(bridge_metrics_port=settings.bridge_metrics_port + instance)
            self.name = f"bridge-{instance}"
        super().__init__(settings, [sys.executable, "-m", "bridge", "--instance", str(instance)],
                         env=settings_env(settings), cwd=PROJECT_ROOT)

    def ports(self) -> list[tuple[str, int, str]]:
        return [("127.0.0.1", self.settings.bridge_metrics_port, self.name)]

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.settings.bridge_metrics_port}/health")

    def endpoints(self) -> dict[str, str]:
        port = self.settings.bridge_metrics_port
        return {"health": f"http://127.0.0.1:{port}/health", "metrics": f"http://127.0.0.1:{port}/metrics"}


class ApiComponent(ProcessComponent):
    """The API under uvicorn; with ``api_tls`` it serves HTTPS with a platform-CA certificate."""

    name = "api"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, settings: Settings):
        super().__init__(settings, [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
                                    "--host", settings.api_host, "--port", str(settings.api_port), "--no-access-log"],
                         env=settings_env(settings), cwd=PROJECT_ROOT)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.settings.api_tls else "http"
        return f"{scheme}://{self.settings.api_host}:{self.settings.api_port}"

    def prepare(self) -> None:
        if self.settings.api_tls and "--ssl-certfile" not in self.process.argv:
            from fleet.identity.pki import LocalPKI

            pki = LocalPKI(self.settings.pki_dir)
            pki.ensure()
            cert, key = pki.server_identity("fleet-api-server", hostnames=("localhost",),
                                            ips=tuple({"127.0.0.1", self.settings.api_host} - {"0.0.0.0"}))
            self.process.argv = [*self.process.argv, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]

    def ports(self) -> list[tuple[str, int, str]]:
        return [(self.settings.api_host, self.settings.api_port, "the API")]

    def _tls_context(self):
        if not self.settings.api_tls:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.settings.pki_dir / "ca-chain.crt"))

    def healthy(self) -> bool:
        return port_open(self.settings.api_host, self.settings.api_port) and \
            _http_ok(f"{self.base_url}/health", context=self._tls_context())

    def endpoints(self) -> dict[str, str]:
        base = self.base_url
        return {"api": base, "openapi": f"{base}/docs", "metrics": f"{base}/metrics"}
