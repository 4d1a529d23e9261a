"""The API's idioms in-process, with faked stores (app.dependency_overrides; no Cassandra, no broker):
domain errors through the exception handlers, the visible-device dependency, query parameters
checked where declared, one pagination scheme, and the OpenAPI document that says all of it."""

import datetime as dt
import uuid

import pytest

from api.deps import get_audit, get_onboarding, get_principal, get_shadows, get_stores, get_telemetry
from api.main import create_app
from fleet.access.audit import AuditRecord
from fleet.access.auth import Principal, Role
from fleet.config import Settings
from fleet.identity.devices import RegistryError, encode_cursor
from fleet.infra.cassandra import StoreUnavailable
from fleet.telemetry.query import AGG_FUNCTIONS, BUCKETS_MS, Bucket, Cursor
from tests.support.api import FakeDevices, api_client

ADMIN = Principal("k1", "admin", Role.admin, None)
NOW = dt.datetime.now(dt.UTC)


class FakeOnboarding:
    def __init__(self):
        self.devices = FakeDevices(["d1-a", "d2-a", "d3-b"])

    def register(self, device_id, **_):
        if device_id in self.devices.devices:
            raise RegistryError("conflict", f"device {device_id!r} already exists")
        raise RegistryError("bad_request", "the CSR has no common name; it must be the device id")

    def delete(self, device_id):
        raise RegistryError("forbidden", "not today")


class FakeTelemetry:
    def __init__(self):
        self.calls = []

    def points(self, device_id, rng, *, limit, cursor, metrics, now_ms):
        self.calls.append((limit, cursor))
        return [], (Cursor(1000, 7) if cursor is None else None)

    def rollup_buckets(self, device_id, metric, rng, *, now_ms, bucket_ms):
        self.calls.append(bucket_ms)
        return [Bucket(rng.start_ms - rng.start_ms % bucket_ms, 1.0, 3.0, 4.0, 2)]


class FakeAudit:
    def __init__(self):
        self.ids = [str(uuid.uuid1()) for _ in range(3)]
        self.asked = []

    def list(self, day, limit, before=None):
        self.asked.append((day, limit, before))
        start = self.ids.index(before) + 1 if before else 0
        return [AuditRecord(i, NOW, "key:k1", "POST /v1/devices", None, "success", {})
                for i in self.ids[start:start + limit]]

    def record_async(self, *args):
        raise StoreUnavailable("no audit store in unit tests")


class NoShadows:
    """No device has sent a status (device reads ask for connectivity)."""

    def connectivity(self, device_ids):
        return {}


class Principals:
    """The caller of the next requests (a test sets ``current``)."""

    current = ADMIN

    def __call__(self):
        return self.current


@pytest.fixture(scope="module")
def world():
    principals, onboarding, telemetry, audit = Principals(), FakeOnboarding(), FakeTelemetry(), FakeAudit()
    with api_client({get_principal: principals, get_onboarding: lambda: onboarding, get_telemetry: lambda: telemetry,
                     get_audit: lambda: audit, get_shadows: NoShadows}) as client:
        yield client, principals, onboarding, telemetry, audit


@pytest.fixture
def client(world):
    world[1].current = ADMIN
    return world[0]


def as_(world, principal):
    world[1].current = principal
    return world[0]


# -- domain errors through the exception handlers --------------------------------------------

@pytest.mark.parametrize("body, status, detail", [
    ({"device_id": "d1-a"}, 409, "device 'd1-a' already exists"),
    ({"device_id": "new", "csr": "x"}, 400, "the CSR has no common name; it must be the device id"),
])
def test_registry_errors_are_4xx_with_their_message(client, body, status, detail):
    r = client.post("/v1/devices", json=body)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_a_forbidden_registry_error_is_403(client):
    r = client.delete("/v1/devices/d1-a")
    assert (r.status_code, r.json()) == (403, {"detail": "not today"})


def test_a_store_that_is_down_is_503(world):
    client = world[0]

    class Down:
        @property
        def onboarding(self):
            raise StoreUnavailable("Cassandra at 127.0.0.1:9042 is unreachable")

    app = client.app
    saved = app.dependency_overrides.pop(get_onboarding)
    app.dependency_overrides[get_stores] = Down
    try:
        r = client.get("/v1/devices")
    finally:
        del app.dependency_overrides[get_stores]
        app.dependency_overrides[get_onboarding] = saved
    assert (r.status_code, r.json()) == (
        503, {"detail": "the registry store is unavailable: Cassandra at 127.0.0.1:9042 is unreachable"})


# -- the visible device ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/devices/{id}", "/v1/devices/{id}/telemetry/gaps",
                                  "/v1/devices/{id}/certificates"])
@pytest.mark.parametrize("device_id", ["nope", "bad id!", "d3-b"])
def test_a_device_the_key_may_not_see_is_not_found(world, path, device_id):
    client = as_(world, Principal("k2", "scoped", Role.viewer, frozenset({"a"})))
    r = client.get(path.format(id=device_id))
    assert (r.status_code, r.json()) == (404, {"detail": f"device {device_id!r} not found"})


def test_a_visible_device_is_found(world):
    client = as_(world, Principal("k2", "scoped", Role.viewer, frozenset({"a"})))
    r = client.get("/v1/devices/d1-a")
    assert r.status_code == 200 and r.json()["device_id"] == "d1-a"


@pytest.mark.parametrize("method, path", [("DELETE", "/v1/devices/nope"), ("PATCH", "/v1/devices/nope"),
                                          ("POST", "/v1/devices/nope/certificates")])
def test_the_role_is_checked_before_the_device_is_looked_up(world, method, path):
    client = as_(world, Principal("k3", "viewer", Role.viewer, None))
    r = client.request(method, path, json={"csr": "x"} if method == "POST" else {})
    assert (r.status_code, r.json()) == (403, {"detail": "this needs the operator role; the credential has viewer"})


# -- query parameters checked where declared -------------------------------------------------

@pytest.mark.parametrize("path, params, detail", [
    ("/telemetry", {"limit": 0}, "'limit' must be between 1 and 1000"),
    ("/telemetry", {"limit": 1001}, "'limit' must be between 1 and 1000"),
    ("/telemetry", {"page_token": "garbage!"}, "'page_token' is not a token this API issued"),
    ("/telemetry", {"from": "last tuesday"}, "'from' must be epoch milliseconds or an ISO 8601 time"),
    ("/telemetry/aggregate", {"metric": "t", "bucket": "2m"}, "'bucket' must be one of 1m, 5m, 1h, 1d"),
    ("/telemetry/aggregate", {"metric": "t", "fn": "median"}, "'fn' must be a comma-separated list"),
    ("/telemetry/aggregate", {"metric": "t", "fn": ["avg", "median"]}, "'fn' must be a comma-separated list"),
])
def test_bad_telemetry_queries_are_400_with_the_bound(client, path, params, detail):
    r = client.get(f"/v1/devices/d1-a{path}", params=params)
    assert r.status_code == 400, r.text
    assert detail in r.json()["detail"]


def test_a_value_of_the_wrong_type_is_still_422(client):
    r = client.get("/v1/devices/d1-a/telemetry", params={"limit": "many"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    # a missing required parameter and a bad bucket: the 422 lists both
    r = client.get("/v1/devices/d1-a/telemetry/aggregate", params={"bucket": "2m"})
    assert r.status_code == 422 and len(r.json()["detail"]) == 2


@pytest.mark.parametrize("fn, functions", [
    (None, ["avg", "min", "max", "count"]), ("", ["avg", "min", "max", "count"]), ("sum, max", ["sum", "max"]),
    (["sum", "min,max"], ["sum", "min", "max"]),
])
def test_fn_is_comma_separated_or_repeated(client, fn, functions):
    r = client.get("/v1/devices/d1-a/telemetry/aggregate", params={"metric": "t", "bucket": "1h",
                                                                     **({"fn": fn} if fn is not None else {})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bucket"] == "1h" and body["functions"] == functions
    assert set(body["buckets"][0]["values"]) == set(functions)


@pytest.mark.parametrize("params, detail", [
    ({"group": "bad group"}, "group 'bad group' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', "
                             "starting with a letter or digit"),
    ({"type": "a b"}, "device type 'a b' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', "
                      "starting with a letter or digit"),
    ({"metadata.a b": "1"}, "metadata key 'a b' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', "
                            "starting with a letter or digit"),
    ({"page_token": "garbage"}, "'page_token' is not a token this API issued"),
    ({"page_token": encode_cursor("no/slashes")}, "'page_token' is not a token this API issued"),
])
def test_bad_device_list_parameters_are_400(client, params, detail):
    r = client.get("/v1/devices", params=params)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


@pytest.mark.parametrize("params, detail", [
    ({"day": "yesterday"}, "day 'yesterday' is not a date like 2024-05-31"),
    ({"day": "2024-02-30"}, "day '2024-02-30' is not a date like 2024-05-31"),
    ({"page_token": "nope"}, "'page_token' is not a token this API issued"),
    ({"page_token": str(uuid.uuid4())}, "'page_token' is not a token this API issued"),
])
def test_bad_audit_queries_are_400(client, params, detail):
    r = client.get("/v1/audit", params=params)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


# -- one pagination scheme -------------------------------------------------------------------

def test_devices_page_with_page_token(world):
    client, onboarding = world[0], world[2]
    pages, token = [], None
    while True:
        page = client.get("/v1/devices", params={"limit": 2, **({"page_token": token} if token else {})}).json()
        pages.append([d["device_id"] for d in page["items"]])
        token = page["next_page_token"]
        if not token:
            break
    assert pages == [["d1-a", "d2-a"], ["d3-b"]]
    assert onboarding.devices.listed[-1][1:] == (2, "d2-a")


def test_audit_pages_with_page_token(world):
    client, audit = world[0], world[4]
    first = client.get("/v1/audit", params={"limit": 2, "day": ""}).json()
    assert [i["id"] for i in first["items"]] == audit.ids[:2] and first["next_page_token"] == audit.ids[1]
    assert audit.asked[-1] == (NOW.strftime("%Y-%m-%d"), 2, None)  # an empty day is today
    second = client.get("/v1/audit", params={"limit": 2, "page_token": first["next_page_token"]}).json()
    assert [i["id"] for i in second["items"]] == audit.ids[2:] and second["next_page_token"] is None


def test_telemetry_pages_with_page_token(world):
    client, telemetry = world[0], world[3]
    first = client.get("/v1/devices/d1-a/telemetry", params={"limit": 5}).json()
    assert first["next_page_token"] == Cursor(1000, 7).encode()
    second = client.get("/v1/devices/d1-a/telemetry", params={"page_token": first["next_page_token"]}).json()
    assert second["next_page_token"] is None
    assert telemetry.calls[-2:] == [(5, None), (100, Cursor(1000, 7))]


# -- the OpenAPI document --------------------------------------------------------------------

@pytest.fixture(scope="module")
def openapi():
    return create_app(Settings.from_env({})).openapi()


def _param(openapi, path, name):
    [param] = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name]
    return param["schema"]


def _resolve(openapi, schema):
    ref = schema.get("$ref") or next((s["$ref"] for s in schema.get("anyOf", ()) if "$ref" in s), None)
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_openapi_lists_the_bucket_and_fn_values(openapi):
    path = "/v1/devices/{device_id}/telemetry/aggregate"
    assert _resolve(openapi, _param(openapi, path, "bucket"))["enum"] == list(BUCKETS_MS)
    [array] = [s for s in _param(openapi, path, "fn")["anyOf"] if s.get("type") == "array"]
    assert _resolve(openapi, array["items"])["enum"] == list(AGG_FUNCTIONS)
    assert {"minimum": 1, "maximum": 1000}.items() <= _param(openapi, "/v1/devices/{device_id}/telemetry", "limit").items()


def test_openapi_documents_one_pagination_scheme(openapi):
    for path, page in [("/v1/devices", "DevicePage"), ("/v1/audit", "AuditPage"),
                       ("/v1/devices/{device_id}/telemetry", "PointsPage")]:
        names = {p["name"] for p in openapi["paths"][path]["get"]["parameters"]}
        assert {"limit", "page_token"} <= names and not names & {"cursor", "before"}, path
        assert {"items", "next_page_token"} <= set(openapi["components"]["schemas"][page]["properties"]), page


@pytest.mark.parametrize("method, path, codes", [
    ("post", "/v1/devices", {400, 401, 403, 409, 413, 422, 503}),
    ("get", "/v1/devices/{device_id}", {401, 404, 503}),
    ("patch", "/v1/devices/{device_id}", {400, 401, 403, 404, 409, 413, 422, 503}),
    ("get", "/v1/devices/{device_id}/telemetry/aggregate", {400, 401, 404, 422, 503}),
    ("delete", "/v1/keys/{key_id}", {401, 403, 404, 409, 503}),
    ("get", "/v1/audit", {400, 401, 403, 503}),
    ("post", "/v1/provisioning/claims", {400, 401, 403, 404, 409, 413, 422, 503}),
])
def test_openapi_documents_the_error_responses(openapi, method, path, codes):
    responses = openapi["paths"][path][method]["responses"]
    assert codes <= {int(c) for c in responses}
    for code in codes - {422}:
        schema = responses[str(code)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, code)
    assert openapi["components"]["schemas"]["ErrorOut"]["properties"]["detail"]["type"] == "string"


def test_every_v1_operation_documents_401_and_503(openapi):
    assert "/v1/ota/download/{deployment_id}" in openapi["paths"]
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            if path.startswith("/v1/ota/download/"):  # a device's signed URL: no API key, so no 401
                assert "503" in op["responses"] and "401" not in op["responses"], f"{method} {path}"
            elif path.startswith("/v1/"):
                assert {"401", "503"} <= set(op["responses"]), f"{method} {path}"


def test_response_models_do_not_derive_from_request_models():
    import inspect

    import api.schemas as schemas
    from api.schemas import audit, auth, ca, certificates, claims, common, devices, keys, telemetry, templates
    from api.schemas.base import RequestModel, ResponseModel

    models = [obj for module in (audit, auth, ca, certificates, claims, common, devices, keys, telemetry, templates)
              for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, (RequestModel, ResponseModel))]
    assert models and schemas.__doc__
    for model in models:
        assert not (issubclass(model, RequestModel) and issubclass(model, ResponseModel)), model
