"""fleet.ota.deployments: the plan's rules and defaults, name and target rules, resolving a target,
the conflict rule, the ota-requests records (and that the job's rollout takes them), what GET shows."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleet.identity.devices import Device, DeviceStatus
from fleet.ota import deployments as dep
from fleet.ota import rollout as ro
from fleet.ota.catalog import FirmwareRecord
from fleet.ota.errors import DeploymentError
from fleet.ota.rollout import MemoryMembers

T0 = 1_717_156_800_000
FIRMWARE = FirmwareRecord("fw1", "thermo", "2.0.0", "a" * 64, 1234, b"s" * 64, "platformkey00001", "", T0, "alice")


def bad(fn, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(DeploymentError) as err:
        fn(*args, **kwargs)
    assert err.value.code == "bad_request"
    return str(err.value)


# -- the plan --------------------------------------------------------------------------------------

def test_the_default_plan_is_the_contracts() -> None:
    assert dep.validate_plan(None) == {
        "waves": [{"size": "100%", "success_threshold_pct": 100.0, "approval": False, "failure_threshold": None}],
        "rate_per_minute": 60.0, "rate_increase": None,
        "device": {"progress_timeout_ms": 600_000, "timeout_ms": 3_600_000, "health_window_ms": 60_000,
                   "max_boots": 2, "retries": {"download": 2, "verify": 0, "install": 1}},
        "rollback_on_abort": False}
    assert dep.validate_plan({}) == dep.validate_plan(None)


def test_a_full_plan_is_kept_and_normalised() -> None:
    raw = {"waves": [{"size": "10%", "success_threshold_pct": 90, "approval": True,
                      "failure_threshold": {"pct": 20, "min_sample": 5}},
                     {"size": 50, "failure_threshold": {"count": 3}},
                     {"size": "100.0%"}],
           "rate_per_minute": 120, "rate_increase": {"factor": 2, "every_successes": 10},
           "device": {"timeout_ms": 7_200_000, "retries": {"download": 5}}, "rollback_on_abort": True}
    plan = dep.validate_plan(copy.deepcopy(raw))
    assert plan["waves"] == [
        {"size": "10%", "success_threshold_pct": 90.0, "approval": True,
         "failure_threshold": {"count": None, "pct": 20.0, "min_sample": 5}},
        {"size": 50, "success_threshold_pct": 100.0, "approval": False,
         "failure_threshold": {"count": 3, "pct": None, "min_sample": 1}},
        {"size": "100%", "success_threshold_pct": 100.0, "approval": False, "failure_threshold": None}]
    assert plan["rate_per_minute"] == 120.0 and plan["rate_increase"] == {"factor": 2.0, "every_successes": 10}
    assert plan["device"]["timeout_ms"] == 7_200_000 and plan["device"]["retries"] == {
        "download": 5, "verify": 0, "install": 1}
    assert plan["rollback_on_abort"] is True
    assert dep.validate_plan(plan) == plan  # idempotent: what the API stored validates again


@pytest.mark.parametrize("plan, field", [
    ([], "plan must be an object"),
    ({"wave": []}, "plan.wave is not a field of plan"),
    ({"waves": []}, "plan.waves must be a list of 1 to 20"),
    ({"waves": [{"size": 1}] * 21}, "plan.waves must be a list of 1 to 20"),
    ({"waves": [{}]}, "plan.waves[0].size is required"),
    ({"waves": [{"size": "0%"}]}, "plan.waves[0].size must be a percent"),
    ({"waves": [{"size": "101%"}]}, "plan.waves[0].size must be a percent"),
    ({"waves": [{"size": "ten%"}]}, "plan.waves[0].size must be a percent"),
    ({"waves": [{"size": "10"}]}, "plan.waves[0].size must be a percent"),
    ({"waves": [{"size": 1}, {"size": 0}]}, "plan.waves[1].size must be between 1 and 100000"),
    ({"waves": [{"size": 2.5}]}, "plan.waves[0].size must be a whole number"),
    ({"waves": [{"size": True}]}, "plan.waves[0].size must be a whole number"),
    ({"waves": [{"size": 1, "success_threshold_pct": 101}]}, "plan.waves[0].success_threshold_pct must be between 0"),
    ({"waves": [{"size": 1, "success_threshold_pct": -1}]}, "plan.waves[0].success_threshold_pct"),
    ({"waves": [{"size": 1, "approval": "yes"}]}, "plan.waves[0].approval must be true or false"),
    ({"waves": [{"size": 1, "failure_threshold": {}}]}, "plan.waves[0].failure_threshold needs a count or a pct"),
    ({"waves": [{"size": 1, "failure_threshold": {"pct": 0}}]}, "plan.waves[0].failure_threshold.pct must be above 0"),
    ({"waves": [{"size": 1, "failure_threshold": {"pct": 100.5}}]}, "failure_threshold.pct must be above 0 and at most"),
    ({"waves": [{"size": 1, "failure_threshold": {"count": 0}}]}, "plan.waves[0].failure_threshold.count must be"),
    ({"waves": [{"size": 1, "failure_threshold": {"pct": 5, "min_sample": 0}}]}, "failure_threshold.min_sample"),
    ({"waves": [{"size": 1, "failure_threshold": {"pct": 5, "sample": 3}}]}, "failure_threshold.sample is not a field"),
    ({"rate_per_minute": 0}, "plan.rate_per_minute must be between 1 and 100000"),
    ({"rate_per_minute": 100_001}, "plan.rate_per_minute must be between 1 and 100000"),
    ({"rate_per_minute": "fast"}, "plan.rate_per_minute must be a number"),
    ({"rate_per_minute": float("nan")}, "plan.rate_per_minute must be a number"),
    ({"rate_increase": {"factor": 2}}, "plan.rate_increase.every_successes is required"),
    ({"rate_increase": {"factor": 1, "every_successes": 5}}, "plan.rate_increase.factor must be above 1"),
    ({"rate_increase": {"factor": 11, "every_successes": 5}}, "plan.rate_increase.factor must be above 1 and at most 10"),
    ({"rate_increase": {"factor": 2, "every_successes": 0}}, "plan.rate_increase.every_successes must be between 1"),
    ({"device": {"timeout_ms": 999}}, "plan.device.timeout_ms must be between 1000"),
    ({"device": {"progress_timeout_ms": 8 * 86_400_000, "timeout_ms": 9 * 86_400_000}},
     "plan.device.progress_timeout_ms must be between 1000 and 604800000"),
    ({"device": {"health_window_ms": -1}}, "plan.device.health_window_ms must be between 0"),
    ({"device": {"max_boots": 0}}, "plan.device.max_boots must be between 1 and 20"),
    ({"device": {"max_boots": 21}}, "plan.device.max_boots must be between 1 and 20"),
    ({"device": {"retries": {"download": 11}}}, "plan.device.retries.download must be between 0 and 10"),
    ({"device": {"retries": {"reboot": 1}}}, "plan.device.retries.reboot is not a field"),
    ({"device": {"health_window_ms": 60_000, "timeout_ms": 60_000}},
     "plan.device.health_window_ms (60000) must be shorter than plan.device.timeout_ms (60000)"),
    ({"device": {"progress_timeout_ms": 7_200_000}}, "plan.device.progress_timeout_ms (7200000) must not be longer"),
    ({"rollback_on_abort": 1}, "plan.rollback_on_abort must be true or false"),
])
def test_a_bad_plan_is_a_400_naming_the_field(plan: Any, field: str) -> None:
    assert field in bad(dep.validate_plan, plan)


@pytest.mark.parametrize("n, sizes, expect", [
    (10, ["10%", "50%", "100%"], [1, 5, 4]),
    (50, ["10%", 5, "1%"], [5, 5, 40]),
    (2, ["10%", "10%", "100%"], [1, 1]),  # empty waves dropped, as the job does
    (7, ["34%", "100%"], [3, 4]),
    (0, ["100%"], []),
])
def test_wave_sizes_are_the_jobs(n: int, sizes: list[Any], expect: list[int]) -> None:
    plan = dep.validate_plan({"waves": [{"size": s} for s in sizes]})
    assert dep.wave_sizes(plan, n) == expect
    assert expect == [e - s for s, e in ro.wave_bounds(ro.Plan.from_json(plan), n)]


# -- name and target -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, ok", [
    ("spring rollout 2.0", True), ("  trimmed  ", True), ("ü" * 100, True),
    ("", False), ("   ", False), ("x" * 101, False), ("tab\there", False), ("n\nl", False), ("zw\u200bsp", False),
])
def test_name_rules(name: str, ok: bool) -> None:
    if ok:
        assert dep.check_name(name) == name.strip()
    else:
        bad(dep.check_name, name)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "target needs exactly one of group, filter, device_ids"),
    ({"group": "g", "device_ids": ["d1"]}, "it has group, device_ids"),
    ({"group": "bad group"}, "target.group 'bad group' is not well-formed"),
    ({"device_ids": []}, "target.device_ids is empty"),
    ({"device_ids": ["ok", "not ok"]}, "device id 'not ok' is not well-formed"),
    ({"device_ids": [f"d{i}" for i in range(10_001)]}, "lists 10001 devices, more than 10000; use a group"),
    ({"filter": {}}, "target.filter needs at least one of"),
    ({"filter": {"metadata": {}}}, "target.filter needs at least one of"),
    ({"filter": {"status": "disabled"}}, "only active devices can take a deployment"),
    ({"filter": {"device_type": "a b"}}, "target.filter.device_type 'a b' is not well-formed"),
    ({"filter": {"metadata": {"bad key": "v"}}}, "target.filter.metadata key 'bad key'"),
    ({"filter": {"colour": "red"}}, "target.filter.colour is not a field"),
])
def test_bad_targets(kwargs: dict[str, Any], message: str) -> None:
    assert message in bad(dep.target, **kwargs)


def test_targets_and_their_audit_form() -> None:
    assert dep.target(group="g").as_json() == {"group": "g"}
    t = dep.target(device_ids=["d2", "d1", "d2"])
    assert t.device_ids == ("d2", "d1") and t.as_json() == {"device_ids": 2}
    f = dep.target(filter={"status": "active", "metadata": {"site": "x"}, "device_type": None})
    assert f.as_json() == {"filter": {"status": "active", "metadata": {"site": "x"}}} and f.is_filter


class Registry:
    """The registry's get_many and list (id order, pages of ``limit``, the filter's matches)."""

    def __init__(self, devices: list[Device]):
        self.devices = {d.device_id: d for d in devices}
        self.filters: list[Any] = []

    def get_many(self, ids: list[str]) -> dict[str, Device]:
        return {i: self.devices[i] for i in ids if i in self.devices}

    def list(self, flt: Any, limit: int, after: str | None = None) -> tuple[list[Device], str | None]:
        self.filters.append(flt)
        ids = [i for i in sorted(self.devices) if (after is None or i > after) and flt.matches(self.devices[i])]
        return [self.devices[i] for i in ids[:limit]], ids[limit - 1] if len(ids) > limit else None


def device(device_id: str, device_type: str | None = "thermo", status: DeviceStatus = DeviceStatus.active,
           group: str = "g") -> Device:
    return Device(device_id, status=status, device_type=device_type, groups=frozenset({group}),
                  metadata={"site": device_id[-1]})


FLEET = [device("t1"), device("t2"), device("t3", group="h"), device("p1", "pump"), device("x1", None),
         device("t4", status=DeviceStatus.disabled), device("t5", status=DeviceStatus.revoked)]


@pytest.mark.parametrize("target, expect", [
    (dep.target(group="g"), ["t1", "t2"]),  # only active devices of the firmware's type
    (dep.target(filter={"metadata": {"site": "1"}}), ["t1"]),
    (dep.target(filter={"status": "active"}), ["t1", "t2", "t3"]),
    (dep.target(filter={"device_type": "thermo"}), ["t1", "t2", "t3"]),
    (dep.target(device_ids=["t3", "t1"]), ["t3", "t1"]),  # a list keeps its order
])
def test_resolve(target: dep.Target, expect: list[str]) -> None:
    assert dep.resolve(target, Registry(FLEET), device_type="thermo", visible_groups=None) == expect


@pytest.mark.parametrize("target, visible, message", [
    (dep.target(device_ids=["t1", "nope"]), None, "target.device_ids: device 'nope' not found"),
    (dep.target(device_ids=["t1", "t3"]), frozenset({"g"}), "device 't3' not found"),  # invisible: not found
    (dep.target(device_ids=["p1", "t1"]), None, "'p1' is not of the firmware's device type 'thermo' ('p1' has 'pump')"),
    (dep.target(device_ids=["x1"]), None, "('x1' has none)"),
    (dep.target(device_ids=["t1", "t4", "t5"]), None, "'t4', 't5' are not active ('t4' is disabled)"),
    (dep.target(filter={"device_type": "pump"}), None, "target.filter.device_type 'pump' is not the firmware's"),
    (dep.target(group="empty"), None, "target selects no device: no active device of device type 'thermo' in group"),
    (dep.target(filter={"metadata": {"site": "9"}}), None, "target selects no device"),
])
def test_resolve_refuses(target: dep.Target, visible: frozenset[str] | None, message: str) -> None:
    assert message in bad(dep.resolve, target, Registry(FLEET), device_type="thermo", visible_groups=visible)


def test_many_listed_devices_are_named_a_few_at_a_time() -> None:
    message = bad(dep.resolve, dep.target(device_ids=[f"n{i}" for i in range(8)]), Registry(FLEET),
                  device_type="thermo", visible_groups=None)
    assert "devices 'n0', 'n1', 'n2', 'n3', 'n4' and 3 more not found" in message


def test_a_target_over_the_limit_is_refused_before_it_is_all_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dep, "MAX_TARGETS", 2500)
    registry = Registry([device(f"t{i:05}") for i in range(4000)])
    assert "more than 2500 devices" in bad(dep.resolve, dep.target(group="g"), registry, device_type="thermo",
                                           visible_groups=None)
    assert len(registry.filters) == 3  # pages of 1,000: stopped at the third


def test_the_registry_filter_asks_for_active_devices_of_the_type_in_the_keys_groups() -> None:
    registry = Registry(FLEET)
    dep.resolve(dep.target(group="g"), registry, device_type="thermo", visible_groups=frozenset({"g"}))
    flt = registry.filters[0]
    assert (flt.status, flt.group, flt.device_type, flt.visible_groups) == (
        DeviceStatus.active, "g", "thermo", frozenset({"g"}))


def test_rollout_order_shuffles_a_group_stably_and_keeps_a_list() -> None:
    ids = [f"d{i:03}" for i in range(200)]
    group = dep.target(group="g")
    first = dep.rollout_order("dep1", group, ids)
    assert sorted(first) == ids and first != ids
    assert dep.rollout_order("dep1", group, ids) == first
    assert dep.rollout_order("dep2", group, ids) != first
    assert dep.rollout_order("dep1", dep.target(device_ids=ids[::-1]), ids[::-1]) == ids[::-1]


# -- conflicts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("deployment_state, execution_state, held", [
    ("PENDING", None, True), ("RUNNING", None, True), ("PAUSED", "QUEUED", True),
    ("WAITING_APPROVAL", "VERIFYING", True), ("RUNNING", "INSTALLING", True),
    ("RUNNING", "SUCCEEDED", False), ("RUNNING", "FAILED", False), ("RUNNING", "CANCELED", False),
    ("RUNNING", "ALREADY_INSTALLED", False), ("RUNNING", "TIMED_OUT", False),
    ("SUCCEEDED", None, False), ("ABORTED", "INSTALLING", True), ("CANCELED", "VERIFYING", True),
    ("CANCELED", "QUEUED", False), ("ABORTED", "DOWNLOADING", False), ("ABORTED", "SUCCEEDED", False),
    (None, None, False),  # the other deployment's row is gone
])
def test_the_conflict_rule(deployment_state: str | None, execution_state: str | None, held: bool) -> None:
    assert dep.blocks(deployment_state, execution_state) is held


def test_the_conflict_names_the_other_deployment() -> None:
    held = [dep.Holder("d1", "depA", "spring", "RUNNING"), dep.Holder("d2", "depA", "spring", "RUNNING"),
            dep.Holder("d3", "depB", "other", "PAUSED")]
    err = dep.conflict_error(held)
    assert err.code == "conflict"
    assert str(err).startswith("2 target devices are in deployment 'depA' ('spring', RUNNING), which is not final: "
                               "'d1', 'd2'; 1 other deployments hold other target devices ('depB')")


# -- records ---------------------------------------------------------------------------------------

def records(n: int, plan: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    devices = [f"d{i:05}" for i in range(n)]
    return dep.create_records(deployment_id="dep1", name="spring", firmware=FIRMWARE,
                              plan=dep.validate_plan(plan), chunks=dep.chunked(devices), created_at=T0,
                              created_by="alice")


def test_records_are_a_create_then_chunks_of_5000() -> None:
    create, *targets = records(10_001)
    assert create == {"op": "create", "deployment_id": "dep1", "created_at": T0, "created_by": "alice",
                      "name": "spring", "firmware": {"firmware_id": "fw1", "device_type": "thermo", "version": "2.0.0",
                                                     "sha256": "a" * 64, "size": 1234,
                                                     "signature": "c3Nz" * 21 + "cw==", "signer": "platformkey00001"},
                      "plan": dep.validate_plan(None), "target_count": 10_001, "chunks": 3, "rollback_of": None,
                      "rollback_firmware": []}
    assert [(t["op"], t["chunk"], len(t["devices"])) for t in targets] == [
        ("targets", 0, 5000), ("targets", 1, 5000), ("targets", 2, 1)]
    assert targets[1]["devices"][0] == "d05000" and all(t["deployment_id"] == "dep1" for t in targets)


def test_the_jobs_rollout_takes_the_records() -> None:
    """The contract between the two sides: the records start the job's rollout with the API's waves."""
    plan = {"waves": [{"size": "10%"}, {"size": 20}, {"size": "100%"}], "rate_per_minute": 100_000}
    create, *targets = records(10_050, plan)
    r = ro.create(create, T0)
    members = MemoryMembers()
    step = ro.Step(r)
    for t in targets:
        step = ro.add_targets(step.rollout, members, t["chunk"], t["devices"], T0)
    assert step.rollout.state is ro.DeployState.RUNNING
    assert [w.size for w in step.rollout.waves] == dep.wave_sizes(create["plan"], 10_050) == [1005, 20, 9025]
    assert members.target(5000) == "d05000" and members.target(10_049) == "d10049"


def test_op_records() -> None:
    assert dep.op_record("pause", "dep1", by="alice", ts=T0, request_id="r1") == {
        "op": "pause", "deployment_id": "dep1", "by": "alice", "ts": T0, "request_id": "r1"}
    with pytest.raises(ValueError):
        dep.op_record("delete", "dep1", by="alice", ts=T0, request_id="r1")


# -- what GET shows --------------------------------------------------------------------------------

def test_progress_before_the_job_wrote_a_summary() -> None:
    plan = dep.validate_plan({"waves": [{"size": "10%", "success_threshold_pct": 50}, {"size": "100%"}]})
    p = dep.progress(state="PENDING", summary=None, plan=plan, target_count=20)
    assert (p["state"], p["final"], p["released"], p["unreleased"], p["wave"], p["reason"]) == (
        "PENDING", False, 0, 20, 0, "")
    assert p["counts"] == dict.fromkeys(dep.EXECUTION_STATES, 0)
    assert [(w["index"], w["size"], w["released"], w["succeeded"], w["success_threshold_pct"], w["met"])
            for w in p["waves"]] == [(0, 2, 0, 0, 50.0, False), (1, 18, 0, 0, 100.0, False)]
    assert p["rate_per_minute"] == 60.0 and p["history"] == [] and p["paused_by"] is None


def test_progress_reads_the_jobs_summary() -> None:
    """The job's own summary (fleet/ota/rollout.py) of a rollout part way through its first wave."""
    plan = dep.validate_plan({"waves": [{"size": 2}, {"size": "100%"}], "rate_per_minute": 100_000})
    create, *targets = records(5, plan)
    step = ro.add_targets(ro.create(create, T0), members := MemoryMembers(), 0, targets[0]["devices"], T0)
    r = step.rollout
    r = ro.on_event(r, members, {"device_id": "d00000", "wave": 0, "to": "QUEUED", "seq": 1}, T0 + 1).rollout
    r = ro.on_event(r, members, {"device_id": "d00000", "wave": 0, "to": "SUCCEEDED", "seq": 2}, T0 + 2).rollout
    r = ro.on_event(r, members, {"device_id": "d00001", "wave": 0, "to": "DOWNLOADING", "seq": 1}, T0 + 3).rollout
    r = ro.pause(r, "bob", T0 + 4).rollout
    p = dep.progress(state=r.state.value, summary=ro.summary(r), plan=plan, target_count=5)
    assert (p["state"], p["released"], p["unreleased"], p["wave"]) == ("PAUSED", 2, 3, 0)
    assert p["reason"] == "paused by bob" and p["history"][-1]["to"] == "PAUSED"
    assert {k: v for k, v in p["counts"].items() if v} == {"SUCCEEDED": 1, "DOWNLOADING": 1}
    first, second = p["waves"]
    assert (first["size"], first["released"], first["succeeded"], first["failed"], first["met"]) == (2, 2, 1, 0, False)
    assert (second["size"], second["released"], second["counts"]["QUEUED"]) == (3, 0, 0)


def test_progress_tolerates_a_summary_missing_parts() -> None:
    plan = dep.validate_plan(None)
    p = dep.progress(state="RUNNING", summary={"counts": {"QUEUED": 3, "BOGUS": 1}}, plan=plan, target_count=3)
    assert p["counts"]["QUEUED"] == 3 and "BOGUS" not in p["counts"] and p["released"] == 0
    assert p["waves"][0]["size"] == 3


def test_page_tokens_round_trip_and_strangers_are_refused() -> None:
    assert dep.decode_cursor(dep.encode_cursor("abc")) == "abc"
    assert dep.decode_cursor(None) is None
    for token in ("!!!", dep.encode_cursor("x" * 201), "eyJhIjoxfQ"):
        with pytest.raises(ValueError):
            dep.decode_cursor(token)
