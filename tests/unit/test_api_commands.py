"""The command routes in-process (app.dependency_overrides; no Cassandra, no Kafka) and the Kafka
side (api/command_requests.py) on fake confluent-kafka clients.

The fake job is the commands job's own logic (jobs.commands.logic.handle) on in-memory state, its
events handed to the API's watches as the events consumer would, its rows kept as Cassandra would.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from api.command_requests import CommandRequests, KafkaUnavailable, submit_record
from api.deps import get_audit, get_command_requests, get_commands, get_onboarding, get_principal
from api.main import create_app
from fleet.access.auth import Principal, Role
from fleet.commands.query import Claim, PageCursor
from fleet.config import Settings
from jobs.commands import logic
from jobs.keyed_state import MemoryCell
from tests.support.api import api_client
from tests.unit.test_api_shadow import (
    ADMIN,
    OPERATOR_KEY,
    SCOPED,
    VIEWER,
    FakeConsumer,
    FakeMessage,
    FakeOnboarding,
    FakeProducer,
    NoAudit,
)


class FakeJob:
    def __init__(self):
        self.cells: dict[str, MemoryCell] = {}
        self.rows: dict[str, dict] = {}
        self.records: list[dict] = []
        self.claims: dict[tuple[str, str], Claim] = {}

    def handle(self, raw: str, now: int | None = None) -> list[dict]:
        record = json.loads(raw)
        device = record["device_id"]
        handled = logic.handle(device, raw, now or record.get("created_at") or record.get("ts") or 0,
                               self.cells.setdefault(device, MemoryCell()))
        for out in handled.outputs:
            self.keep(out)
        return [o.value for o in handled.outputs if o.kind == logic.EVENT]

    def keep(self, out: logic.Output) -> None:
        """What the job writes to Cassandra: the command rows."""
        if out.kind == logic.COMMAND:
            self.rows[out.value["command_id"]] = json.loads(out.value["command"])


class FakeRequests(CommandRequests):
    """The real watches; ``send`` hands the record to the fake job instead of Kafka."""

    def __init__(self, job: FakeJob):
        super().__init__(Settings.from_env({}))
        self.job = job
        self.mode = "answer"  # answer, silent (the job does not answer), down
        self.loop = None

    async def send(self, record, watch, timeout=5.0):
        self.loop = asyncio.get_running_loop()
        if self.mode == "down":
            raise KafkaUnavailable("Kafka at 127.0.0.1:9092 is unavailable: connection refused")
        self.job.records.append(record)
        if self.mode == "answer":
            for event in self.job.handle(json.dumps(record)):
                self._on_reply(event)

    def device(self, raw: str, now: int):
        """A device's message reaching the job (from another thread, as the consumer's would)."""
        def run():
            for event in self.job.handle(raw, now):
                self._on_reply(event)
        self.loop.call_soon_threadsafe(run)


class FakeCommands:
    def __init__(self, job: FakeJob):
        self.job = job

    def command(self, command_id):
        return self.job.rows.get(command_id)

    def device_commands(self, device_id, *, limit, cursor=None):
        mine = sorted((c for c in self.job.rows.values() if c["device_id"] == device_id),
                      key=lambda c: (-c["created_at"], c["command_id"]))
        if cursor:
            mine = [c for c in mine if (-c["created_at"], c["command_id"]) > (-cursor.created_at, cursor.command_id)]
        page = mine[:limit]
        return page, PageCursor(page[-1]["created_at"], page[-1]["command_id"]) if len(mine) > limit else None

    def claim(self, device_id, key, command_id, body_hash, now_ms):
        return self.job.claims.setdefault((device_id, key), Claim(command_id, body_hash))

    def release(self, device_id, key, command_id):
        if self.job.claims.get((device_id, key), Claim("", "")).command_id == command_id:
            del self.job.claims[(device_id, key)]


class World:
    def __init__(self):
        self.principal = OPERATOR_KEY
        self.job = FakeJob()
        self.requests = FakeRequests(self.job)
        self.commands = FakeCommands(self.job)
        self.onboarding = FakeOnboarding()


@pytest.fixture
def world():
    w = World()
    with api_client({get_principal: lambda: w.principal, get_onboarding: lambda: w.onboarding, get_audit: NoAudit,
                     get_commands: lambda: w.commands, get_command_requests: lambda: w.requests}) as w.client:
        yield w


def post(w, body=None, device="d1-a", **params):
    body = {"name": "reboot", "params": {"delay_s": 1}, "timeout_s": 5, "ttl_s": 60} if body is None else body
    return w.client.post(f"/v1/devices/{device}/command", json=body, params=params)


def online(w, device="d1-a"):
    w.job.handle(json.dumps({"device_id": device, "type": "status", "ts": 0, "ingest_ts": 0,
                             "mqtt_topic": f"devices/{device}/status", "payload": {"online": True}}), 1)


def result(device, command_id, status="SUCCEEDED", **payload) -> str:
    return json.dumps({"device_id": device, "type": "command_result", "ts": 0, "ingest_ts": 0,
                       "mqtt_topic": f"devices/{device}/commands/{command_id}/result", "command_id": command_id,
                       "payload": {"status": status, **payload}})


# -- submit ----------------------------------------------------------------------------------

def test_submit_is_202_with_the_command_id_and_the_record_matches_its_schema(world):
    from fleet.contract.validation import kafka_schema

    r = post(world)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status_url"] == f"/v1/commands/{body['command_id']}" == r.headers["Location"]
    assert body["state"] == "QUEUED"  # the device is offline
    [record] = world.job.records
    assert kafka_schema("command-request").is_valid(record)
    assert (record["timeout_ms"], record["ttl_ms"], record["created_by"]) == (5000, 60000, "alice")
    got = world.client.get(body["status_url"]).json()
    assert (got["state"], got["final"], [t["to"] for t in got["history"]]) == ("QUEUED", False, ["QUEUED"])
    assert got["history"][0]["from"] is None


@pytest.mark.parametrize("body, status, code", [
    ({"name": "bad name!", "params": {}}, 400, "invalid_command"),
    ({"name": "reboot", "params": {}, "timeout_s": 0.5}, 400, "invalid_command"),
    ({"name": "reboot", "params": {}, "ttl_s": 8 * 86400}, 400, "invalid_command"),
    ({"name": "reboot", "params": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}, 400, "invalid_command"),
    ({"name": "reboot", "params": {"big": "x" * 9000}}, 413, "params_too_large"),
])
def test_a_command_that_cannot_pass_is_refused_without_producing(world, body, status, code):
    r = post(world, body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["detail"] and world.job.records == []


def test_the_jobs_refusal_passes_through(world):
    for i in range(50):
        assert post(world, {"name": "n", "params": {"i": i}}).status_code == 202
    r = post(world, {"name": "n", "params": {}})
    assert (r.status_code, r.json()["code"]) == (429, "queue_full")


def test_wait_returns_the_devices_result(world):
    online(world)
    world.requests.mode = "answer"

    def answer():
        # The device answers once the command is out (the job logs it SENT at once: online).
        for _ in range(100):
            sent = [c for c in world.job.rows.values() if c["state"] == "SENT"]
            if sent:
                world.requests.device(result("d1-a", sent[0]["command_id"], result={"ok": 1}),
                                      sent[0]["created_at"] + 10)
                return
            threading.Event().wait(0.02)

    threading.Thread(target=answer).start()
    r = post(world, wait=5)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["result"], r.json()["final"]) == ("SUCCEEDED", {"ok": 1}, True)
    assert [t["to"] for t in r.json()["history"]] == ["QUEUED", "SENT", "SUCCEEDED"]


def test_wait_without_a_result_in_time_is_202(world):
    r = post(world, wait=0.3)
    assert (r.status_code, r.json()["state"]) == (202, "QUEUED")


def test_wait_is_bounded(world):
    assert post(world, wait=31).status_code == 422


def test_the_same_idempotency_key_and_body_is_the_same_command(world):
    body = {"name": "reboot", "params": {}, "idempotency_key": "k-1"}
    first, again = post(world, body), post(world, body)
    assert first.status_code == again.status_code == 202
    assert first.json()["command_id"] == again.json()["command_id"]
    assert len(world.job.records) == 1  # submitted once
    other = post(world, {**body, "params": {"x": 1}})
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    assert post(world, body, device="d2-a").json()["command_id"] != first.json()["command_id"]  # per device


def test_a_retry_of_a_finished_command_answers_it(world):
    online(world)
    body = {"name": "reboot", "params": {}, "idempotency_key": "k-2"}
    command_id = post(world, body).json()["command_id"]
    world.job.handle(result("d1-a", command_id), 10**13)
    r = post(world, body, wait=1)
    assert (r.status_code, r.json()["command_id"], r.json()["state"]) == (200, command_id, "SUCCEEDED")


def test_kafka_down_is_503_and_frees_the_idempotency_key(world):
    world.requests.mode = "down"
    r = post(world, {"name": "reboot", "params": {}, "idempotency_key": "k-3"})
    assert (r.status_code, r.json()["code"]) == (503, "kafka_unavailable")
    assert world.job.claims == {}


def test_no_answer_from_the_job_is_still_202(world, monkeypatch):
    from api.routes import commands

    monkeypatch.setattr(commands, "ACCEPT_WAIT_S", 0.1)
    world.requests.mode = "silent"
    r = post(world)
    assert (r.status_code, r.json()["state"]) == (202, None)


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_then_cancel_again_is_409(world):
    command_id = post(world).json()["command_id"]
    r = world.client.post(f"/v1/commands/{command_id}/cancel")
    assert (r.status_code, r.json()["state"]) == (200, "CANCELED"), r.text
    assert r.json()["history"][-1]["reason"] == "canceled by alice"
    r = world.client.post(f"/v1/commands/{command_id}/cancel")
    assert (r.status_code, r.json()["code"]) == (409, "not_cancelable")
    assert world.client.post("/v1/commands/nope/cancel").status_code == 404


# -- reads, roles, visibility ----------------------------------------------------------------

def test_device_commands_page_newest_first(world):
    ids = []
    for i in range(5):
        ids.append(post(world, {"name": "n", "params": {"i": i}}).json()["command_id"])
        # distinct creation times
        world.job.rows[ids[-1]]["created_at"] += i
    pages, token = [], None
    while True:
        r = world.client.get("/v1/devices/d1-a/commands", params={"limit": 2, **({"page_token": token} if token else {})})
        assert r.status_code == 200, r.text
        pages.append([c["command_id"] for c in r.json()["items"]])
        token = r.json()["next_page_token"]
        if not token:
            break
    assert [i for p in pages for i in p] == ids[::-1] and [len(p) for p in pages] == [2, 2, 1]
    r = world.client.get("/v1/devices/d1-a/commands", params={"page_token": "nope!"})
    assert r.status_code == 400


def test_a_viewer_reads_but_cannot_submit_or_cancel(world):
    command_id = post(world).json()["command_id"]
    world.principal = VIEWER
    assert world.client.get(f"/v1/commands/{command_id}").status_code == 200
    assert world.client.get("/v1/devices/d1-a/commands").status_code == 200
    assert post(world).status_code == 403
    assert world.client.post(f"/v1/commands/{command_id}/cancel").status_code == 403


def test_a_scoped_key_sees_only_its_devices_commands(world):
    world.principal = ADMIN
    command_id = post(world, device="d3-b").json()["command_id"]
    world.principal = SCOPED
    assert world.client.get(f"/v1/commands/{command_id}").status_code == 404
    assert world.client.post(f"/v1/commands/{command_id}/cancel").status_code == 404
    assert post(world, device="d3-b").status_code == 404
    world.principal = Principal("k6", "b-ops", Role.viewer, frozenset({"b"}))
    assert world.client.get(f"/v1/commands/{command_id}").status_code == 200


def test_unknown_device_and_command_are_404(world):
    assert post(world, device="nope").status_code == 404
    r = world.client.get("/v1/commands/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "command 'nope' not found"})


def test_openapi_lists_the_command_routes_and_their_errors():
    paths = create_app(Settings.from_env({})).openapi()["paths"]
    assert {"202", "400", "409", "413", "429", "503"} <= set(paths["/v1/devices/{device_id}/command"]["post"]["responses"])
    assert {"202", "404", "409"} <= set(paths["/v1/commands/{command_id}/cancel"]["post"]["responses"])
    assert "404" in paths["/v1/commands/{command_id}"]["get"]["responses"]


# -- the Kafka side on fake clients ----------------------------------------------------------

def _requests(producer, consumer):
    return CommandRequests(Settings.from_env({}), producer_factory=lambda: producer, consumer_factory=lambda: consumer)


def test_events_reach_the_watch_of_their_command():
    producer, consumer = FakeProducer(), FakeConsumer()
    requests = _requests(producer, consumer)
    record = submit_record(command_id="c1", device_id="d1", name="reboot", params={}, timeout_ms=1000, ttl_ms=0,
                           created_by="alice", created_at=1)

    async def run():
        import time

        with requests.watch("c1") as watch:
            await requests.send(record, watch)
            for to in ("QUEUED", "EXPIRED"):
                consumer.inbox.put(FakeMessage(json.dumps({"type": "transition", "command_id": "c1", "device_id": "d1",
                                                           "from": None, "to": to, "ts": 1, "reason": "r"}).encode()))
            consumer.inbox.put(FakeMessage(b"not json"))
            return await watch.final(time.monotonic() + 2)

    try:
        event = asyncio.run(run())
    finally:
        requests.close()
    assert event["to"] == "EXPIRED"
    [(topic, key, value)] = producer.records
    assert (topic, key, value) == ("fleet.command-requests", b"d1", record)


def test_a_record_kafka_did_not_take_is_kafka_unavailable():
    producer, consumer = FakeProducer(fail="Local: Message timed out"), FakeConsumer()
    requests = _requests(producer, consumer)

    async def run():
        with requests.watch("c1") as watch:
            await requests.send(submit_record(command_id="c1", device_id="d1", name="n", params={}, timeout_ms=1000,
                                              ttl_ms=0, created_by="a", created_at=1), watch)

    try:
        with pytest.raises(KafkaUnavailable, match="Message timed out"):
            asyncio.run(run())
    finally:
        requests.close()
