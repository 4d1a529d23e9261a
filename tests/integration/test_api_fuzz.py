"""Fuzz every operation of the OpenAPI document (schemathesis): whatever arrives, never a 5xx.

Runs against the in-process app on the throwaway keyspace, as an admin (so requests get past
authentication and reach the handlers), and once more without credentials. The operations are
driven through their Hypothesis strategies (``operation.as_strategy()``) rather than
``schema.parametrize``, whose fixture mode does not run on pytest 9.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.main import create_app
from fleet.config import Settings

pytestmark = pytest.mark.integration

# The operation list only; the requests go to the fixture's app on the test keyspace.
OPERATIONS = sorted(route for path, methods in create_app(Settings.from_env({})).openapi()["paths"].items()
                    for route in (f"{m.upper()} {path}" for m in methods))


@pytest.fixture(scope="module")
def operations(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


def _run(operation, headers: dict, examples: int, check) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.headers = {**{k: v for k, v in (case.headers or {}).items()
                           if k.lower() not in ("authorization", "x-api-key")}, **headers}
        response = case.call()
        check(case, response)

    fuzz()


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors_as_admin(operations, keys, label):
    def check(case, response):
        assert response.status_code < 500, f"{label} {case.formatted_path}: {response.status_code} {response.text}"

    _run(operations[label], keys.admin, 40, check)


# The OTA download's credential is its signed query (devices have no API key): without one it is a
# 404 for an unknown deployment or a 403 for a bad signature, never a 401 (its no-server-errors run
# above still covers it).
DEVICE_CREDENTIALED = ("GET /v1/ota/download/{deployment_id}",)


@pytest.mark.parametrize("label", [op for op in OPERATIONS if " /v1/" in op and op not in DEVICE_CREDENTIALED])
def test_every_v1_operation_is_401_without_credentials(operations, label):
    def check(case, response):
        assert response.status_code == 401, f"{label} {case.formatted_path}: {response.status_code}"

    _run(operations[label], {}, 5, check)


@pytest.mark.parametrize("path, body", [
    ("/v1/keys", '{"name": "\\ud800", "role": "viewer"}'),
    ("/v1/devices", '{"metadata": {"k": "\\ud800"}}'),
    ("/v1/provisioning/templates", '{"name": "t-sur", "allowed_serials": ["a"], "description": "\\udfff"}'),
])
def test_lone_surrogates_are_a_client_error(api, keys, path, body):
    """JSON can carry text Cassandra cannot store; it must be a 422, and the 422 must render."""
    r = api.post(path, content=body, headers={**keys.admin, "Content-Type": "application/json"})
    assert r.status_code == 422
