"""The shadow routes in-process (app.dependency_overrides; no Cassandra, no Kafka, no job) and the
Kafka side (api/shadow_requests.py) on fake confluent-kafka clients.

The fake job answers requests with the real domain (fleet.shadow.domain.apply_update), so the
verdicts are the ones the shadow job would give.
"""

import asyncio
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from api.deps import get_audit, get_onboarding, get_principal, get_shadow_requests, get_shadows
from api.main import create_app
from api.shadow_requests import KafkaUnavailable, Outcome, Pending, ShadowRequests, desired_record
from fleet.access.auth import Principal, Role
from fleet.config import Settings
from fleet.shadow.domain import OPERATOR, ShadowDocument, ShadowUpdate, Source, apply_update
from fleet.shadow.query import Connectivity, HistoryCursor
from tests.support.api import FakeDevices, api_client

ADMIN = Principal("k1", "admin", Role.admin, None)
OPERATOR_KEY = Principal("k2", "alice", Role.operator, None)
VIEWER = Principal("k3", "viewer", Role.viewer, None)
SCOPED = Principal("k4", "scoped", Role.operator, frozenset({"a"}))
T0 = 1_717_156_800_000


class FakeOnboarding:
    def __init__(self):
        self.devices = FakeDevices()


class FakeJob:
    """The shadow job's decisions (the real domain) and what it wrote to Cassandra."""

    def __init__(self):
        self.docs: dict[tuple[str, str], ShadowDocument] = {}
        self.records: list[dict] = []

    def decide(self, record) -> Outcome:
        self.records.append(record)
        key = (record["device_id"], record["shadow"])
        doc = self.docs.get(key) or ShadowDocument.empty(*key)
        update = ShadowUpdate(record["state"], Source(OPERATOR, record["actor"]), record["ts"], record["version"],
                              record["client_token"])
        result = apply_update(doc, update)
        if hasattr(result, "code"):
            return Outcome(record["request_id"], key[0], key[1], result.http_status, result.code, result.message,
                           result.version)
        self.docs[key] = result.document
        return Outcome(record["request_id"], key[0], key[1], 200, version=result.document.version,
                       document=result.document.to_json())


class FakeRequests:
    """The Kafka side: ``mode`` = answer (the job answers at once), late (no verdict in time), down."""

    def __init__(self, job: FakeJob):
        self.job = job
        self.mode = "answer"
        self.gate: int | None = None  # hold requests until this many arrived, then answer in order
        self.known: dict[str, Outcome | Pending] = {}
        self.produced: dict[str, dict] = {}
        self._arrived: list = []

    async def submit(self, record, timeout):
        assert timeout == 3.0
        self.produced[record["request_id"]] = record
        if self.mode == "down":
            raise KafkaUnavailable("Kafka at 127.0.0.1:9092 is unavailable: connection refused")
        if self.mode == "late":
            self.known[record["request_id"]] = Pending(record["request_id"], record["device_id"], record["shadow"],
                                                       time.monotonic(), asyncio.get_running_loop().create_future())
            return None
        if self.gate:
            event = asyncio.Event()
            self._arrived.append((record, event))
            if len(self._arrived) == self.gate:
                for _, e in self._arrived:
                    e.set()
            await asyncio.wait_for(event.wait(), 5)
        outcome = self.job.decide(record)
        self.known[record["request_id"]] = outcome
        return outcome

    def answer_late(self, request_id):
        assert isinstance(self.known[request_id], Pending)
        self.known[request_id] = self.job.decide(self.produced[request_id])

    def lookup(self, request_id):
        return self.known.get(request_id)


class FakeShadows:
    """What the job wrote (FakeJob.docs), read the way fleet.shadow.query reads it."""

    def __init__(self, job: FakeJob):
        self.job = job
        self.connected: dict[str, Connectivity] = {}

    def document(self, device_id, name):
        return self.job.docs.get((device_id, name))

    def shadows(self, device_id):
        from fleet.shadow.query import ShadowSummary

        return sorted((ShadowSummary(n, d.version, d.updated_at) for (i, n), d in self.job.docs.items()
                       if i == device_id), key=lambda s: s.name)

    def history(self, device_id, name, *, limit, cursor=None):
        from fleet.shadow.domain import ShadowChange

        doc = self.job.docs.get((device_id, name))
        top = doc.version if doc else 0
        below = cursor.version if cursor else top + 1
        versions = [v for v in range(top, 0, -1) if v < below]
        page = [ShadowChange(device_id, name, v, "operator", "alice", T0 + v, None, {"desired": {"v": v}},
                             {"v": v}, {}) for v in versions[:limit]]
        return page, HistoryCursor(page[-1].version) if len(versions) > limit else None

    def connectivity(self, device_ids):
        return {i: self.connected[i] for i in device_ids if i in self.connected}


class NoAudit:
    def record_async(self, *args):
        raise RuntimeError("no audit store in unit tests")


class World:
    def __init__(self):
        self.principal = ADMIN
        self.job = FakeJob()
        self.requests = FakeRequests(self.job)
        self.shadows = FakeShadows(self.job)
        self.onboarding = FakeOnboarding()


@pytest.fixture
def world():
    w = World()
    with api_client({get_principal: lambda: w.principal, get_onboarding: lambda: w.onboarding, get_audit: NoAudit,
                     get_shadows: lambda: w.shadows, get_shadow_requests: lambda: w.requests}) as w.client:
        yield w


def patch(w, desired, *, name=None, if_match=None, token=None, device="d1-a"):
    headers = {"If-Match": if_match} if if_match is not None else {}
    body = {"desired": desired, **({"client_token": token} if token else {})}
    return w.client.patch(f"/v1/devices/{device}/shadow", json=body, headers=headers,
                          params={"name": name} if name is not None else {})


# -- PATCH: the verdict ----------------------------------------------------------------------

def test_an_accepted_change_is_200_with_the_document_and_its_etag(world):
    world.principal = OPERATOR_KEY
    r = patch(world, {"fan": "on", "limits": {"max": 30}}, token="tok-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["device_id"], body["name"], body["version"]) == ("d1-a", "", 1)
    assert body["state"] == {"desired": {"fan": "on", "limits": {"max": 30}}, "reported": {},
                             "delta": {"fan": "on", "limits": {"max": 30}}}
    assert set(body["metadata"]["desired"]) == {"fan", "limits"}
    assert r.headers["ETag"] == '"1"'
    [record] = world.job.records
    assert (record["device_id"], record["shadow"], record["actor"], record["version"], record["client_token"]) == \
        ("d1-a", "", "alice", None, "tok-1")
    assert record["state"] == {"desired": {"fan": "on", "limits": {"max": 30}}}


def test_the_record_matches_its_schema(world):
    import jsonschema

    patch(world, {"fan": "on"}, name="cfg", if_match='"0"', token="t")
    schema = json.loads(open("schemas/kafka/shadow-desired.schema.json").read())
    jsonschema.validate(world.job.records[-1], schema)
    assert world.job.records[-1]["version"] == 0 and world.job.records[-1]["shadow"] == "cfg"


def test_null_deletes_and_if_match_applies_on_the_version(world):
    assert patch(world, {"a": 1, "b": 2}).json()["version"] == 1
    r = patch(world, {"a": None}, if_match='"1"')
    assert (r.status_code, r.json()["state"]["desired"], r.headers["ETag"]) == (200, {"b": 2}, '"2"')
    assert patch(world, {"c": 3}, if_match="2").status_code == 200  # unquoted is accepted too


def test_a_stale_if_match_is_409_naming_the_current_version(world):
    patch(world, {"a": 1})
    patch(world, {"a": 2})
    r = patch(world, {"a": 3}, if_match='"1"')
    assert r.status_code == 409
    assert r.json() == {"detail": "version 1 is not the current version 2", "code": "version_conflict", "version": 2}


def test_two_concurrent_patches_on_one_version_one_wins(world):
    patch(world, {"mode": "idle"})
    world.requests.gate = 2
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda value: patch(world, {"mode": value}, if_match='"1"'), ["eco", "boost"]))
    assert sorted(r.status_code for r in answers) == [200, 409]
    won = next(r for r in answers if r.status_code == 200).json()
    lost = next(r for r in answers if r.status_code == 409).json()
    assert won["version"] == 2 and lost["version"] == 2 and lost["code"] == "version_conflict"
    assert world.job.docs[("d1-a", "")].desired == won["state"]["desired"]


@pytest.mark.parametrize("desired, status, code", [
    ({"bad key!": 1}, 400, "invalid_key"),
    ({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}, 400, "too_deep"),
    ({"big": "x" * 9000}, 413, "state_too_large"),
    ({f"k{i}": i for i in range(300)}, 413, "too_many_keys"),
])
def test_a_patch_that_cannot_pass_is_refused_without_producing(world, desired, status, code):
    r = patch(world, desired)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["detail"] and world.job.records == []


@pytest.mark.parametrize("kwargs, code, detail", [
    ({"name": "bad name"}, "invalid_shadow_name", "shadow name 'bad name' does not match"),
    ({"token": "t" * 65}, "invalid_request", "client_token must be a string of 1-64 characters"),
    ({"if_match": "abc"}, "invalid_request", "If-Match must be one shadow version"),
    ({"if_match": '"1", "2"'}, "invalid_request", "If-Match must be one shadow version"),
])
def test_bad_names_tokens_and_if_match_are_400(world, kwargs, code, detail):
    r = patch(world, {"a": 1}, **kwargs)
    assert (r.status_code, r.json()["code"]) == (400, code) and detail in r.json()["detail"]
    assert world.job.records == []


@pytest.mark.parametrize("verdict", [
    Outcome("r", "d1-a", "", 429, "rate_limited", "more than 10 requests a second (burst 20)"),
    Outcome("r", "d1-a", "", 413, "state_too_large", "desired + reported would be 9000 bytes, more than 8192", 7),
])
def test_the_jobs_rejections_pass_through_with_their_status(world, verdict):
    world.job.decide = lambda record: verdict
    r = patch(world, {"n": 1})
    assert (r.status_code, r.json()) == (verdict.status, {"detail": verdict.message, "code": verdict.code,
                                                          "version": verdict.version})


def test_a_body_that_is_not_a_patch_is_422(world):
    r = world.client.patch("/v1/devices/d1-a/shadow", json={"desired": {"a": 1}, "version": 3})
    assert r.status_code == 422
    r = world.client.patch("/v1/devices/d1-a/shadow", json={"desired": [1, 2]})
    assert r.status_code == 422


def test_kafka_down_is_503_with_a_message(world):
    world.requests.mode = "down"
    r = patch(world, {"a": 1})
    assert r.status_code == 503
    assert r.json()["detail"] == "Kafka at 127.0.0.1:9092 is unavailable: connection refused"


def test_no_verdict_in_time_is_202_then_the_request_is_polled(world):
    world.requests.mode = "late"
    r = patch(world, {"fan": "on"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status_url"] == f"/v1/shadow-requests/{body['request_id']}" == r.headers["Location"]
    polled = world.client.get(body["status_url"])
    assert polled.status_code == 200
    assert polled.json() == {"request_id": body["request_id"], "device_id": "d1-a", "name": "", "state": "pending",
                                  "status": None, "code": None, "message": None, "version": None, "document": None}
    world.requests.answer_late(body["request_id"])
    done = world.client.get(body["status_url"]).json()
    assert (done["state"], done["status"], done["version"]) == ("accepted", 200, 1)
    assert done["document"]["state"]["desired"] == {"fan": "on"}


def test_an_unknown_request_is_404(world):
    r = world.client.get("/v1/shadow-requests/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "unknown or expired request"})


def test_a_scoped_key_polls_only_its_devices_requests(world):
    world.requests.mode = "late"
    request_id = patch(world, {"a": 1}, device="d3-b").json()["request_id"]
    world.principal = SCOPED
    r = world.client.get(f"/v1/shadow-requests/{request_id}")
    assert (r.status_code, r.json()) == (404, {"detail": "unknown or expired request"})
    world.principal = Principal("k5", "b-ops", Role.viewer, frozenset({"b"}))
    assert world.client.get(f"/v1/shadow-requests/{request_id}").json()["state"] == "pending"


# -- roles and devices -----------------------------------------------------------------------

def test_a_viewer_cannot_patch(world):
    world.principal = VIEWER
    r = patch(world, {"a": 1}, device="nope")
    assert (r.status_code, r.json()) == (403, {"detail": "this needs the operator role; the credential has viewer"})
    assert world.job.records == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/devices/{id}/shadow"), ("GET", "/v1/devices/{id}/shadows"), ("GET", "/v1/devices/{id}/shadow/history"),
    ("PATCH", "/v1/devices/{id}/shadow"),
])
@pytest.mark.parametrize("device_id", ["nope", "bad id!", "d3-b"])
def test_an_unknown_or_invisible_device_is_404(world, method, path, device_id):
    world.principal = SCOPED
    r = world.client.request(method, path.format(id=device_id), json={"desired": {"a": 1}} if method == "PATCH" else None)
    assert (r.status_code, r.json()) == (404, {"detail": f"device {device_id!r} not found"})
    assert world.job.records == []


# -- reads -----------------------------------------------------------------------------------

def test_get_the_document_with_its_etag_and_404_before_the_first_write(world):
    world.principal = VIEWER
    r = world.client.get("/v1/devices/d1-a/shadow")
    assert (r.status_code, r.json()) == (404, {"detail": "device 'd1-a' has no classic shadow yet"})
    r = world.client.get("/v1/devices/d1-a/shadow", params={"name": "cfg"})
    assert (r.status_code, r.json()) == (404, {"detail": "device 'd1-a' has no shadow 'cfg' yet"})
    world.principal = ADMIN
    patch(world, {"a": 1})
    patch(world, {"b": 2}, name="cfg")
    r = world.client.get("/v1/devices/d1-a/shadow")
    assert (r.status_code, r.headers["ETag"], r.json()["state"]["desired"]) == (200, '"1"', {"a": 1})
    r = world.client.get("/v1/devices/d1-a/shadow", params={"name": "cfg"})
    assert (r.json()["name"], r.json()["state"]["delta"]) == ("cfg", {"b": 2})
    assert r.json()["connectivity"] is None  # never heard from


def test_the_shadow_carries_the_devices_connectivity(world):
    world.principal = ADMIN
    patch(world, {"a": 1})
    world.shadows.connected["d1-a"] = Connectivity("d1-a", False, None, T0, "connection_lost", "1.4.1")
    doc = world.client.get("/v1/devices/d1-a/shadow").json()
    assert doc["connectivity"] == {"connected": False, "connected_since": None, "last_seen": "2024-05-31T12:00:00Z",
                                   "disconnect_reason": "connection_lost", "firmware_version": "1.4.1"}


def test_get_waits_for_min_version(world):
    patch(world, {"a": 1})
    later = ShadowDocument("d1-a", "", {"a": 2}, {}, {"desired": {"a": T0}, "reported": {}}, 2, T0)
    threading.Timer(0.2, lambda: world.job.docs.__setitem__(("d1-a", ""), later)).start()
    started = time.monotonic()
    r = world.client.get("/v1/devices/d1-a/shadow", params={"min_version": 2})
    assert r.json()["version"] == 2 and 0.15 < time.monotonic() - started < 2.5


def test_a_bad_shadow_name_on_a_read_is_400(world):
    r = world.client.get("/v1/devices/d1-a/shadow/history", params={"name": "no spaces"})
    assert r.status_code == 400 and "does not match" in r.json()["detail"]


def test_the_shadows_of_a_device(world):
    patch(world, {"a": 1})
    patch(world, {"a": 1}, name="net")
    patch(world, {"a": 2}, name="net")
    r = world.client.get("/v1/devices/d1-a/shadows")
    assert [(s["name"], s["version"]) for s in r.json()["items"]] == [("", 1), ("net", 2)]


def test_history_pages_with_page_token(world):
    for i in range(5):
        patch(world, {"v": i})
    pages, token = [], None
    while True:
        r = world.client.get("/v1/devices/d1-a/shadow/history", params={"limit": 2, **({"page_token": token} if token else {})})
        assert r.status_code == 200, r.text
        pages.append([i["version"] for i in r.json()["items"]])
        token = r.json()["next_page_token"]
        if not token:
            break
    assert pages == [[5, 4], [3, 2], [1]]
    item = r.json()["items"][0]
    assert {"version", "ts", "source_kind", "actor", "patch", "desired", "reported"} <= set(item)


@pytest.mark.parametrize("params, detail", [
    ({"page_token": "nope!"}, "'page_token' is not a token this API issued"),
    ({"limit": 0}, None),
])
def test_bad_history_queries(world, params, detail):
    r = world.client.get("/v1/devices/d1-a/shadow/history", params=params)
    if detail:
        assert (r.status_code, r.json()) == (400, {"detail": detail})
    else:
        assert r.status_code in (400, 422)


# -- connectivity on device reads ------------------------------------------------------------

def test_devices_show_and_filter_by_connectivity(world):
    world.shadows.connected["d1-a"] = Connectivity("d1-a", True, T0, T0 + 5000, None, "1.4.2")
    world.shadows.connected["d3-b"] = Connectivity("d3-b", False, None, T0, "connection_lost", "1.4.1")
    one = world.client.get("/v1/devices/d1-a").json()["connectivity"]
    assert one == {"connected": True, "connected_since": "2024-05-31T12:00:00Z", "last_seen": "2024-05-31T12:00:05Z",
                   "disconnect_reason": None, "firmware_version": "1.4.2"}
    assert world.client.get("/v1/devices/d2-a").json()["connectivity"] is None
    ids = lambda params: [d["device_id"] for d in world.client.get("/v1/devices", params=params).json()["items"]]  # noqa: E731
    assert ids({}) == ["d1-a", "d2-a", "d3-b", "d4-b"]
    assert ids({"connected": "true"}) == ["d1-a"]
    assert ids({"connected": "false"}) == ["d2-a", "d3-b", "d4-b"]  # never heard from counts as not connected
    page = world.client.get("/v1/devices", params={"connected": "true", "limit": 2, "page_token": None}).json()
    assert [d["device_id"] for d in page["items"]] == ["d1-a"] and page["next_page_token"]  # a post-filter
    assert world.client.get("/v1/devices", params={"connected": "maybe"}).status_code == 422


# -- OpenAPI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openapi():
    return create_app(Settings.from_env({})).openapi()


@pytest.mark.parametrize("method, path, codes", [
    ("get", "/v1/devices/{device_id}/shadow", {200, 400, 401, 404, 422, 503}),
    ("get", "/v1/devices/{device_id}/shadows", {200, 401, 404, 503}),
    ("patch", "/v1/devices/{device_id}/shadow", {200, 202, 400, 401, 403, 404, 409, 413, 422, 429, 503}),
    ("get", "/v1/devices/{device_id}/shadow/history", {200, 400, 401, 404, 422, 503}),
    ("get", "/v1/shadow-requests/{request_id}", {200, 401, 404, 503}),
])
def test_openapi_lists_the_routes_and_their_errors(openapi, method, path, codes):
    responses = openapi["paths"][path][method]["responses"]
    assert codes <= {int(c) for c in responses}, (path, sorted(responses))


def test_openapi_names_the_models(openapi):
    patch_op = openapi["paths"]["/v1/devices/{device_id}/shadow"]["patch"]
    ref = lambda code: patch_op["responses"][code]["content"]["application/json"]["schema"]["$ref"]  # noqa: E731
    assert ref("200").endswith("/ShadowOut") and ref("202").endswith("/ShadowPending")
    assert all(ref(c).endswith("/ShadowRejected") for c in ("400", "409", "413", "429", "503"))
    assert {"If-Match", "name"} <= {p["name"] for p in patch_op["parameters"]}
    history = openapi["paths"]["/v1/devices/{device_id}/shadow/history"]["get"]
    assert {"limit", "page_token", "name"} <= {p["name"] for p in history["parameters"]}
    assert {"items", "next_page_token"} <= set(openapi["components"]["schemas"]["ShadowHistoryPage"]["properties"])
    assert "connected" in {p["name"] for p in openapi["paths"]["/v1/devices"]["get"]["parameters"]}
    assert "connectivity" in openapi["components"]["schemas"]["DeviceOut"]["properties"]


def test_shadow_response_models_do_not_derive_from_request_models():
    import inspect

    from api.schemas import shadow
    from api.schemas.base import RequestModel, ResponseModel

    models = [o for o in vars(shadow).values() if inspect.isclass(o) and issubclass(o, (RequestModel, ResponseModel))]
    assert len(models) > 5
    for model in models:
        assert not (issubclass(model, RequestModel) and issubclass(model, ResponseModel)), model


# -- the Kafka side on fake clients ----------------------------------------------------------

class FakeProducer:
    def __init__(self, fail=None):
        self.records = []
        self.reports = queue.Queue()
        self.fail = fail

    def produce(self, topic, key, value, on_delivery):
        self.records.append((topic, key, json.loads(value)))
        self.reports.put((on_delivery, self.fail))

    def poll(self, timeout):
        try:
            callback, error = self.reports.get(timeout=timeout)
        except queue.Empty:
            return 0
        callback(error, None)
        return 1

    def flush(self, timeout):
        return 0


class FakeMessage:
    def __init__(self, value):
        self._value = value

    def error(self):
        return None

    def value(self):
        return self._value


class FakeConsumer:
    def __init__(self, partitions=(0, 1, 2), reachable=True):
        self.consume_timeouts = []
        self.partitions = partitions
        self.reachable = reachable
        self.assigned = None
        self.inbox = queue.Queue()
        self.closed = False

    def list_topics(self, topic, timeout):
        if not self.reachable:
            raise RuntimeError("KafkaError{code=_TRANSPORT,str='Failed to get metadata: Local: Broker transport failure'}")
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={p: None for p in self.partitions})})

    def get_watermark_offsets(self, tp, timeout):
        return 0, 10 + tp.partition

    def assign(self, partitions):
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def poll(self, timeout):
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def consume(self, num_messages, timeout):
        self.consume_timeouts.append(timeout)
        out = []
        while len(out) < num_messages:
            try:
                out.append(self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait())
            except queue.Empty:
                break
        return out

    def close(self):
        self.closed = True


def _verdict(record, status=200, **extra):
    return FakeMessage(json.dumps({"request_id": record["request_id"], "device_id": record["device_id"],
                                   "shadow": record["shadow"], "status": status, "ts": T0, **extra}).encode())


def _record(**kw):
    return desired_record(device_id="d1", shadow="", desired={"a": 1}, version=None, actor="alice", client_token=None,
                          ts=T0, **kw)


def _requests(producer, consumer, timeout=1.0):
    settings = Settings.from_env({}).replace(shadow_verdict_timeout_s=timeout)
    return ShadowRequests(settings, producer_factory=lambda: producer, consumer_factory=lambda: consumer)


def test_the_verdict_resolves_the_waiting_request():
    producer, consumer = FakeProducer(), FakeConsumer()
    requests = _requests(producer, consumer, timeout=10.0)  # a bound for a loaded machine, not a wait

    async def run():
        record = _record()
        # The job answers as soon as the record is produced (from its own thread).
        threading.Timer(0.05, lambda: consumer.inbox.put(_verdict(record, version=1, document={"version": 1}))).start()
        return record, await requests.submit(record, 10.0)

    try:
        record, outcome = asyncio.run(run())
    finally:
        requests.close()
    assert (outcome.request_id, outcome.status, outcome.version, outcome.document) == (record["request_id"], 200, 1,
                                                                                      {"version": 1})
    [(topic, key, value)] = producer.records
    assert (topic, key, value) == ("fleet.shadow-desired", b"d1", record)
    # Positioned at each partition's end before anything was produced.
    assert consumer.assigned == [("fleet.shadow-verdicts", p, 10 + p) for p in (0, 1, 2)]
    assert requests.lookup(record["request_id"]) == outcome and consumer.closed
    # consume(n, timeout) waits for n records or the whole timeout: only poll() may block.
    assert consumer.consume_timeouts and set(consumer.consume_timeouts) == {0}


def test_no_verdict_in_time_is_none_then_looked_up():
    producer, consumer = FakeProducer(), FakeConsumer()
    requests = _requests(producer, consumer, timeout=0.2)

    async def run():
        record = _record()
        first = await requests.submit(record, 0.2)
        pending = requests.lookup(record["request_id"])
        consumer.inbox.put(_verdict(record, 409, code="version_conflict", message="stale", version=4))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if isinstance(requests.lookup(record["request_id"]), Outcome):
                break
        return first, pending, requests.lookup(record["request_id"])

    try:
        first, pending, later = asyncio.run(run())
    finally:
        requests.close()
    assert first is None and isinstance(pending, Pending) and pending.delivered
    assert (later.status, later.code, later.version) == (409, "version_conflict", 4)


def test_a_record_kafka_did_not_take_is_a_503_outcome():
    producer, consumer = FakeProducer(fail="KafkaError{code=_MSG_TIMED_OUT}"), FakeConsumer()
    requests = _requests(producer, consumer)
    try:
        outcome = asyncio.run(requests.submit(_record(), 1.0))
    finally:
        requests.close()
    assert (outcome.status, outcome.code) == (503, "kafka_unavailable")
    assert "Kafka did not take the request" in outcome.message


def test_kafka_unreachable_is_kafka_unavailable_without_producing():
    producer, consumer = FakeProducer(), FakeConsumer(reachable=False)
    requests = _requests(producer, consumer)

    async def run():
        with pytest.raises(KafkaUnavailable, match="Broker transport failure"):
            await requests.submit(_record(), 1.0)
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable):  # known down: no wait the second time
            await requests.submit(_record(), 1.0)
        return time.monotonic() - started

    try:
        second = asyncio.run(run())
    finally:
        requests.close()
    assert producer.records == [] and second < 0.1


def test_verdicts_of_other_instances_are_kept_for_polling_and_bounded():
    producer, consumer = FakeProducer(), FakeConsumer()
    requests = ShadowRequests(Settings(), producer_factory=lambda: producer, consumer_factory=lambda: consumer,
                              max_recent=3)

    async def run():
        requests._start(asyncio.get_running_loop())
        others = [_record() for _ in range(5)]
        for r in others:
            consumer.inbox.put(_verdict(r))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if requests.lookup(others[-1]["request_id"]) is not None:
                break
        return [requests.lookup(r["request_id"]) is not None for r in others]

    try:
        known = asyncio.run(run())
    finally:
        requests.close()
    assert known == [False, False, True, True, True]
