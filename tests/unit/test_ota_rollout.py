"""fleet.ota.rollout: waves, rate, thresholds, approval, pause/resume/cancel, table-driven where it is a table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fleet.ota import rollout as ro
from fleet.ota.rollout import DeployState, MemoryMembers, Plan

T0 = 1_700_000_000_000
FW = {"firmware_id": "f1", "device_type": "sensor", "version": "2.0.0"}


def start(n: int, plan: dict[str, Any], chunk_size: int = ro.TARGET_CHUNK) -> tuple[ro.Step, MemoryMembers]:
    devices = [f"d{i:03}" for i in range(n)]
    chunks = [devices[i:i + chunk_size] for i in range(0, n, chunk_size)]
    r = ro.create({"deployment_id": "dep1", "name": "x", "firmware": FW, "plan": plan, "target_count": n,
                   "chunks": len(chunks), "created_at": T0, "created_by": "op"}, T0)
    members = MemoryMembers()
    step = ro.Step(r)
    assigned: list[tuple[str, int]] = []
    for i, c in enumerate(chunks):
        step = ro.add_targets(step.rollout, members, i, c, T0, offset=i * chunk_size)
        assigned += step.assign
    return ro.Step(step.rollout, assign=assigned), members


class Sim:
    """Drives a rollout: releases by timers, devices answer as told."""

    def __init__(self, n: int, plan: dict[str, Any]):
        step, self.members = start(n, plan)
        self.r = step.rollout
        self.assigned: list[tuple[str, int]] = list(step.assign)
        self.canceled: list[str] = []
        self.seq: dict[str, int] = {}
        self.now = T0

    def apply(self, step: ro.Step) -> ro.Step:
        self.r = step.rollout
        self.assigned += step.assign
        self.canceled += step.cancel
        return step

    def event(self, device: str, to: str) -> ro.Step:
        self.seq[device] = self.seq.get(device, 0) + 1
        wave = next(w for d, w in self.assigned if d == device)
        self.now += 10
        return self.apply(ro.on_event(self.r, self.members, {"device_id": device, "wave": wave, "to": to,
                                                             "seq": self.seq[device]}, self.now))

    def tick(self, ms: int = 60_000) -> ro.Step:
        self.now += ms
        return self.apply(ro.on_timer(self.r, self.members, self.now))

    def release_all(self) -> None:
        for _ in range(1000):
            if ro.next_timer(self.r) is None:
                return
            self.tick()


FAST = {"rate_per_minute": 100_000}


@pytest.mark.parametrize("n,sizes,expect", [
    (10, ["10%", "50%", "100%"], [(0, 1), (1, 6), (6, 10)]),
    (10, [3, 3], [(0, 3), (3, 10)]),
    (2, ["10%", "10%", "100%"], [(0, 1), (1, 2)]),  # empty waves dropped
    (1, [5, 5], [(0, 1)]),
    (7, ["34%", "100%"], [(0, 3), (3, 7)]),  # rounded up
])
def test_wave_bounds(n: int, sizes: list[Any], expect: list[tuple[int, int]]) -> None:
    plan = Plan.from_json({"waves": [{"size": s} for s in sizes]})
    assert ro.wave_bounds(plan, n) == expect


def test_waits_for_every_chunk_before_starting() -> None:
    r = ro.create({"deployment_id": "dep1", "firmware": FW, "plan": FAST, "target_count": 3, "chunks": 2}, T0)
    m = MemoryMembers()
    s1 = ro.add_targets(r, m, 1, ["c"], T0, offset=2)
    assert s1.rollout.state is DeployState.PENDING and not s1.assign
    assert ro.add_targets(s1.rollout, m, 1, ["c"], T0, offset=2).outcome == "duplicate"
    s2 = ro.add_targets(s1.rollout, m, 0, ["a", "b"], T0, offset=0)
    assert s2.rollout.state is DeployState.RUNNING
    assert [d for d, _ in s2.assign] == ["a", "b", "c"]


def test_rate_limit_releases_at_the_configured_pace() -> None:
    sim = Sim(100, {"rate_per_minute": 60})  # 1 per second, burst 1
    assert len(sim.assigned) == 1
    due = ro.next_timer(sim.r)
    assert due == T0 + 1000
    for _ in range(9):
        sim.tick(1000)
    assert len(sim.assigned) == 10
    sim.tick(60_000)  # a long gap never releases more than a second's burst
    assert len(sim.assigned) == 11


def test_rate_rises_exponentially_on_successes() -> None:
    sim = Sim(100, {"rate_per_minute": 60, "rate_increase": {"factor": 2, "every_successes": 2}})
    sim.tick(1000)
    for d, _ in list(sim.assigned):
        sim.event(d, "SUCCEEDED")
    assert sim.r.rate == 120


def test_a_wave_advances_only_when_its_success_threshold_is_met() -> None:
    sim = Sim(10, {**FAST, "waves": [{"size": 2, "success_threshold_pct": 100}, {"size": "100%"}]})
    assert [w for _, w in sim.assigned] == [0, 0]
    sim.event("d000", "SUCCEEDED")
    assert len(sim.assigned) == 2 and sim.r.wave == 0
    sim.event("d001", "VERIFYING")
    assert len(sim.assigned) == 2  # verifying is not success
    sim.event("d001", "SUCCEEDED")
    assert sim.r.wave == 1 and len(sim.assigned) == 10
    assert {w for d, w in sim.assigned[2:]} == {1}


def test_a_wave_is_not_left_before_all_of_it_is_released() -> None:
    sim = Sim(10, {"rate_per_minute": 60, "waves": [{"size": 4, "success_threshold_pct": 25}, {"size": "100%"}]})
    sim.event("d000", "SUCCEEDED")  # 25% of the wave, but three devices still unreleased
    assert sim.r.wave == 0
    for _ in range(3):
        sim.tick(1000)
    assert sim.r.wave == 1 and [w for _, w in sim.assigned][:4] == [0, 0, 0, 0]


def test_approval_pauses_between_waves_until_resumed() -> None:
    sim = Sim(4, {**FAST, "waves": [{"size": 2, "approval": True}, {"size": "100%"}]})
    for d in ("d000", "d001"):
        sim.event(d, "SUCCEEDED")
    assert sim.r.state is DeployState.WAITING_APPROVAL and len(sim.assigned) == 2
    sim.tick()
    assert len(sim.assigned) == 2
    sim.apply(ro.resume(sim.r, sim.members, "alice", sim.now))
    assert sim.r.state is DeployState.RUNNING and sim.r.wave == 1 and len(sim.assigned) == 4


@pytest.mark.parametrize("threshold,outcomes,aborts", [
    ({"count": 2}, ["FAILED"], False),
    ({"count": 2}, ["FAILED", "TIMED_OUT"], True),
    ({"pct": 50, "min_sample": 4}, ["FAILED", "FAILED", "SUCCEEDED"], False),  # sample of 3 < 4
    ({"pct": 50, "min_sample": 4}, ["FAILED", "FAILED", "SUCCEEDED", "SUCCEEDED"], True),
    ({"pct": 50, "min_sample": 4}, ["FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"], False),
    ({"count": 1}, ["ROLLED_BACK"], True),
    ({"count": 1}, ["REJECTED"], True),
    ({"count": 1}, ["CANCELED"], False),  # canceled is neither a success nor a failure
    ({"count": 1}, ["ALREADY_INSTALLED"], False),
])
def test_failure_threshold(threshold: dict[str, Any], outcomes: list[str], aborts: bool) -> None:
    sim = Sim(10, {**FAST, "waves": [{"size": "100%", "success_threshold_pct": 0, "failure_threshold": threshold}]})
    for i, to in enumerate(outcomes):
        sim.event(f"d{i:03}", to)
    assert (sim.r.state is DeployState.ABORTED) is aborts
    if aborts:
        # Every released device not yet final is told to stop.
        assert set(sim.canceled) == {f"d{i:03}" for i in range(len(outcomes), 10)}


def test_a_late_failure_in_an_earlier_wave_still_aborts() -> None:
    sim = Sim(10, {**FAST, "waves": [{"size": 4, "success_threshold_pct": 50, "failure_threshold": {"count": 2}},
                                     {"size": "100%"}]})
    sim.event("d000", "SUCCEEDED")
    sim.event("d001", "SUCCEEDED")
    assert sim.r.wave == 1
    sim.event("d002", "FAILED")
    sim.event("d003", "ROLLED_BACK")
    assert sim.r.state is DeployState.ABORTED and "wave 1" in sim.r.reason


def test_a_wave_that_ends_below_its_threshold_aborts() -> None:
    sim = Sim(3, {**FAST, "waves": [{"size": "100%", "success_threshold_pct": 100}]})
    sim.event("d000", "SUCCEEDED")
    sim.event("d001", "SUCCEEDED")
    sim.event("d002", "CANCELED")
    assert sim.r.state is DeployState.ABORTED and "below" in sim.r.reason


def test_succeeds_when_the_last_wave_is_met_and_everything_is_final() -> None:
    sim = Sim(5, {**FAST, "waves": [{"size": "100%", "success_threshold_pct": 60}]})
    for d in ("d000", "d001", "d002"):
        sim.event(d, "SUCCEEDED")
    assert sim.r.state is DeployState.RUNNING  # met, two still running
    sim.event("d003", "ALREADY_INSTALLED")
    sim.event("d004", "FAILED")
    assert sim.r.state is DeployState.SUCCEEDED
    summary = ro.summary(sim.r)
    assert summary["counts"] == {"ALREADY_INSTALLED": 1, "FAILED": 1, "SUCCEEDED": 3}
    assert summary["waves"][0]["met"] and summary["released"] == 5


def test_pause_stops_releases_and_resume_continues() -> None:
    sim = Sim(10, {"rate_per_minute": 60})
    sim.apply(ro.pause(sim.r, "alice", sim.now))
    assert sim.r.state is DeployState.PAUSED and ro.next_timer(sim.r) is None
    sim.tick()
    assert len(sim.assigned) == 1
    sim.event("d000", "SUCCEEDED")  # a released device still reports
    assert sim.r.state is DeployState.PAUSED
    sim.apply(ro.resume(sim.r, sim.members, "alice", sim.now))
    assert sim.r.state is DeployState.RUNNING and len(sim.assigned) == 2


@pytest.mark.parametrize("state_of_d0,canceled", [("QUEUED", ["d000", "d001"]), ("SUCCEEDED", ["d001"])])
def test_cancel_stops_every_released_non_final_device(state_of_d0: str, canceled: list[str]) -> None:
    sim = Sim(10, {"rate_per_minute": 120})  # burst 2
    sim.event("d000", state_of_d0)
    sim.apply(ro.cancel(sim.r, sim.members, "alice", sim.now))
    assert sim.r.state is DeployState.CANCELED and sorted(sim.canceled) == canceled
    assert ro.next_timer(sim.r) is None
    assert ro.cancel(sim.r, sim.members, "bob", sim.now).outcome == "ignored"
    assert ro.pause(sim.r, "bob", sim.now).outcome == "ignored"
    assert ro.resume(sim.r, sim.members, "bob", sim.now).outcome == "ignored"


def test_repeated_and_reordered_events_count_once() -> None:
    sim = Sim(3, {**FAST})
    sim.event("d000", "DOWNLOADING")
    step = ro.on_event(sim.r, sim.members, {"device_id": "d000", "wave": 0, "to": "DOWNLOADING", "seq": 1}, sim.now)
    assert step.outcome == "duplicate"
    sim.event("d000", "SUCCEEDED")
    assert ro.summary(sim.r)["counts"] == {"SUCCEEDED": 1}


def test_encode_round_trip() -> None:
    sim = Sim(10, {"rate_per_minute": 60, "waves": [{"size": 2}, {"size": "100%"}]})
    sim.event("d000", "SUCCEEDED")
    assert ro.decode(ro.encode(sim.r)) == sim.r


def _previous(sim: Sim, device: str, to: str, previous: str) -> ro.Step:
    sim.seq[device] = sim.seq.get(device, 0) + 1
    wave = next(w for d, w in sim.assigned if d == device)
    sim.now += 10
    return sim.apply(ro.on_event(sim.r, sim.members, {"device_id": device, "wave": wave, "to": to,
                                                      "seq": sim.seq[device], "previous_version": previous}, sim.now))


def test_rollback_on_abort_waits_for_the_released_then_rolls_back_the_updated() -> None:
    images = ({"firmware_id": "f0", "version": "1.0.0"}, {"firmware_id": "f9", "version": "0.9.0"})
    sim = Sim(6, {**FAST, "rollback_on_abort": True,
                  "waves": [{"size": "100%", "success_threshold_pct": 0, "failure_threshold": {"count": 2}}]})
    sim.r = replace(sim.r, rollback_firmware=images)
    _previous(sim, "d000", "SUCCEEDED", "1.0.0")
    _previous(sim, "d001", "SUCCEEDED", "0.9.0")
    _previous(sim, "d002", "SUCCEEDED", "0.5.0")  # no image of it in the catalog
    _previous(sim, "d003", "VERIFYING", "1.0.0")
    _previous(sim, "d004", "FAILED", "1.0.0")
    step = _previous(sim, "d005", "FAILED", "1.0.0")
    assert sim.r.state is DeployState.ABORTED and sim.r.rollback == ro.ROLLBACK_WAITING and not step.rollbacks
    step = _previous(sim, "d003", "SUCCEEDED", "1.0.0")  # the last one in flight finishes: now roll back
    assert sim.r.rollback == ro.ROLLBACK_STARTED
    made = {rb.firmware["version"]: rb.devices for rb in step.rollbacks}
    assert made == {"0.9.0": ["d001"], "1.0.0": ["d000", "d003"]}
    assert all(rb.plan["rollback_on_abort"] is False for rb in step.rollbacks)
    assert [rb.deployment_id for rb in step.rollbacks] == ["dep1-rb0", "dep1-rb1"]
    summary = ro.summary(sim.r)
    assert summary["rollback"] == {"state": "STARTED", "deployments": ["dep1-rb0", "dep1-rb1"], "unavailable": 1}
    assert "rolling back 3 updated devices" in summary["reason"]
    # Once only.
    assert not _previous(sim, "d003", "SUCCEEDED", "1.0.0").rollbacks
    assert ro.decode(ro.encode(sim.r)) == sim.r


def test_no_rollback_without_the_plan_asking() -> None:
    sim = Sim(2, {**FAST, "waves": [{"size": "100%", "failure_threshold": {"count": 1}}]})
    step = _previous(sim, "d000", "FAILED", "1.0.0")
    assert sim.r.state is DeployState.ABORTED and not step.rollbacks and ro.summary(sim.r)["rollback"] is None


def test_paused_before_the_last_targets_arrive_starts_on_resume() -> None:
    r = ro.create({"deployment_id": "dep1", "firmware": FW, "plan": FAST, "target_count": 2, "chunks": 1}, T0)
    m = MemoryMembers()
    r = ro.pause(r, "alice", T0).rollout
    step = ro.add_targets(r, m, 0, ["a", "b"], T0 + 1, offset=0)
    assert step.rollout.state is DeployState.PAUSED and step.rollout.waves and not step.assign
    step = ro.resume(step.rollout, m, "alice", T0 + 2)
    assert step.rollout.state is DeployState.RUNNING and [d for d, _ in step.assign] == ["a", "b"]
