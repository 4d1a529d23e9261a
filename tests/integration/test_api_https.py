"""The launcher serves the API over HTTPS with a certificate from the platform CA (``api_tls``)."""

from __future__ import annotations

import socket

import httpx
import pytest

from devtools.stack.apps import ApiComponent
from devtools.stack.process import wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def https_api(api_settings, tmp_path):
    # Its own var dir (pid file, logs) sharing the stack's PKI, on the test keyspace.
    (tmp_path / "pki").symlink_to(api_settings.pki_dir)
    settings = api_settings.replace(var_dir=tmp_path, api_tls=True, api_port=free_port())
    component = ApiComponent(settings)
    component.prepare()
    component.start()
    try:
        # Polls health with a deadline; fails at once (with the log tail) if the process died.
        wait_until(component.healthy, what="the HTTPS API", timeout=60, process=component.process)
        yield settings, component
    finally:
        component.stop()


def test_the_api_serves_https_with_a_platform_ca_certificate(https_api, keys):
    settings, component = https_api
    base = component.base_url
    assert base.startswith("https://")
    ca = str(settings.pki_dir / "ca-chain.crt")
    with httpx.Client(verify=ca) as client:
        assert client.get(f"{base}/health").json() == {"status": "ok"}
        assert client.get(f"{base}/v1/whoami", headers=keys.admin).json()["role"] == "admin"
        assert client.get(f"{base}/v1/whoami").status_code == 401
    with pytest.raises(httpx.ConnectError):  # not trusted without the platform CA
        httpx.get(f"{base}/health", verify=True)
    with pytest.raises(httpx.HTTPError):     # and no plain HTTP on that port
        httpx.get(base.replace("https://", "http://") + "/health")
