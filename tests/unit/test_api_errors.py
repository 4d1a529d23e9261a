"""Invalid request bodies are 4xx with a short message, never a 500 (no Cassandra: stores are faked)."""

import pytest

from api.deps import get_api_keys, get_audit, get_onboarding, get_principal, get_visible_device
from fleet.access.auth import Principal, Role
from fleet.infra.cassandra import StoreUnavailable
from tests.support.api import api_client


class NoAudit:
    def record_async(self, *args):
        raise StoreUnavailable("no store in unit tests")


@pytest.fixture(scope="module")
def client():
    with api_client({get_principal: lambda: Principal("k1", "admin", Role.admin, None),
                     get_onboarding: lambda: object(), get_api_keys: lambda: object(),
                     get_visible_device: lambda: object(), get_audit: NoAudit}, api_max_body_bytes=1 << 20) as c:
        yield c


ROUTES = [("POST", "/v1/devices"), ("POST", "/v1/keys"), ("PATCH", "/v1/devices/d1")]
BAD = b'{"device_id": "\xc3\x28"}'


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("ctype", ["text/plain", "application/octet-stream", None, "application/json"])
def test_non_utf8_body_is_a_client_error(client, method, path, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.request(method, path, content=BAD, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("method, path", ROUTES)
def test_lone_surrogate_is_422(client, method, path):
    r = client.request(method, path, content=b'{"name": "\\ud800", "metadata": {"k": "\\ud800"}}',
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("ctype", ["text/plain", "application/json"])
def test_big_invalid_body_is_not_echoed(client, ctype):
    body = b'"' + b"\xff" * 600_000 + b'"'
    r = client.post("/v1/devices", content=body, headers={"Content-Type": ctype})
    assert 400 <= r.status_code < 500
    assert len(r.content) < 4096


def test_oversize_body_is_413(client):
    r = client.post("/v1/devices", content=b"x" * ((1 << 20) + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "1048576" in r.json()["detail"]


@pytest.mark.parametrize("make", [
    lambda: __import__("cassandra.cluster", fromlist=["NoHostAvailable"]).NoHostAvailable("down", {}),
    lambda: __import__("cassandra", fromlist=["OperationTimedOut"]).OperationTimedOut("slow"),
    lambda: __import__("cassandra", fromlist=["Unavailable"]).Unavailable("replicas"),
    lambda: __import__("cassandra", fromlist=["ReadTimeout"]).ReadTimeout("read"),
])
def test_cassandra_going_down_mid_request_is_a_503_not_a_500(make):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.errors import install

    app = FastAPI()
    install(app, 1 << 20)

    @app.get("/boom")
    def boom():
        raise make()

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 503 and r.json()["detail"].startswith("Cassandra is unavailable")
