"""The OTA deployment routes in-process (app.dependency_overrides; no Cassandra, no Kafka, no job):
the real DeploymentStore and firmware catalog on fake sessions, and a fake OTA job that runs the
job's own rollout (fleet/ota/rollout.py) on the records the API produces and writes the rows the
job would. Then the Kafka side (api/ota_requests.py) on a fake confluent-kafka producer."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from api.deps import (
    get_audit,
    get_firmware_catalog,
    get_onboarding,
    get_ota_deployments,
    get_ota_requests,
    get_principal,
)
from api.ota_requests import KafkaUnavailable, OtaRequests
from fleet.config import Settings
from fleet.identity.devices import Device, DeviceStatus, RegistryError
from fleet.ota import deployments as dep
from fleet.ota import rollout as ro
from fleet.ota.catalog import CassandraCatalog
from fleet.ota.deployment_store import DeploymentStore
from tests.support.api import api_client
from tests.unit.test_api_firmware import FakeAudit
from tests.unit.test_api_shadow import OPERATOR_KEY, SCOPED, VIEWER, FakeProducer
from tests.unit.test_ota_catalog import FakeSession as FakeCatalogSession
from tests.unit.test_ota_catalog import record as firmware_record
from tests.unit.test_ota_deployment_store import FakeOtaSession

PATH = "/v1/ota/deployments"


def _now() -> int:
    return int(time.time() * 1000)


class FakeJob:
    """The OTA job's controller (the real rollout) on the API's records; writes the rows it would.
    A released device gets its execution row QUEUED (the execution operator's first write)."""

    def __init__(self, session: FakeOtaSession):
        self.session = session
        self.rollouts: dict[str, ro.Rollout] = {}
        self.members: dict[str, ro.MemoryMembers] = {}

    def handle(self, record: dict[str, Any]) -> None:
        dep_id, now = record["deployment_id"], _now()
        if record["op"] == "create":
            self.rollouts[dep_id] = ro.create(record, now)
            self.members[dep_id] = ro.MemoryMembers()
            return
        r, members = self.rollouts[dep_id], self.members[dep_id]
        if record["op"] == "targets":
            step = ro.add_targets(r, members, record["chunk"], record["devices"], now)
        elif record["op"] == "pause":
            step = ro.pause(r, record["by"], now)
        elif record["op"] == "resume":
            step = ro.resume(r, members, record["by"], now)
        else:
            step = ro.cancel(r, members, record["by"], now)
        self.rollouts[dep_id] = step.rollout
        if step.changed:
            self.session.job_writes_deployment(dep_id, step.rollout.state.value, ro.summary(step.rollout), now)
        for device_id, wave in step.assign:  # the execution operator's QUEUED, back through ota-events
            self.session.job_writes_execution(dep_id, device_id, "QUEUED", wave, now=now)
            self.event(dep_id, device_id, "QUEUED", 1)

    def event(self, dep_id: str, device_id: str, to: str, seq: int) -> None:
        """A device's execution moved (the execution operator's row and its ota-events record)."""
        now, r = _now(), self.rollouts[dep_id]
        wave = self.session.executions[(dep_id, device_id)]["wave"]
        self.session.job_writes_execution(dep_id, device_id, to, wave, now=now)
        step = ro.on_event(r, self.members[dep_id], {"device_id": device_id, "wave": wave, "to": to, "seq": seq}, now)
        self.rollouts[dep_id] = step.rollout
        self.session.job_writes_deployment(dep_id, step.rollout.state.value, ro.summary(step.rollout), now)


class FakeRequests(OtaRequests):
    """``send`` hands the records to the fake job. mode: up, down (Kafka takes nothing), targets_down
    (Kafka takes the create and the cancel, not the targets)."""

    def __init__(self, job: FakeJob):
        super().__init__(Settings.from_env({}))
        self.job = job
        self.mode = "up"
        self.sent: list[dict[str, Any]] = []

    async def send(self, records: list[dict[str, Any]], timeout: float = 10.0) -> None:
        if self.mode == "down" or (self.mode == "targets_down" and any(r["op"] == "targets" for r in records)):
            raise KafkaUnavailable("Kafka at 127.0.0.1:9092 is unavailable: connection refused")
        for record in records:
            self.sent.append(record)
            self.job.handle(record)


class Devices:
    """The registry as resolving reads it (get_many, list with the filter applied) and require."""

    def __init__(self, devices: list[Device]):
        self.devices = {d.device_id: d for d in devices}

    def require(self, device_id: str) -> Device:
        if device_id not in self.devices:
            raise RegistryError("not_found", f"device {device_id!r} not found")
        return self.devices[device_id]

    def get_many(self, ids: list[str]) -> dict[str, Device]:
        return {i: self.devices[i] for i in ids if i in self.devices}

    def list(self, flt: Any, limit: int, after: str | None = None) -> tuple[list[Device], str | None]:
        ids = [i for i in sorted(self.devices) if (after is None or i > after) and flt.matches(self.devices[i])]
        return [self.devices[i] for i in ids[:limit]], ids[limit - 1] if len(ids) > limit else None


def fleet() -> list[Device]:
    thermos = [Device(f"t{i}-a", device_type="thermo", groups=frozenset({"a"}), metadata={"site": str(i % 2)})
               for i in range(1, 9)]
    return [*thermos, Device("p1-a", device_type="pump", groups=frozenset({"a"})),
            Device("t9-b", device_type="thermo", groups=frozenset({"b"})),
            Device("off-a", status=DeviceStatus.disabled, device_type="thermo", groups=frozenset({"a"}))]


FIRMWARE = firmware_record("thermo", "2.0.0")


class World:
    def __init__(self) -> None:
        self.principal = OPERATOR_KEY
        self.audit = FakeAudit()
        self.session = FakeOtaSession()
        self.store = DeploymentStore(self.session)
        self.catalog = CassandraCatalog(FakeCatalogSession())
        self.catalog.create(FIRMWARE)
        self.job = FakeJob(self.session)
        self.requests = FakeRequests(self.job)
        self.onboarding = SimpleNamespace(devices=Devices(fleet()))


@pytest.fixture
def w():
    world = World()
    with api_client({get_principal: lambda: world.principal, get_audit: lambda: world.audit,
                     get_ota_deployments: lambda: world.store, get_firmware_catalog: lambda: world.catalog,
                     get_ota_requests: lambda: world.requests, get_onboarding: lambda: world.onboarding}) as client:
        world.client = client
        yield world


def body(target: dict[str, Any] | None = None, plan: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "spring", "firmware_id": FIRMWARE.firmware_id, "target": target or {"group": "a"}}
    if plan is not None:
        out["plan"] = plan
    return {**out, **kw}


def create(w: World, **kw: Any) -> Any:
    return w.client.post(PATH, json=body(**kw))


def test_create_is_201_pending_writes_the_rows_produces_the_records_and_is_audited(w: World) -> None:
    plan = {"waves": [{"size": "25%", "success_threshold_pct": 50}, {"size": "100%"}], "rate_per_minute": 100_000}
    r = create(w, plan=plan)
    assert r.status_code == 201, r.text
    d = r.json()
    dep_id = d["deployment_id"]
    assert r.headers["Location"] == f"{PATH}/{dep_id}"
    assert (d["state"], d["final"], d["target_count"], d["version"], d["device_type"], d["created_by"]) == (
        "PENDING", False, 8, "2.0.0", "thermo", "alice")
    assert [(x["size"], x["released"]) for x in d["waves"]] == [(2, 0), (6, 0)]
    assert d["plan"] == dep.validate_plan(plan) and d["counts"]["QUEUED"] == 0
    create_record, targets = w.requests.sent
    expected_order = dep.rollout_order(dep_id, dep.target(group="a"), [f"t{i}-a" for i in range(1, 9)])
    assert create_record["op"] == "create" and create_record["target_count"] == 8 and create_record["chunks"] == 1
    assert create_record["firmware"] == dep.firmware_json(FIRMWARE)
    assert targets == {"op": "targets", "deployment_id": dep_id, "chunk": 0, "devices": expected_order}
    assert w.session.targets == {(dep_id, 0): expected_order}
    assert sorted(dev for dev, _ in w.session.by_device) == sorted(expected_order)
    (action, target, outcome, detail), = w.audit.records
    assert (action, target, outcome) == ("POST /v1/ota/deployments", dep_id, "success")
    assert detail["target"] == {"group": "a"} and detail["target_count"] == 8 and detail["version"] == "2.0.0"
    # The job started it: GET shows its summary (the first wave released at once at this rate).
    got = w.client.get(f"{PATH}/{dep_id}").json()
    assert got["state"] == "RUNNING" and got["released"] == 2 and got["counts"]["QUEUED"] == 2
    assert got["waves"][0]["released"] == 2 and got["history"][-1]["to"] == "RUNNING"


def test_a_wave_that_meets_its_threshold_starts_the_next_as_get_shows(w: World) -> None:
    plan = {"waves": [{"size": 2}, {"size": "100%"}], "rate_per_minute": 100_000}
    dep_id = create(w, target={"device_ids": ["t1-a", "t2-a", "t3-a"]}, plan=plan).json()["deployment_id"]
    w.job.event(dep_id, "t1-a", "SUCCEEDED", 2)
    w.job.event(dep_id, "t2-a", "FAILED", 2)
    got = w.client.get(f"{PATH}/{dep_id}").json()
    assert (got["state"], got["wave"]) == ("ABORTED", 0)  # wave 1 ended at 50%, below its 100%
    assert got["waves"][0]["succeeded"] == 1 and got["waves"][0]["failed"] == 1 and got["final"] is True
    devices = w.client.get(f"{PATH}/{dep_id}/devices").json()
    assert [(x["device_id"], x["state"], x["final"]) for x in devices["items"]] == [
        ("t1-a", "SUCCEEDED", True), ("t2-a", "FAILED", True)]


@pytest.mark.parametrize("target, detail", [
    ({"device_ids": ["t1-a", "p1-a"]}, "target.device_ids: 'p1-a' is not of the firmware's device type 'thermo'"),
    ({"device_ids": ["t1-a", "ghost"]}, "target.device_ids: device 'ghost' not found"),
    ({"device_ids": ["off-a"]}, "'off-a' is not active ('off-a' is disabled)"),
    ({"group": "nobody"}, "target selects no device"),
    ({"filter": {"device_type": "pump"}}, "target.filter.device_type 'pump' is not the firmware's device type"),
    ({"filter": {"status": "revoked"}}, "only active devices can take a deployment"),
    ({"filter": {}}, "target.filter needs at least one of"),
    ({"group": "a", "device_ids": ["t1-a"]}, "target needs exactly one of group, filter, device_ids"),
])
def test_bad_targets_are_400_and_nothing_is_written_or_sent(w: World, target: dict[str, Any], detail: str) -> None:
    r = create(w, target=target)
    assert r.status_code == 400 and detail in r.json()["detail"], r.text
    assert w.session.deployments == {} and w.requests.sent == []
    (_, _, outcome, _), = w.audit.records
    assert outcome == "rejected"


def test_a_filter_selects_active_devices_of_the_firmwares_type(w: World) -> None:
    r = create(w, target={"filter": {"metadata": {"site": "1"}}})
    assert r.status_code == 201 and r.json()["target_count"] == 4  # t1, t3, t5, t7 (not p1, off)
    r = create(w, target={"filter": {"status": "active", "device_type": "thermo"}, "device_ids": None})
    assert r.status_code == 409  # those four are in the first one now


@pytest.mark.parametrize("kw, status, detail", [
    ({"plan": {"waves": [{"size": "0%"}]}}, 400, "plan.waves[0].size must be a percent"),
    ({"plan": {"device": {"max_boots": 99}}}, 400, "plan.device.max_boots must be between 1 and 20"),
    ({"plan": {"rate_per_minute": 0}}, 400, "plan.rate_per_minute must be between 1 and 100000"),
    ({"plan": {"waves": [{"size": 1, "failure_threshold": {"pct": 0}}]}}, 400, "failure_threshold.pct must be above 0"),
    ({"name": "  "}, 400, "name must not be empty"),
    ({"name": "x" * 101}, 400, "name is longer than 100 characters"),
    ({"firmware_id": "nope"}, 400, "firmware_id 'nope': no such firmware"),
    ({"plan": {"waves": "all"}}, 422, None),
    ({"plan": {"speed": 1}}, 422, None),
    ({"target": {"device_ids": [f"t{i}" for i in range(10_001)]}}, 400, "more than 10000; use a group or a filter"),
])
def test_bad_requests(w: World, kw: dict[str, Any], status: int, detail: str | None) -> None:
    r = create(w, **kw)
    assert r.status_code == status, r.text
    if detail is not None:
        assert detail in r.json()["detail"]
    assert w.requests.sent == []


def test_too_many_targets_is_400(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dep, "MAX_TARGETS", 5)
    r = create(w)
    assert r.status_code == 400 and "target selects more than 5 devices" in r.json()["detail"]


def test_a_device_in_another_active_deployment_is_409_naming_it(w: World) -> None:
    first = create(w, target={"device_ids": ["t1-a", "t2-a"]}, name="first", plan={"rate_per_minute": 100_000}).json()
    r = create(w, target={"device_ids": ["t2-a", "t3-a"]}, name="second")
    assert r.status_code == 409, r.text
    assert f"in deployment '{first['deployment_id']}' ('first', RUNNING), which is not final: 't2-a'" in r.json()["detail"]
    assert len(w.session.deployments) == 1 and len(w.requests.sent) == 2
    # Once the device's execution there is final, it is free (the deployment still runs for t1-a).
    w.job.event(first["deployment_id"], "t2-a", "SUCCEEDED", 2)
    assert create(w, target={"device_ids": ["t2-a", "t3-a"]}, name="second").status_code == 201


def test_a_canceled_deployment_holds_no_device(w: World) -> None:
    first = create(w, target={"device_ids": ["t1-a"]}).json()["deployment_id"]
    assert w.client.post(f"{PATH}/{first}/cancel").status_code == 202
    assert create(w, target={"device_ids": ["t1-a"]}).status_code == 201


def test_kafka_down_is_503_and_the_deployment_reads_canceled_holding_nothing(w: World) -> None:
    w.requests.mode = "down"
    r = create(w)
    assert r.status_code == 503 and "was not started (it reads CANCELED); create it again" in r.json()["detail"]
    (dep_id,) = w.session.deployments
    got = w.client.get(f"{PATH}/{dep_id}").json()
    assert got["state"] == "CANCELED" and got["reason"].startswith("not started: Kafka did not take its records")
    w.requests.mode = "up"
    assert create(w).status_code == 201


def test_targets_not_taken_cancel_the_deployment_the_job_got(w: World) -> None:
    w.requests.mode = "targets_down"
    assert create(w).status_code == 503
    (dep_id,) = w.session.deployments
    assert [r["op"] for r in w.requests.sent] == ["create", "cancel"]
    assert w.job.rollouts[dep_id].state is ro.DeployState.CANCELED
    assert w.client.get(f"{PATH}/{dep_id}").json()["state"] == "CANCELED"


def test_pause_resume_cancel(w: World) -> None:
    dep_id = create(w, plan={"rate_per_minute": 1}).json()["deployment_id"]
    r = w.client.post(f"{PATH}/{dep_id}/pause")
    assert r.status_code == 202 and r.json()["state"] == "RUNNING"  # as it was; the job's answer follows
    op = w.requests.sent[-1]
    assert (op["op"], op["deployment_id"], op["by"]) == ("pause", dep_id, "alice") and op["request_id"]
    got = w.client.get(f"{PATH}/{dep_id}").json()
    assert got["state"] == "PAUSED" and got["reason"] == "paused by alice"
    assert w.client.post(f"{PATH}/{dep_id}/resume").status_code == 202
    assert w.client.get(f"{PATH}/{dep_id}").json()["state"] == "RUNNING"
    assert w.client.post(f"{PATH}/{dep_id}/cancel").status_code == 202
    assert w.client.get(f"{PATH}/{dep_id}").json()["state"] == "CANCELED"
    for op_name in ("pause", "resume", "cancel"):
        r = w.client.post(f"{PATH}/{dep_id}/{op_name}")
        assert r.status_code == 409 and f"is CANCELED, which is final: there is nothing to {op_name}" in r.json()["detail"]
    assert [(a, t, o) for a, t, o, _ in w.audit.records[1:]] == [
        ("POST /v1/ota/deployments/{deployment_id}/pause", dep_id, "success"),
        ("POST /v1/ota/deployments/{deployment_id}/resume", dep_id, "success"),
        ("POST /v1/ota/deployments/{deployment_id}/cancel", dep_id, "success"),
        *[(f"POST /v1/ota/deployments/{{deployment_id}}/{o}", dep_id, "rejected") for o in ("pause", "resume", "cancel")]]


def test_an_operation_kafka_does_not_take_is_503(w: World) -> None:
    dep_id = create(w).json()["deployment_id"]
    w.requests.mode = "down"
    r = w.client.post(f"{PATH}/{dep_id}/pause")
    assert r.status_code == 503 and "the pause was not asked" in r.json()["detail"]


def test_an_unknown_deployment_is_404(w: World) -> None:
    assert w.client.get(f"{PATH}/nope").status_code == 404
    assert w.client.get(f"{PATH}/nope/devices").status_code == 404
    r = w.client.post(f"{PATH}/nope/cancel")
    assert r.status_code == 404 and r.json()["detail"] == "deployment 'nope' not found"


def test_list_pages_and_filters_by_state(w: World) -> None:
    ids = [create(w, target={"device_ids": [f"t{i}-a"]}).json()["deployment_id"] for i in range(1, 4)]
    w.client.post(f"{PATH}/{ids[0]}/cancel")
    first = w.client.get(PATH, params={"limit": 2}).json()
    second = w.client.get(PATH, params={"limit": 2, "page_token": first["next_page_token"]}).json()
    assert sorted(d["deployment_id"] for d in first["items"] + second["items"]) == sorted(ids)
    assert second["next_page_token"] is None
    canceled = w.client.get(PATH, params={"state": "CANCELED"}).json()["items"]
    assert [d["deployment_id"] for d in canceled] == [ids[0]]
    assert w.client.get(PATH, params={"state": "DONE"}).status_code == 400
    assert w.client.get(PATH, params={"page_token": "junk"}).status_code == 400


def test_devices_of_a_deployment_by_state_and_a_devices_ota(w: World) -> None:
    dep_id = create(w, target={"device_ids": ["t1-a", "t2-a", "t3-a"]},
                    plan={"rate_per_minute": 100_000}).json()["deployment_id"]
    w.job.event(dep_id, "t2-a", "DOWNLOADING", 2)
    url = f"{PATH}/{dep_id}/devices"
    assert [x["device_id"] for x in w.client.get(url, params={"state": "QUEUED"}).json()["items"]] == ["t1-a", "t3-a"]
    page = w.client.get(url, params={"limit": 2}).json()
    assert [x["device_id"] for x in page["items"]] == ["t1-a", "t2-a"]
    rest = w.client.get(url, params={"limit": 2, "page_token": page["next_page_token"]}).json()
    assert [x["device_id"] for x in rest["items"]] == ["t3-a"] and rest["next_page_token"] is None
    assert w.client.get(url, params={"state": "DONE"}).status_code == 400
    mine = w.client.get("/v1/devices/t2-a/ota").json()
    assert mine["device_id"] == "t2-a"
    assert [(x["deployment_id"], x["state"], x["wave"], x["attempt"]) for x in mine["items"]] == [
        (dep_id, "DOWNLOADING", 0, 1)]
    assert w.client.get("/v1/devices/ghost/ota").status_code == 404


def test_roles_and_scopes(w: World) -> None:
    dep_id = create(w).json()["deployment_id"]
    w.principal = VIEWER
    assert create(w).status_code == 403
    assert w.client.post(f"{PATH}/{dep_id}/pause").status_code == 403
    assert w.client.get(f"{PATH}/{dep_id}").status_code == 200
    w.principal = SCOPED  # an operator scoped to group a
    r = create(w)
    assert r.status_code == 403 and "not scoped to groups" in r.json()["detail"]
    assert w.client.get(PATH).status_code == 403
    assert w.client.get(f"{PATH}/{dep_id}").status_code == 403
    assert w.client.get("/v1/devices/t1-a/ota").status_code == 200
    assert w.client.get("/v1/devices/t9-b/ota").status_code == 404  # outside its groups


def test_openapi_documents_the_error_responses(w: World) -> None:
    paths = w.client.get("/openapi.json").json()["paths"]
    assert {"400", "401", "403", "409", "413", "422", "503"} <= set(paths[PATH]["post"]["responses"])
    assert {"202", "403", "404", "409", "503"} <= set(paths[PATH + "/{deployment_id}/cancel"]["post"]["responses"])
    assert {"400", "403", "404"} <= set(paths[PATH + "/{deployment_id}/devices"]["get"]["responses"])
    assert "404" in paths["/v1/devices/{device_id}/ota"]["get"]["responses"]


# -- the Kafka side ------------------------------------------------------------------------------

class MetadataProducer(FakeProducer):
    def __init__(self, fail: str | None = None, reachable: bool = True):
        super().__init__(fail)
        self.reachable = reachable

    def list_topics(self, topic: str, timeout: float) -> Any:
        if not self.reachable:
            raise RuntimeError("KafkaError{code=_TRANSPORT,str='Failed to get metadata'}")
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})


def run(requests: OtaRequests, records: list[dict[str, Any]], timeout: float = 2.0) -> None:
    async def go() -> None:
        try:
            await requests.send(records, timeout=timeout)
        finally:
            requests.close()

    asyncio.run(go())


def test_send_produces_keyed_by_deployment_and_waits_for_every_delivery() -> None:
    producer = MetadataProducer()
    requests = OtaRequests(Settings.from_env({}), producer_factory=lambda: producer)
    records = [{"op": "create", "deployment_id": "dep1"}, {"op": "targets", "deployment_id": "dep1", "chunk": 0}]
    run(requests, records)
    assert producer.records == [(Settings.from_env({}).topic("ota-requests"), b"dep1", r) for r in records]
    assert requests._pending == {}


def test_send_fails_when_kafka_refuses_or_is_unreachable() -> None:
    failing = MetadataProducer(fail="KafkaError{code=_MSG_TIMED_OUT}")
    with pytest.raises(KafkaUnavailable, match="did not take 1 of 1 records"):
        run(OtaRequests(Settings.from_env({}), producer_factory=lambda: failing), [{"deployment_id": "d"}])
    away = MetadataProducer(reachable=False)
    with pytest.raises(KafkaUnavailable, match="Failed to get metadata"):
        run(OtaRequests(Settings.from_env({}), producer_factory=lambda: away), [{"deployment_id": "d"}], timeout=0.5)


def test_records_are_json() -> None:
    producer = MetadataProducer()
    run(OtaRequests(Settings.from_env({}), producer_factory=lambda: producer),
        [dep.op_record("cancel", "dep1", by="alice", ts=1, request_id="r")])
    assert json.dumps(producer.records[0][2]) == json.dumps(
        {"op": "cancel", "deployment_id": "dep1", "by": "alice", "ts": 1, "request_id": "r"})
