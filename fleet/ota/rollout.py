"""A deployment's staged rollout, free of Flink: waves, rate limit, thresholds, pause and cancel.

The OTA job keys this state by deployment id (jobs/ota/): a ``Rollout`` (small: counts, not
devices) plus two per-deployment maps behind ``Members``: the ordered targets (index -> device id)
and each released device's latest execution state. ``create`` / ``add_targets`` / ``on_event`` /
``on_timer`` / ``pause`` / ``resume`` / ``cancel`` return a ``Step``: devices to assign (Kafka
``ota-assignments``), devices to cancel, and whether the deployment's row changed.

Model (for operators; docs/ota.md says it in full):

* The targets, in the API's order, are cut into waves: a wave's size is a percent of all targets
  (rounded up) or a count; the last wave takes the rest.
* Devices of the current wave are released at ``rate_per_minute`` (a token bucket with one
  second's worth of burst); with ``rate_increase`` the rate is multiplied by ``factor`` every
  ``every_successes`` successes (as AWS IoT Jobs' exponential rollout), up to ``MAX_RATE``.
* A wave is **met** when SUCCEEDED + ALREADY_INSTALLED reach ``success_threshold_pct`` of its size.
  Then the next wave starts, or, when the wave asks for ``approval``, the deployment waits
  (WAITING_APPROVAL) until an operator resumes it. A wave whose every device is final without
  being met aborts the deployment.
* A wave's **failure threshold** (FAILED, ROLLED_BACK, TIMED_OUT, REJECTED; see
  fleet/ota/execution.py) is a count, or a percent of its decided devices once ``min_sample`` of
  them are decided. It is checked for every wave on every event (a device of an earlier wave may
  still fail its health check), and reaching it ABORTS the deployment.
* Abort and cancel stop releasing and cancel every released device that can still stop (the
  executions' cancel rule: not once it is installing). The deployment is SUCCEEDED when the last
  wave is met and every target is final.
* **Rollback on abort** (``rollback_on_abort``): once every released device of an aborted
  deployment is final, the devices it updated (SUCCEEDED) go back to the version each ran before,
  in a rollback deployment per version (``rollback_of`` names this one; one wave, the same rate
  and device policy), when the catalog holds an image of it (the API sends the device type's
  other images with the create record); the others are counted as unavailable.
* Pause stops releasing; devices already released go on. Resume continues (and approves a wave
  waiting for approval). Final deployments ignore all three.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, NamedTuple, Protocol

from fleet.ota.execution import FAILURES, SUCCESSES, DevicePolicy, ExecState

MAX_RATE = 100_000  # devices per minute
TARGET_CHUNK = 5_000  # devices per ``targets`` record (the API splits the list this way)
MAX_HISTORY = 50


class DeployState(str, Enum):
    PENDING = "PENDING"  # created; targets still arriving
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    ABORTED = "ABORTED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in (DeployState.SUCCEEDED, DeployState.ABORTED, DeployState.CANCELED)


@dataclass(frozen=True, slots=True)
class FailureThreshold:
    count: int | None = None
    pct: float | None = None
    min_sample: int = 1


@dataclass(frozen=True, slots=True)
class WavePlan:
    size: str | int  # "10%" or a count
    success_threshold_pct: float = 100.0
    approval: bool = False
    failure: FailureThreshold = FailureThreshold()


@dataclass(frozen=True, slots=True)
class Plan:
    waves: tuple[WavePlan, ...] = (WavePlan("100%"),)
    rate_per_minute: float = 60.0
    rate_factor: float | None = None  # rate_increase.factor
    rate_every: int | None = None  # rate_increase.every_successes
    device: DevicePolicy = DevicePolicy()
    rollback_on_abort: bool = False

    @classmethod
    def from_json(cls, raw: Any) -> Plan:
        """A plan the API validated (fleet/ota/deployments.py); what is missing takes the defaults."""
        raw = raw if isinstance(raw, dict) else {}
        waves = []
        for w in raw.get("waves") or [{"size": "100%"}]:
            f = w.get("failure_threshold") or {}
            waves.append(WavePlan(w.get("size", "100%"), float(w.get("success_threshold_pct", 100)),
                                  bool(w.get("approval", False)),
                                  FailureThreshold(f.get("count"), f.get("pct"), int(f.get("min_sample") or 1))))
        inc = raw.get("rate_increase") or {}
        return cls(tuple(waves), float(min(max(raw.get("rate_per_minute", 60), 1), MAX_RATE)),
                   float(inc["factor"]) if inc.get("factor") else None,
                   int(inc["every_successes"]) if inc.get("every_successes") else None,
                   DevicePolicy.from_json(raw.get("device")), bool(raw.get("rollback_on_abort", False)))


def wave_bounds(plan: Plan, n: int) -> list[tuple[int, int]]:
    """[start, end) of each wave over ``n`` targets; empty waves are dropped, the last takes the rest."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for i, w in enumerate(plan.waves):
        if start >= n:
            break
        if i == len(plan.waves) - 1:
            size = n - start
        elif isinstance(w.size, str) and w.size.endswith("%"):
            size = max(1, math.ceil(float(w.size[:-1]) * n / 100))
        else:
            size = max(1, int(w.size))
        end = min(n, start + size)
        bounds.append((start, end))
        start = end
    return bounds


class Member(NamedTuple):
    """A released device as the rollout knows it: its execution's latest state and seq, its wave,
    and the version it ran before (a rollback installs it again)."""

    state: str
    seq: int
    wave: int
    previous: str = ""

    def encode(self) -> str:
        return f"{self.state}|{self.seq}|{self.wave}|{self.previous}"

    @classmethod
    def decode(cls, text: str) -> Member:
        state, seq, wave, *previous = text.split("|", 3)
        return cls(state, int(seq), int(wave), previous[0] if previous else "")


class Members(Protocol):
    """A deployment's per-device state (MapState in the job, dicts in tests)."""

    def target(self, index: int) -> str | None: ...

    def put_target(self, index: int, device_id: str) -> None: ...

    def member(self, device_id: str) -> Member | None: ...

    def put_member(self, device_id: str, member: Member) -> None: ...


class MemoryMembers:
    def __init__(self) -> None:
        self.targets: dict[int, str] = {}
        self.members: dict[str, Member] = {}

    def target(self, index: int) -> str | None:
        return self.targets.get(index)

    def put_target(self, index: int, device_id: str) -> None:
        self.targets[index] = device_id

    def member(self, device_id: str) -> Member | None:
        return self.members.get(device_id)

    def put_member(self, device_id: str, member: Member) -> None:
        self.members[device_id] = member


@dataclass(frozen=True, slots=True)
class Wave:
    start: int
    end: int
    released: int = 0
    counts: tuple[tuple[str, int], ...] = ()  # current execution state -> devices, of released ones

    @property
    def size(self) -> int:
        return self.end - self.start

    def count(self, *states: ExecState) -> int:
        c = dict(self.counts)
        return sum(c.get(s.value, 0) for s in states)

    def moved(self, from_state: str | None, to_state: str) -> Wave:
        c = dict(self.counts)
        if from_state is not None and c.get(from_state, 0) > 0:
            c[from_state] -= 1
            if c[from_state] == 0:
                del c[from_state]
        c[to_state] = c.get(to_state, 0) + 1
        return replace(self, counts=tuple(sorted(c.items())))


@dataclass(frozen=True, slots=True)
class Rollout:
    deployment_id: str
    name: str
    firmware: dict[str, Any]
    plan_json: dict[str, Any]
    target_count: int
    chunks: int
    created_at: int
    created_by: str
    updated_at: int
    state: DeployState = DeployState.PENDING
    chunks_seen: tuple[int, ...] = ()
    waves: tuple[Wave, ...] = ()
    wave: int = 0  # the current wave's index
    next_index: int = 0  # the next target to release
    rate: float = 60.0
    allowance: float = 1.0  # release tokens
    last_tick: int = 0
    successes: int = 0
    reason: str = ""
    history: tuple[tuple[str | None, str, int, str], ...] = ()  # (from, to, ts, reason)
    rollback_of: str | None = None
    writes: int = 0  # rows written (the job orders writes within a millisecond by it)
    row_at: int = 0  # when the row was last written
    row_dirty: bool = False  # counts changed since (the job writes them at most every ROW_INTERVAL_MS)
    # Rollback on abort: the images a device may go back to (the catalog's other versions of the
    # device type, from the API), where it stands (ROLLBACK_* below) and the deployments it made.
    rollback_firmware: tuple[dict[str, Any], ...] = ()
    rollback: str = ""
    rollbacks: tuple[str, ...] = ()
    rollback_unavailable: int = 0

    @property
    def plan(self) -> Plan:
        return Plan.from_json(self.plan_json)


ROLLBACK_WAITING = "WAITING"  # aborted: waiting for every released device to be final
ROLLBACK_STARTED = "STARTED"  # rollback deployments made (maybe none: nothing to roll back)


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """A rollback deployment to create: ``devices`` go back to ``firmware``."""

    deployment_id: str
    firmware: dict[str, Any]
    devices: list[str]
    plan: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    rollout: Rollout
    assign: list[tuple[str, int]] = field(default_factory=list)  # (device_id, wave)
    cancel: list[str] = field(default_factory=list)
    changed: bool = True  # the deployment's row must be written
    outcome: str = "applied"
    rollbacks: list[RollbackPlan] = field(default_factory=list)


def _to(r: Rollout, state: DeployState, now: int, reason: str) -> Rollout:
    entry = (r.state.value, state.value, now, reason[:300])
    return replace(r, state=state, reason=reason[:300], updated_at=now, history=(r.history + (entry,))[-MAX_HISTORY:])


# --- inputs -------------------------------------------------------------------------------------

def create(record: dict[str, Any], now: int) -> Rollout:
    """The API's ``create`` record (schemas/kafka/ota-request): the deployment without its targets."""
    r = Rollout(record["deployment_id"], str(record.get("name", "")), dict(record["firmware"]),
                dict(record.get("plan") or {}), int(record["target_count"]), int(record["chunks"]),
                int(record.get("created_at", now)), str(record.get("created_by", "")), now,
                rollback_of=record.get("rollback_of"),
                rollback_firmware=tuple(f for f in record.get("rollback_firmware") or () if isinstance(f, dict)))
    r = replace(r, rate=r.plan.rate_per_minute)
    return replace(r, history=((None, DeployState.PENDING.value, now, "created"),))


def add_targets(r: Rollout, members: Members, chunk: int, devices: list[str], now: int,
                offset: int | None = None) -> Step:
    """One ``targets`` record; the rollout starts when the last chunk is in."""
    if chunk in r.chunks_seen or not 0 <= chunk < r.chunks:
        return Step(r, changed=False, outcome="duplicate")
    base = chunk * TARGET_CHUNK if offset is None else offset
    for i, device_id in enumerate(devices):
        members.put_target(base + i, device_id)
    r = replace(r, chunks_seen=tuple(sorted(r.chunks_seen + (chunk,))), updated_at=now)
    if len(r.chunks_seen) < r.chunks or r.waves or r.state.final:
        return Step(r, changed=False)
    waves = tuple(Wave(s, e) for s, e in wave_bounds(r.plan, r.target_count))
    r = replace(r, waves=waves, last_tick=now, allowance=_burst(r.rate))
    if r.state is DeployState.PAUSED:  # paused before it started: the waves wait for resume
        return Step(r)
    r = _to(r, DeployState.RUNNING, now, f"started: {r.target_count} devices in {len(waves)} waves")
    return _release_and_evaluate(r, members, now)


def on_event(r: Rollout, members: Members, event: dict[str, Any], now: int) -> Step:
    """An execution transition from ``ota-events`` (device_id, wave, to, seq)."""
    device_id, to, seq = event["device_id"], event["to"], int(event["seq"])
    wave = int(event.get("wave", 0))
    known = members.member(device_id)
    if known is not None and known.seq >= seq:
        return Step(r, changed=False, outcome="duplicate")
    if not 0 <= wave < len(r.waves):
        return Step(r, changed=False, outcome="unknown_wave")
    previous = event.get("previous_version")
    members.put_member(device_id, Member(to, seq, wave, previous if isinstance(previous, str) else
                                         (known.previous if known else "")))
    waves = list(r.waves)
    waves[wave] = waves[wave].moved(known.state if known else None, to)
    r = replace(r, waves=tuple(waves), updated_at=now)
    if ExecState(to) in SUCCESSES and (known is None or ExecState(known.state) not in SUCCESSES):
        r = _more_successes(r)
    if r.state.final:
        return _maybe_roll_back(r, members, now, Step(r))  # counts still change as released devices finish
    return _release_and_evaluate(r, members, now)


def _more_successes(r: Rollout) -> Rollout:
    r = replace(r, successes=r.successes + 1)
    plan = r.plan
    if plan.rate_factor and plan.rate_every and r.successes % plan.rate_every == 0:
        r = replace(r, rate=min(MAX_RATE, r.rate * plan.rate_factor))
    return r


def on_timer(r: Rollout, members: Members, now: int) -> Step:
    if r.state is not DeployState.RUNNING:
        return Step(r, changed=False, outcome="ignored")
    return _release_and_evaluate(r, members, now)


def pause(r: Rollout, by: str, now: int) -> Step:
    if r.state not in (DeployState.RUNNING, DeployState.WAITING_APPROVAL, DeployState.PENDING):
        return Step(r, changed=False, outcome="ignored")
    return Step(_to(r, DeployState.PAUSED, now, f"paused by {by}"))


def resume(r: Rollout, members: Members, by: str, now: int) -> Step:
    if r.state is DeployState.PAUSED:
        r = _to(r, DeployState.RUNNING if r.waves else DeployState.PENDING, now, f"resumed by {by}")
    elif r.state is DeployState.WAITING_APPROVAL:
        r = replace(_to(r, DeployState.RUNNING, now, f"wave {r.wave + 2} approved by {by}"), wave=r.wave + 1)
    else:
        return Step(r, changed=False, outcome="ignored")
    r = replace(r, last_tick=now, allowance=max(r.allowance, 1.0))
    return _release_and_evaluate(r, members, now) if r.state is DeployState.RUNNING else Step(r)


def cancel(r: Rollout, members: Members, by: str, now: int) -> Step:
    if r.state.final:
        return Step(r, changed=False, outcome="ignored")
    return _stop(_to(r, DeployState.CANCELED, now, f"canceled by {by}"), members)


def _stop(r: Rollout, members: Members, assign: list[tuple[str, int]] | None = None) -> Step:
    """Cancel every released device whose execution may still stop (the execution decides)."""
    stopping = []
    for i in range(r.next_index):
        device_id = members.target(i)
        if device_id is None:
            continue
        m = members.member(device_id)
        if m is None or not ExecState(m.state).final:
            stopping.append(device_id)
    if r.state is DeployState.ABORTED and r.plan.rollback_on_abort:
        r = replace(r, rollback=ROLLBACK_WAITING)
    step = Step(r, assign=assign or [], cancel=stopping)
    return _maybe_roll_back(r, members, r.updated_at, step)


def rollback_id(deployment_id: str, index: int) -> str:
    return f"{deployment_id[:56]}-rb{index}"


def _maybe_roll_back(r: Rollout, members: Members, now: int, step: Step) -> Step:
    """Once an aborted deployment's released devices are all final, make the rollback deployments:
    the devices it updated (SUCCEEDED) go back to the version they ran before, one deployment per
    version the catalog holds an image of; the others are counted as unavailable."""
    if r.rollback != ROLLBACK_WAITING or sum(_final_count(w) for w in r.waves) < r.next_index:
        return step
    by_version: dict[str, list[str]] = {}
    unavailable = 0
    images = {str(f.get("version")): f for f in r.rollback_firmware}
    for i in range(r.next_index):
        device_id = members.target(i)
        m = members.member(device_id) if device_id is not None else None
        if device_id is None or m is None or m.state != ExecState.SUCCEEDED.value:
            continue
        if m.previous in images:
            by_version.setdefault(m.previous, []).append(device_id)
        else:
            unavailable += 1
    plan = r.plan_json
    child_plan = {"waves": [{"size": "100%", "success_threshold_pct": 0}],
                  "rate_per_minute": plan.get("rate_per_minute", 60), "device": plan.get("device") or {},
                  "rollback_on_abort": False}
    made = [RollbackPlan(rollback_id(r.deployment_id, i), images[v], devices, child_plan)
            for i, (v, devices) in enumerate(sorted(by_version.items()))]
    n = sum(len(m.devices) for m in made)
    note = (f"; rolling back {n} updated devices in {', '.join(m.deployment_id for m in made)}" if made
            else "; nothing to roll back")
    if unavailable:
        note += f" ({unavailable} without an image of their previous version)"
    r = replace(r, rollback=ROLLBACK_STARTED, rollbacks=tuple(m.deployment_id for m in made),
                rollback_unavailable=unavailable, reason=(r.reason + note)[:600], updated_at=now)
    return replace(step, rollout=r, rollbacks=step.rollbacks + made, changed=True)


# --- the rules ----------------------------------------------------------------------------------

def _release_and_evaluate(r: Rollout, members: Members, now: int) -> Step:
    assign: list[tuple[str, int]] = []
    if r.state is DeployState.RUNNING:
        r, assign = _release(r, members, now)
    return _evaluate(r, members, now, assign)


def _burst(rate: float) -> float:
    return max(1.0, rate / 60)  # one second's worth


def _release(r: Rollout, members: Members, now: int) -> tuple[Rollout, list[tuple[str, int]]]:
    w = r.waves[r.wave]
    allowance = min(_burst(r.rate), r.allowance + max(0, now - r.last_tick) * r.rate / 60_000)
    n = min(int(allowance), w.end - r.next_index)
    out: list[tuple[str, int]] = []
    for i in range(r.next_index, r.next_index + n):
        device_id = members.target(i)
        if device_id is not None:
            out.append((device_id, r.wave))
    waves = list(r.waves)
    waves[r.wave] = replace(w, released=w.released + n)
    return replace(r, waves=tuple(waves), next_index=r.next_index + n, allowance=allowance - n, last_tick=now), out


def _failure_reached(w: Wave, plan: WavePlan) -> str | None:
    failed = w.count(*FAILURES)
    decided = failed + w.count(*SUCCESSES)
    t = plan.failure
    if t.count is not None and failed >= t.count:
        return f"{failed} failed (threshold {t.count})"
    if t.pct is not None and decided >= t.min_sample and decided > 0 and failed * 100 >= t.pct * decided:
        return f"{failed} of {decided} decided failed ({failed * 100 / decided:.0f}% >= {t.pct:g}%)"
    return None


def _met(w: Wave, plan: WavePlan) -> bool:
    return w.count(*SUCCESSES) * 100 >= plan.success_threshold_pct * w.size


def _final_count(w: Wave) -> int:
    return sum(n for s, n in w.counts if ExecState(s).final)


def _evaluate(r: Rollout, members: Members, now: int, assign: list[tuple[str, int]]) -> Step:
    plans = r.plan.waves
    for i, w in enumerate(r.waves):
        why = _failure_reached(w, plans[min(i, len(plans) - 1)])
        if why is not None:
            return _stop(_to(r, DeployState.ABORTED, now, f"wave {i + 1}: {why}"), members, assign)
    if r.state is not DeployState.RUNNING:
        return Step(r, assign=assign)
    w, plan = r.waves[r.wave], plans[min(r.wave, len(plans) - 1)]
    if w.released == w.size and _met(w, plan):
        last = r.wave == len(r.waves) - 1
        if last:
            if sum(_final_count(x) for x in r.waves) >= r.target_count:
                return Step(_to(r, DeployState.SUCCEEDED, now, f"all {r.target_count} devices final; every wave met"),
                            assign=assign)
            return Step(r, assign=assign)
        if plan.approval:
            return Step(_to(r, DeployState.WAITING_APPROVAL, now, f"wave {r.wave + 1} met; waiting for approval"),
                        assign=assign)
        r = replace(r, wave=r.wave + 1, updated_at=now,
                    history=(r.history + (("RUNNING", "RUNNING", now, f"wave {r.wave + 1} met; wave {r.wave + 2} "
                                                                      "started"),))[-MAX_HISTORY:])
        more = _release_and_evaluate(r, members, now)
        return replace(more, assign=assign + more.assign)
    if w.released == w.size and _final_count(w) >= w.size:
        ok = w.count(*SUCCESSES)
        return _stop(_to(r, DeployState.ABORTED, now, f"wave {r.wave + 1} ended with {ok} of {w.size} succeeded, "
                                                      f"below its {plan.success_threshold_pct:g}% threshold"),
                     members, assign)
    return Step(r, assign=assign)


def next_timer(r: Rollout) -> int | None:
    """When the next device of the current wave may be released, or None."""
    if r.state is not DeployState.RUNNING or not r.waves:
        return None
    w = r.waves[r.wave]
    if r.next_index >= w.end:
        return None
    if r.allowance >= 1:
        return r.last_tick
    return r.last_tick + math.ceil((1 - r.allowance) * 60_000 / r.rate)


# --- what operators read (ota_deployments.summary) and the job's state encoding -----------------

def summary(r: Rollout) -> dict[str, Any]:
    plans = r.plan.waves
    totals: dict[str, int] = {}
    waves = []
    for i, w in enumerate(r.waves):
        for s, n in w.counts:
            totals[s] = totals.get(s, 0) + n
        p = plans[min(i, len(plans) - 1)]
        waves.append({"index": i, "size": w.size, "released": w.released, "counts": dict(w.counts),
                      "succeeded": w.count(*SUCCESSES), "failed": w.count(*FAILURES),
                      "success_threshold_pct": p.success_threshold_pct, "met": _met(w, p)})
    return {"state": r.state.value, "reason": r.reason, "wave": r.wave, "target_count": r.target_count,
            "released": r.next_index, "rate_per_minute": round(r.rate, 3), "counts": totals, "waves": waves,
            "history": [{"from": f, "to": t, "ts": ts, "reason": why} for f, t, ts, why in r.history],
            "updated_at": r.updated_at,
            "rollback": ({"state": r.rollback, "deployments": list(r.rollbacks), "unavailable": r.rollback_unavailable}
                         if r.rollback else None)}


def encode(r: Rollout) -> str:
    return json.dumps({
        "deployment_id": r.deployment_id, "name": r.name, "firmware": r.firmware, "plan": r.plan_json,
        "target_count": r.target_count, "chunks": r.chunks, "created_at": r.created_at, "created_by": r.created_by,
        "updated_at": r.updated_at, "state": r.state.value, "chunks_seen": list(r.chunks_seen),
        "waves": [[w.start, w.end, w.released, [list(c) for c in w.counts]] for w in r.waves], "wave": r.wave,
        "next_index": r.next_index, "rate": r.rate, "allowance": r.allowance, "last_tick": r.last_tick,
        "successes": r.successes, "reason": r.reason, "history": [list(h) for h in r.history],
        "rollback_of": r.rollback_of, "writes": r.writes, "row_at": r.row_at, "row_dirty": r.row_dirty,
        "rollback_firmware": list(r.rollback_firmware),
        "rollback": r.rollback, "rollbacks": list(r.rollbacks), "rollback_unavailable": r.rollback_unavailable},
        separators=(",", ":"))


def decode(text: str | bytes) -> Rollout:
    x = json.loads(text)
    return Rollout(
        x["deployment_id"], x["name"], x["firmware"], x["plan"], x["target_count"], x["chunks"], x["created_at"],
        x["created_by"], x["updated_at"], DeployState(x["state"]), tuple(x["chunks_seen"]),
        tuple(Wave(s, e, rel, tuple((k, n) for k, n in counts)) for s, e, rel, counts in x["waves"]), x["wave"],
        x["next_index"], x["rate"], x["allowance"], x["last_tick"], x["successes"], x["reason"],
        tuple((f, t, ts, why) for f, t, ts, why in x["history"]), x["rollback_of"], x["writes"],
        x.get("row_at", 0), x.get("row_dirty", False),
        tuple(x.get("rollback_firmware", ())), x.get("rollback", ""), tuple(x.get("rollbacks", ())),
        x.get("rollback_unavailable", 0))
