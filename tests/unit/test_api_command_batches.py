"""Bulk commands' cancellation in-process (app.dependency_overrides; no Cassandra, no Kafka): the
route, the fan-out (api/command_batches.py) and the commands job's own logic on in-memory state,
as tests/unit/test_api_commands.py runs single commands. The batch store is a dict; the member
rows are the ones the job writes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from api import command_batches as runner
from api.deps import (
    get_audit,
    get_batches,
    get_command_requests,
    get_commands,
    get_onboarding,
    get_principal,
)
from api.main import create_app
from fleet.access.auth import Principal, Role
from fleet.commands import batches
from fleet.commands.batch_store import Batch, Member
from fleet.config import Settings
from jobs.commands import logic
from tests.support.api import FakeDevices, api_client
from tests.unit.test_api_commands import FakeCommands, FakeJob, FakeRequests, online, result
from tests.unit.test_api_shadow import ADMIN, OPERATOR_KEY, SCOPED, VIEWER, FakeOnboarding


class BatchJob(FakeJob):
    """The fake commands job, also keeping the batch member rows it writes (latest write_ts wins)."""

    def __init__(self):
        super().__init__()
        self.members: dict[tuple[str, str], dict] = {}

    def keep(self, out: logic.Output) -> None:
        super().keep(out)
        if out.kind == logic.BATCH_MEMBER:
            key = (out.value["batch_id"], out.value["device_id"])
            if key not in self.members or self.members[key]["write_ts"] <= out.value["write_ts"]:
                self.members[key] = out.value


class BatchRequests(FakeRequests):
    """``send_many`` too: mode answer (the job takes each record at once), lag (records wait in
    ``held`` until ``release``), down (Kafka refuses every record)."""

    def __init__(self, job: BatchJob):
        super().__init__(job)
        self.held: list[dict] = []
        self.on_send_many = None  # called after each send_many (a test's hook)

    async def send_many(self, records, timeout=5.0):
        if self.mode == "down":
            return ["Local: Broker transport failure"] * len(records)
        self.job.records += records
        if self.mode == "lag":
            self.held += records
        else:
            for record in records:
                for event in self.job.handle(json.dumps(record)):
                    self._on_reply(event)
        if self.on_send_many is not None:
            self.on_send_many(records)
        return [None] * len(records)

    def release(self):
        held, self.held = self.held, []
        for record in held:
            self.job.handle(json.dumps(record))


class FakeBatches:
    """BatchStore on dicts: the batch rows here, the member rows the job's."""

    def __init__(self, job: BatchJob):
        self.job = job
        self.rows: dict[str, Batch] = {}

    def create(self, b):
        self.rows[b.batch_id] = b

    def progress(self, batch_id, *, state, error, targeted, submitted, skipped, skipped_sample, now):
        self.rows[batch_id] = replace(self.rows[batch_id], state=state, error=error, targeted=targeted,
                                      submitted=submitted, skipped=skipped, skipped_sample=tuple(skipped_sample),
                                      heartbeat_at=now)

    def get(self, batch_id):
        return self.rows.get(batch_id)

    def _rows(self, batch_id):
        return [m for (b, _), m in sorted(self.job.members.items()) if b == batch_id]

    def member_states(self, batch_id):
        return [m["state"] for m in self._rows(batch_id)]

    def members(self, batch_id, *, limit, after=None):
        return [Member(m["device_id"], m["command_id"], m["state"], m["reason"], m["updated_at"])
                for m in self._rows(batch_id) if m["device_id"] > (after or "")][:limit]

    def member_refs(self, batch_id):
        return [Member(m["device_id"], m["command_id"], m["state"], "", 0) for m in self._rows(batch_id)]

    def cancel(self, batch_id, *, by, now):
        if self.rows[batch_id].canceled_at is not None:
            return False
        self.rows[batch_id] = replace(self.rows[batch_id], canceled_at=now, canceled_by=by)
        return True

    def canceled(self, batch_id):
        return self.rows[batch_id].canceled_at is not None


class Audit:
    """Keeps what the audit middleware records."""

    def __init__(self):
        self.records: list[tuple] = []

    def __call__(self):
        return self

    def record_async(self, *args):
        self.records.append(args)

        class Done:
            def add_callbacks(self, ok, failed):
                ok(None)

        return Done()


class World:
    def __init__(self):
        self.principal = OPERATOR_KEY
        self.job = BatchJob()
        self.requests = BatchRequests(self.job)
        self.commands = FakeCommands(self.job)
        self.onboarding = FakeOnboarding()
        self.store = FakeBatches(self.job)
        self.audit = Audit()


@pytest.fixture
def world():
    w = World()
    with api_client({get_principal: lambda: w.principal, get_onboarding: lambda: w.onboarding, get_audit: w.audit,
                     get_commands: lambda: w.commands, get_command_requests: lambda: w.requests,
                     get_batches: lambda: w.store}) as w.client:
        yield w


def create(w, device_ids=("d1-a", "d2-a", "d3-b")):
    r = w.client.post("/v1/command-batches", json={"name": "reboot", "params": {}, "timeout_s": 5, "ttl_s": 600,
                                                   "target": {"device_ids": list(device_ids)}})
    assert r.status_code == 202, r.text
    return r.json()["batch_id"]


def until(w, batch_id, check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        b = w.client.get(f"/v1/command-batches/{batch_id}").json()
        if check(b) or time.monotonic() > deadline:
            return b
        time.sleep(0.02)


def cancel(w, batch_id):
    return w.client.post(f"/v1/command-batches/{batch_id}/cancel")


def test_cancel_cancels_every_member_not_final_and_keeps_the_final_ones(world):
    online(world, "d1-a")
    batch_id = create(world)
    b = until(world, batch_id, lambda b: b["state"] == "submitted")
    assert (b["counts"]["SENT"], b["counts"]["QUEUED"], b["canceled_at"], b["canceled_by"]) == (1, 2, None, None)
    world.job.handle(result("d1-a", batches.member_command_id(batch_id, "d1-a")), 10**13)
    r = cancel(world, batch_id)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["canceled_by"], body["done"]) == ("canceled", "alice", True)
    assert (body["counts"]["SUCCEEDED"], body["counts"]["CANCELED"], body["final"], body["pending"]) == (1, 2, 3, 0)
    assert body["canceled_at"] >= body["created_at"]
    cancels = [r for r in world.job.records if r["op"] == "cancel"]
    assert sorted(r["device_id"] for r in cancels) == ["d2-a", "d3-b"]  # the final one was not asked
    one = world.client.get(f"/v1/commands/{batches.member_command_id(batch_id, 'd2-a')}").json()
    assert (one["state"], one["history"][-1]["reason"]) == ("CANCELED", "canceled by alice")
    assert world.client.get(f"/v1/command-batches/{batch_id}").json() == body  # GET shows the same
    members = world.client.get(f"/v1/command-batches/{batch_id}/commands", params={"state": "CANCELED"}).json()
    assert [m["device_id"] for m in members["items"]] == ["d2-a", "d3-b"]


def test_cancelling_again_is_200_with_the_same_batch(world):
    batch_id = create(world)
    until(world, batch_id, lambda b: b["counts"]["QUEUED"] == 3)
    first = cancel(world, batch_id)
    world.principal = ADMIN
    again = cancel(world, batch_id)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json() and again.json()["canceled_by"] == "alice"  # the first cancel's
    assert len([r for r in world.job.records if r["op"] == "cancel"]) == 3  # nothing left to cancel


def test_cancel_is_audited_like_the_creation(world):
    batch_id = create(world)
    until(world, batch_id, lambda b: b["state"] == "submitted")
    cancel(world, batch_id)
    cancel(world, batch_id)
    actions = [(a[1], a[2], a[3], a[4]) for a in world.audit.records]
    assert actions[0][:3] == ("POST /v1/command-batches", batch_id, "success")
    assert actions[1:] == [
        ("POST /v1/command-batches/{batch_id}/cancel", batch_id, "success",
         {"name": "reboot", "first_cancel": True, "cancellations_sent": 3, "http_status": 200}),
        ("POST /v1/command-batches/{batch_id}/cancel", batch_id, "success",
         {"name": "reboot", "first_cancel": False, "cancellations_sent": 0, "http_status": 200})]


def test_cancel_needs_the_operator_role_and_a_visible_batch(world):
    batch_id = create(world)
    until(world, batch_id, lambda b: b["state"] == "submitted")
    world.principal = VIEWER
    assert cancel(world, batch_id).status_code == 403
    world.principal = SCOPED  # made by an unscoped key: a scoped one does not see it
    assert cancel(world, batch_id).status_code == 404
    world.principal = OPERATOR_KEY
    r = cancel(world, "nope")
    assert (r.status_code, r.json()) == (404, {"detail": "command batch 'nope' not found"})
    assert world.store.rows[batch_id].canceled_at is None
    assert [r for r in world.job.records if r["op"] == "cancel"] == []


def test_kafka_down_is_503_the_batch_stays_canceled_and_a_retry_finishes(world, monkeypatch):
    monkeypatch.setattr(runner, "SUBMIT_ATTEMPTS", 1)
    batch_id = create(world)
    until(world, batch_id, lambda b: b["counts"]["QUEUED"] == 3)
    world.requests.mode = "down"
    r = cancel(world, batch_id)
    assert (r.status_code, r.json()["code"]) == (503, "kafka_unavailable"), r.text
    assert world.client.get(f"/v1/command-batches/{batch_id}").json()["state"] == "canceled"
    world.requests.mode = "answer"
    r = cancel(world, batch_id)
    assert (r.status_code, r.json()["counts"]["CANCELED"], r.json()["done"]) == (200, 3, True)


def test_openapi_lists_the_cancel_route():
    paths = create_app(Settings.from_env({})).openapi()["paths"]
    route = paths["/v1/command-batches/{batch_id}/cancel"]["post"]
    assert {"200", "403", "404", "503"} <= set(route["responses"])
    assert "Idempotent" in route["description"]
    batch_out = create_app(Settings.from_env({})).openapi()["components"]["schemas"]["CommandBatchOut"]
    assert {"canceled_at", "canceled_by"} <= set(batch_out["properties"])


# -- the fan-out and the sweep, without the route ------------------------------------------------

def _batch(batch_id="b1"):
    return Batch(batch_id, "reboot", {}, 5000, 600_000, {}, None, "alice", runner._now_ms(),
                 heartbeat_at=runner._now_ms())


def test_the_fan_out_stops_at_the_next_chunk_and_never_submits_the_rest(monkeypatch):
    monkeypatch.setattr(runner, "CHUNK", 2)
    job = BatchJob()
    requests, store = BatchRequests(job), FakeBatches(job)
    ids = [f"d{i}-a" for i in range(5)]
    batch = _batch()
    store.create(batch)
    # The cancellation lands while the first chunk is out.
    requests.on_send_many = lambda records: store.cancel(batch.batch_id, by="bob", now=runner._now_ms())

    async def run():
        await runner.fan_out(batch, batches.target(device_ids=ids), registry=FakeDevices(ids), store=store,
                             requests=requests, visible_groups=None)
        return await runner.cancel_members(batch.batch_id, store=store, requests=requests, by="bob")

    sent = asyncio.run(run())
    row = store.get(batch.batch_id)
    assert (row.state, row.targeted, row.submitted) == ("canceled", 5, 2)
    assert [r["device_id"] for r in job.records if r["op"] == "submit"] == ids[:2]
    assert sent == 2 and store.member_states(batch.batch_id) == ["CANCELED", "CANCELED"]
    p = batches.progress(state=row.state, targeted=5, submitted=2, skipped=0,
                         member_states=store.member_states(batch.batch_id), heartbeat_at=row.heartbeat_at,
                         now=runner._now_ms(), canceled_at=row.canceled_at)
    assert (p.state, p.done) == ("canceled", True)


def test_a_cancel_before_the_first_chunk_submits_nothing():
    job = BatchJob()
    requests, store = BatchRequests(job), FakeBatches(job)
    batch = _batch()
    store.create(batch)
    store.cancel(batch.batch_id, by="bob", now=runner._now_ms())
    asyncio.run(runner.fan_out(batch, batches.target(device_ids=["d1-a"]), registry=FakeDevices(["d1-a"]),
                               store=store, requests=requests, visible_groups=None))
    assert (store.get(batch.batch_id).state, store.get(batch.batch_id).submitted, job.records) == ("canceled", 0, [])


def test_the_sweep_waits_for_members_the_job_has_not_written_yet(monkeypatch):
    monkeypatch.setattr(runner, "SWEEP_PAUSE_S", 0.02)
    job = BatchJob()
    requests, store = BatchRequests(job), FakeBatches(job)
    ids = ["d1-a", "d2-a"]
    batch = _batch()
    store.create(batch)
    requests.mode = "lag"  # Kafka took the submissions, the job has not read them yet

    async def run():
        await runner.fan_out(batch, batches.target(device_ids=ids), registry=FakeDevices(ids), store=store,
                             requests=requests, visible_groups=None)
        store.cancel(batch.batch_id, by="bob", now=runner._now_ms())
        sweep = asyncio.create_task(runner.cancel_members(batch.batch_id, store=store, requests=requests, by="bob"))
        await asyncio.sleep(0.1)
        assert not sweep.done() and store.member_states(batch.batch_id) == []
        requests.release()  # the job writes the members (QUEUED)
        requests.mode = "answer"
        return await sweep

    assert asyncio.run(run()) == 2
    assert store.member_states(batch.batch_id) == ["CANCELED", "CANCELED"]


def test_the_sweep_gives_up_after_settle_s():
    job = BatchJob()
    requests, store = BatchRequests(job), FakeBatches(job)
    store.create(replace(_batch(), state=batches.SUBMITTED, submitted=3))  # rows the job never writes

    started = time.monotonic()
    assert asyncio.run(runner.cancel_members("b1", store=store, requests=requests, by="bob", settle_s=0.2)) == 0
    assert 0.2 <= time.monotonic() - started < 2


def test_a_scoped_key_cancels_the_batches_it_sees(world):
    world.principal = SCOPED
    batch_id = create(world, ["d1-a", "d2-a"])
    until(world, batch_id, lambda b: b["state"] == "submitted")
    world.principal = Principal("k7", "a-ops", Role.operator, frozenset({"a", "b"}))
    assert cancel(world, batch_id).json()["counts"]["CANCELED"] == 2
