"""One device's OTA executions, free of Flink: the device-side state machine of a deployment.

The OTA job keys this state by device id and is a thin shell around it (jobs/ota/): it loads the
device's ``DeviceOta``, calls ``assign`` / ``cancel`` / ``on_connect`` / ``on_disconnect`` /
``on_status`` / ``on_timer``, stores the returned state, sends ``Step.send`` to
``devices/{id}/ota/notify``, writes every ``Step.transitions`` entry (Cassandra, ``ota-events`` for the
deployment's controller) and registers a timer at ``next_timer``. Time is always passed in (epoch ms).

States (issue 11)::

    QUEUED --online--> NOTIFIED --> DOWNLOADING --> DOWNLOADED --> INSTALLING --> REBOOTING
        --BOOTED new version--> VERIFYING --connected for health_window_ms, no new boot--> SUCCEEDED
    final: SUCCEEDED FAILED ROLLED_BACK TIMED_OUT REJECTED CANCELED ALREADY_INSTALLED

* **Success only after a healthy boot.** The device reporting the new version is VERIFYING, not
  SUCCEEDED: it must then stay connected for ``health_window_ms`` with no further boot. A
  reconnect in VERIFYING, or a BOOTED report with a higher boot number than seen, is another
  boot (a crash); past ``max_boots`` it is FAILED
  (``crash_loop``). A device that comes back on its previous image is ROLLED_BACK. Both count
  against the wave's failure threshold (fleet/ota/rollout.py).
* **Nothing stuck.** From NOTIFIED on, an execution with no report for ``progress_timeout_ms`` or
  not final ``timeout_ms`` after its first notification is TIMED_OUT. QUEUED (the device is
  offline) has no timeout of its own: it waits until the device connects or the deployment ends.
* **Retries per failure kind**: a FAILED report with ``failure`` download / verify / install is
  retried (a fresh notification, ``attempt`` + 1) up to the policy's count for that kind; then FAILED.
* **Cancel**: QUEUED, NOTIFIED, DOWNLOADING and DOWNLOADED become CANCELED (a notified device is
  told to stop and drop the download); INSTALLING, REBOOTING and VERIFYING run on to their own
  outcome, since a half-written image is worse than a finished one (``cancel_requested`` records it).
* **Never twice.** A device remembers the deployments it finished (``MAX_FINISHED``): a repeated
  assignment is a duplicate. One execution is active at a time; an assignment while another
  deployment is active is REJECTED (``another_deployment_active``): the API refuses such a
  deployment with a 409 first, so this only happens when two creations raced.
* Device reports arrive at least once and may repeat: a report for an earlier state than the
  current one is stale and changes nothing; reports for a finished deployment are late and
  change nothing. Connectivity comes through another topic than the reports, so a device may
  be seen back on the new version before its INSTALLING/REBOOTING reports: that is its boot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class ExecState(str, Enum):
    QUEUED = "QUEUED"
    NOTIFIED = "NOTIFIED"
    DOWNLOADING = "DOWNLOADING"
    DOWNLOADED = "DOWNLOADED"
    INSTALLING = "INSTALLING"
    REBOOTING = "REBOOTING"
    VERIFYING = "VERIFYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    ALREADY_INSTALLED = "ALREADY_INSTALLED"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({ExecState.SUCCEEDED, ExecState.FAILED, ExecState.ROLLED_BACK, ExecState.TIMED_OUT,
                   ExecState.REJECTED, ExecState.CANCELED, ExecState.ALREADY_INSTALLED})
# Outcomes that count as the device running the deployment's firmware.
SUCCESSES = frozenset({ExecState.SUCCEEDED, ExecState.ALREADY_INSTALLED})
# Outcomes that count against a wave's failure threshold (CANCELED counts neither way).
FAILURES = frozenset({ExecState.FAILED, ExecState.ROLLED_BACK, ExecState.TIMED_OUT, ExecState.REJECTED})
CANCELABLE = frozenset({ExecState.QUEUED, ExecState.NOTIFIED, ExecState.DOWNLOADING, ExecState.DOWNLOADED})
# The order of the path to success: a report for an earlier step than the current one is stale.
_ORDER = {s: i for i, s in enumerate([ExecState.QUEUED, ExecState.NOTIFIED, ExecState.DOWNLOADING,
                                      ExecState.DOWNLOADED, ExecState.INSTALLING, ExecState.REBOOTING,
                                      ExecState.VERIFYING])}

# What a device reports on devices/{id}/ota/status (schemas/mqtt/ota-status.schema.json).
DEVICE_STATES = frozenset({"RECEIVED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING", "BOOTED", "FAILED",
                           "REJECTED", "ROLLED_BACK", "ALREADY_INSTALLED"})
FAILURE_KINDS = ("download", "verify", "install")
MAX_FINISHED = 100  # deployments a device remembers having finished
MAX_HISTORY = 64  # transitions kept on one execution (a retrying device must not grow it without bound)

# Notification ops (devices/{id}/ota/notify).
INSTALL = "install"
CANCEL = "cancel"


class Outcome(str, Enum):
    """What an input did; the job counts these. Only UNKNOWN_DEPLOYMENT is a dead letter."""

    APPLIED = "applied"
    PROGRESS = "progress"  # a report that moves no state but is news (download percent)
    DUPLICATE = "duplicate"
    STALE = "stale"
    LATE = "late"
    UNKNOWN_DEPLOYMENT = "unknown_deployment"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    progress_timeout_ms: int = 600_000
    timeout_ms: int = 3_600_000
    health_window_ms: int = 60_000
    max_boots: int = 2
    retries: tuple[tuple[str, int], ...] = (("download", 2), ("verify", 0), ("install", 1))

    def retries_for(self, kind: str) -> int:
        return dict(self.retries).get(kind, 0)

    def to_json(self) -> dict[str, Any]:
        return {"progress_timeout_ms": self.progress_timeout_ms, "timeout_ms": self.timeout_ms,
                "health_window_ms": self.health_window_ms, "max_boots": self.max_boots,
                "retries": dict(self.retries)}

    @classmethod
    def from_json(cls, raw: Any) -> DevicePolicy:
        """The policy of an assignment; absent or malformed fields take the defaults (the API validated it)."""
        d = cls()
        raw = raw if isinstance(raw, dict) else {}

        def num(name: str, default: int, low: int, high: int) -> int:
            v = raw.get(name)
            return min(max(v, low), high) if type(v) is int else default

        retries_raw = raw.get("retries") if isinstance(raw.get("retries"), dict) else {}
        retries = tuple((k, min(max(retries_raw[k], 0), 10) if type(retries_raw.get(k)) is int else d.retries_for(k))
                        for k in FAILURE_KINDS)
        return cls(num("progress_timeout_ms", d.progress_timeout_ms, 1_000, 7 * 86_400_000),
                   num("timeout_ms", d.timeout_ms, 1_000, 30 * 86_400_000),
                   num("health_window_ms", d.health_window_ms, 0, 86_400_000),
                   num("max_boots", d.max_boots, 1, 20), retries)


@dataclass(frozen=True, slots=True)
class Assignment:
    deployment_id: str
    device_id: str
    wave: int
    firmware: dict[str, Any]  # firmware_id, device_type, version, sha256, size, signature, signer
    policy: DevicePolicy
    ts: int


@dataclass(frozen=True, slots=True)
class Change:
    from_state: ExecState | None  # None for the creation
    to_state: ExecState
    ts: int
    reason: str


@dataclass(frozen=True, slots=True)
class Execution:
    deployment_id: str
    device_id: str
    wave: int
    firmware: dict[str, Any]
    policy: DevicePolicy
    state: ExecState
    created_at: int
    updated_at: int
    attempt: int = 1
    # Grows on every transition, and with the clock (at least the transition's time in µs): the
    # rollout keeps the newest transition of each device by it. After a restore the job may take
    # a device along another path than before the crash (its inputs replayed in another order),
    # and those transitions must win over the ones it sent before, whatever their count.
    seq: int = 0
    progress: float | None = None  # the device's last percent of the current step
    error: str | None = None
    previous_version: str | None = None  # what the device ran when it was assigned
    notified_at: int | None = None  # the first notification: the overall timeout counts from it
    last_report_at: int | None = None  # the progress timeout counts from it
    verify_since: int | None = None  # the current healthy stretch in VERIFYING (None: not connected)
    boots: int = 0  # boots of the new image seen in VERIFYING
    failures: tuple[tuple[str, int], ...] = ()  # failed attempts per kind
    cancel_requested: str | None = None  # who asked to cancel once it could no longer stop
    history: tuple[Change, ...] = ()
    # When the newest input that moved it was ingested (the bridge's ingest_ts). Reports and
    # connectivity come through different topics in no fixed order: a connect or disconnect
    # ingested before it is older news (the reboot's own reconnect before its BOOTED report, a
    # blip during the download) and does not move the execution.
    input_at: int | None = None

    @property
    def version(self) -> str:
        return str(self.firmware.get("version", ""))

    def failures_of(self, kind: str) -> int:
        return dict(self.failures).get(kind, 0)


@dataclass(frozen=True, slots=True)
class Notice:
    """A message for the device on devices/{id}/ota/notify; the job adds the download URL."""

    op: str  # INSTALL | CANCEL
    execution: Execution


@dataclass(frozen=True, slots=True)
class DeviceOta:
    device_id: str
    online: bool = False
    firmware_version: str | None = None
    active: Execution | None = None
    # Deployments finished on this device, oldest first: (deployment_id, final state, ts).
    finished: tuple[tuple[str, str, int], ...] = ()

    def has_finished(self, deployment_id: str) -> bool:
        return any(d == deployment_id for d, _, _ in self.finished)


@dataclass(frozen=True, slots=True)
class Step:
    state: DeviceOta
    outcome: Outcome = Outcome.APPLIED
    # Every execution whose row changed, as it is now (transitions and progress); in order.
    changed: list[Execution] = field(default_factory=list)
    transitions: list[tuple[Execution, Change]] = field(default_factory=list)
    send: list[Notice] = field(default_factory=list)
    detail: str = ""


def _unchanged(state: DeviceOta, outcome: Outcome, detail: str = "") -> Step:
    return Step(state, outcome, detail=detail)


class _Builder:
    """Accumulates one input's transitions; ``done`` folds a final execution into ``finished``."""

    def __init__(self, state: DeviceOta):
        self.state = state
        self.changed: list[Execution] = []
        self.transitions: list[tuple[Execution, Change]] = []
        self.send: list[Notice] = []

    def move(self, ex: Execution, to: ExecState, now: int, reason: str, **changes: Any) -> Execution:
        change = Change(ex.state, to, now, reason[:300])
        history = (ex.history + (change,))[-MAX_HISTORY:]
        ex = replace(ex, state=to, updated_at=now, seq=max(ex.seq + 1, now * 1000), history=history, **changes)
        self.transitions.append((ex, change))
        self._changed(ex)
        return ex

    def touch(self, ex: Execution, now: int, **changes: Any) -> Execution:
        ex = replace(ex, updated_at=now, **changes)
        self._changed(ex)
        return ex

    def _changed(self, ex: Execution) -> None:
        self.changed = [c for c in self.changed if c.deployment_id != ex.deployment_id] + [ex]

    def step(self, active: Execution | None, outcome: Outcome = Outcome.APPLIED, **device: Any) -> Step:
        finished = self.state.finished
        if active is not None and active.state.final:
            finished = (finished + ((active.deployment_id, active.state.value, active.updated_at),))[-MAX_FINISHED:]
            active = None
        return Step(replace(self.state, active=active, finished=finished, **device), outcome, self.changed,
                    self.transitions, self.send)


def _notify(b: _Builder, ex: Execution, now: int, reason: str) -> Execution:
    """Send the install notice; QUEUED (or a retry) moves to NOTIFIED, a repeat keeps the state."""
    if ex.state is ExecState.QUEUED:
        ex = b.move(ex, ExecState.NOTIFIED, now, reason, notified_at=ex.notified_at or now, last_report_at=now)
    else:
        ex = b.touch(ex, now, last_report_at=now)
    b.send.append(Notice(INSTALL, ex))
    return ex


# --- inputs -------------------------------------------------------------------------------------

def assign(state: DeviceOta, a: Assignment, now: int) -> Step:
    """The controller released this device in deployment ``a.deployment_id``."""
    if state.has_finished(a.deployment_id) or (state.active and state.active.deployment_id == a.deployment_id):
        return _unchanged(state, Outcome.DUPLICATE, f"deployment {a.deployment_id} already taken")
    b = _Builder(state)
    ex = Execution(a.deployment_id, a.device_id, a.wave, a.firmware, a.policy, ExecState.QUEUED, now, now,
                   previous_version=state.firmware_version, seq=0)
    ex = b.move(ex, ExecState.QUEUED, now, "assigned")
    if state.active is not None:
        other = state.active.deployment_id
        ex = b.move(ex, ExecState.REJECTED, now, f"another_deployment_active: {other}",
                    error=f"deployment {other} is still active on this device")
        # The active execution stays; the rejected one is recorded as finished on its own.
        done = b.step(None)
        finished = (state.finished + ((ex.deployment_id, ex.state.value, now),))[-MAX_FINISHED:]
        return replace(done, state=replace(state, finished=finished))
    if state.firmware_version is not None and state.firmware_version == ex.version:
        ex = b.move(ex, ExecState.ALREADY_INSTALLED, now, f"device already runs {ex.version}")
        return b.step(ex)
    if state.online:
        ex = _notify(b, ex, now, "device online")
    return b.step(ex)


def cancel(state: DeviceOta, deployment_id: str, by: str, now: int) -> Step:
    ex = state.active
    if ex is None or ex.deployment_id != deployment_id:
        outcome = Outcome.DUPLICATE if state.has_finished(deployment_id) else Outcome.IGNORED
        return _unchanged(state, outcome)
    b = _Builder(state)
    if ex.state in CANCELABLE:
        was_notified = ex.state is not ExecState.QUEUED
        ex = b.move(ex, ExecState.CANCELED, now, f"canceled by {by}")
        if was_notified:  # online or not: the broker keeps it in the device's session
            b.send.append(Notice(CANCEL, ex))
        return b.step(ex)
    if ex.cancel_requested is None:
        ex = b.touch(ex, now, cancel_requested=by)
        return b.step(ex, Outcome.PROGRESS)
    return _unchanged(state, Outcome.DUPLICATE)


def on_connect(state: DeviceOta, firmware_version: str | None, now: int, at: int | None = None) -> Step:
    """The device connected, running ``firmware_version`` (its status message's, if it said);
    ``at``: when the bridge ingested the status message (None: unknown, taken as new)."""
    version = firmware_version or state.firmware_version
    b = _Builder(state)
    ex = state.active
    if ex is None:
        return b.step(None, Outcome.IGNORED, online=True, firmware_version=version)
    if _older(ex, at):
        return b.step(ex, Outcome.STALE, online=True)
    before = ex
    if (version == ex.version and ex.state is not ExecState.QUEUED
            and _ORDER.get(ex.state, 99) < _ORDER[ExecState.VERIFYING]):
        # Back on the new version while its reports of the install are still on their way (they
        # come through another topic than connectivity, in no fixed order): it booted.
        ex = _booted(b, ex, version, now)
    elif ex.state is ExecState.QUEUED or ex.state in (ExecState.NOTIFIED, ExecState.DOWNLOADING,
                                                      ExecState.DOWNLOADED):
        # Offline until now, or the notice (or the download) was cut off: send it (again); the
        # device resumes a partial download.
        ex = _notify(b, ex, now, "device online")
    elif ex.state is ExecState.REBOOTING and version is not None:
        ex = _booted(b, ex, version, now)
    elif ex.state is ExecState.VERIFYING and ex.verify_since is None:  # back after a disconnect: a boot
        ex = _reboot_seen(b, ex, version, now, ex.boots + 1)
    if ex is not before and at is not None and not ex.state.final:
        ex = b.touch(ex, now, input_at=at)
    return b.step(ex, online=True, firmware_version=version)


def on_disconnect(state: DeviceOta, now: int, at: int | None = None) -> Step:
    b = _Builder(state)
    ex = state.active
    if ex is not None and _older(ex, at):
        return b.step(ex, Outcome.STALE, online=False)
    if ex is not None and ex.state is ExecState.VERIFYING and ex.verify_since is not None:
        # The healthy stretch is broken; it restarts on reconnect (progress_timeout_ms to come back).
        ex = b.touch(ex, now, verify_since=None, last_report_at=now, input_at=at)
    return b.step(ex, Outcome.APPLIED if ex is not None else Outcome.IGNORED, online=False)


def _older(ex: Execution, at: int | None) -> bool:
    """Whether a connectivity event ingested at ``at`` is older than the newest input that moved ``ex``."""
    return at is not None and ex.input_at is not None and at < ex.input_at


def _booted(b: _Builder, ex: Execution, version: str, now: int) -> Execution:
    """The device is up again after installing (REBOOTING or INSTALLING)."""
    if version == ex.version:
        return b.move(ex, ExecState.VERIFYING, now, f"booted {version}", boots=1, verify_since=now,
                      last_report_at=now)
    return b.move(ex, ExecState.ROLLED_BACK, now, f"booted {version}, not {ex.version}: fell back",
                  error=f"device runs {version} after the update")


def _reboot_seen(b: _Builder, ex: Execution, version: str | None, now: int, boots: int) -> Execution:
    """Boot number ``boots`` of the new image while VERIFYING: it crashed (or fell back to the old one)."""
    if version is not None and version != ex.version:
        return b.move(ex, ExecState.ROLLED_BACK, now, f"booted {version}, not {ex.version}: fell back",
                      error=f"device runs {version} after the update")
    if boots > ex.policy.max_boots:
        return b.move(ex, ExecState.FAILED, now, f"crash_loop: {boots} boots within the health window", boots=boots,
                      error="crash_loop")
    return b.touch(ex, now, boots=boots, verify_since=now, last_report_at=now)


def on_status(state: DeviceOta, report: dict[str, Any], now: int, at: int | None = None) -> Step:
    """A devices/{id}/ota/status report, already checked against the schema's shape
    (deployment_id, state in DEVICE_STATES; optional progress, error, failure, firmware_version,
    boot, attempt); ``at``: when the bridge ingested it."""
    dep = report["deployment_id"]
    active = state.active
    if active is None or active.deployment_id != dep:
        if state.has_finished(dep):
            return _unchanged(state, Outcome.LATE, f"deployment {dep} already ended on this device")
        return _unchanged(state, Outcome.UNKNOWN_DEPLOYMENT, f"device has no execution of deployment {dep}")
    attempt = report.get("attempt")
    if report["state"] == "FAILED" and type(attempt) is int and attempt < active.attempt:
        # A repeat of a failure already retried: it must not use up another retry.
        return _unchanged(state, Outcome.STALE, f"FAILED of attempt {attempt}, now at {active.attempt}")
    step = _report(state, active, report, now)
    after = step.state.active
    if at is not None and after is not None and after.deployment_id == dep and step.outcome in (
            Outcome.APPLIED, Outcome.PROGRESS) and (after.input_at is None or at > after.input_at):
        step = replace(step, state=replace(step.state, active=replace(after, input_at=at)))
    return step


def _report(state: DeviceOta, ex: Execution, report: dict[str, Any], now: int) -> Step:
    reported = report["state"]
    b = _Builder(state)
    error = report.get("error") if isinstance(report.get("error"), str) else None
    progress = report.get("progress")
    pct = float(progress) if isinstance(progress, int | float) and not isinstance(progress, bool) else None
    version = report.get("firmware_version") if isinstance(report.get("firmware_version"), str) else None

    def forward(to: ExecState) -> Step:
        if _ORDER[to] < _ORDER[ex.state]:
            return _unchanged(state, Outcome.STALE, f"{reported} after {ex.state.value}")
        if to is ex.state:
            if pct is not None and pct != ex.progress:
                return b.step(b.touch(ex, now, progress=pct, last_report_at=now), Outcome.PROGRESS)
            return b.step(b.touch(ex, now, last_report_at=now), Outcome.DUPLICATE)
        return b.step(b.move(ex, to, now, f"device: {reported}", progress=pct, last_report_at=now,
                             notified_at=ex.notified_at or now))

    if reported == "RECEIVED":
        if ex.state is ExecState.QUEUED:  # a notice the job sent before a restart lost the state
            return b.step(b.move(ex, ExecState.NOTIFIED, now, "device: RECEIVED", notified_at=now,
                                 last_report_at=now))
        return forward(ExecState.NOTIFIED)
    if reported in ("DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING"):
        return forward(ExecState(reported))
    if reported == "BOOTED":
        if version is None:
            version = ex.version
        if ex.state is ExecState.VERIFYING:
            # The reconnect of this boot usually came first and counted it: only a higher boot
            # number than seen is news (the device counts boots of the image from 1).
            boot = report.get("boot")
            if type(boot) is int and boot > ex.boots or version != ex.version:
                return b.step(_reboot_seen(b, ex, version, now, boot if type(boot) is int else ex.boots + 1))
            return _unchanged(state, Outcome.DUPLICATE)
        if _ORDER[ex.state] < _ORDER[ExecState.INSTALLING]:
            return _unchanged(state, Outcome.STALE, f"BOOTED before installing (in {ex.state.value})")
        return b.step(_booted(b, ex, version, now), firmware_version=version)
    if reported == "FAILED":
        failure = report.get("failure")
        kind: str = failure if isinstance(failure, str) and failure in FAILURE_KINDS else "install"
        tried = ex.failures_of(kind) + 1
        failures = tuple((k, tried if k == kind else ex.failures_of(k)) for k in FAILURE_KINDS)
        why = f"{kind} failed" + (f": {error[:200]}" if error else "")
        if tried <= ex.policy.retries_for(kind):
            ex = b.move(ex, ExecState.QUEUED, now, f"{why}; retry {tried} of {ex.policy.retries_for(kind)}",
                        failures=failures, attempt=ex.attempt + 1, error=error, progress=None)
            if state.online:
                ex = _notify(b, ex, now, "retry")
            return b.step(ex)
        return b.step(b.move(ex, ExecState.FAILED, now, why, failures=failures, error=error))
    # REJECTED, ROLLED_BACK, ALREADY_INSTALLED: the device's own final word.
    to = ExecState(reported)
    reason = f"device: {reported}" + (f": {error[:200]}" if error else "")
    return b.step(b.move(ex, to, now, reason, error=error), **({"firmware_version": version} if version else {}))


def on_timer(state: DeviceOta, now: int) -> Step:
    """Health windows and timeouts due at ``now``."""
    ex = state.active
    if ex is None:
        return _unchanged(state, Outcome.IGNORED)
    b = _Builder(state)
    if ex.state is ExecState.VERIFYING and ex.verify_since is not None \
            and now >= ex.verify_since + ex.policy.health_window_ms:
        window = ex.policy.health_window_ms // 1000
        return b.step(b.move(ex, ExecState.SUCCEEDED, now, f"healthy: connected {window} s on {ex.version}"))
    deadline = _timeout_at(ex)
    if deadline is not None and now >= deadline:
        overall = ex.notified_at is not None and now >= ex.notified_at + ex.policy.timeout_ms
        why = (f"not finished {ex.policy.timeout_ms // 1000} s after notification" if overall else
               f"no report for {ex.policy.progress_timeout_ms // 1000} s in {ex.state.value}")
        cancelable = ex.state in CANCELABLE
        ex = b.move(ex, ExecState.TIMED_OUT, now, why, error="timed_out")
        if cancelable:  # online or not: the broker keeps it in the device's session
            b.send.append(Notice(CANCEL, ex))
        return b.step(ex)
    return _unchanged(state, Outcome.IGNORED)


def _timeout_at(ex: Execution) -> int | None:
    if ex.state.final or ex.state is ExecState.QUEUED or ex.notified_at is None:
        return None
    if ex.state is ExecState.VERIFYING:
        # Connected, its health window decides (the overall timeout must not end a healthy
        # stretch); offline, it has progress_timeout_ms to come back.
        if ex.verify_since is not None or ex.last_report_at is None:
            return None
        return ex.last_report_at + ex.policy.progress_timeout_ms
    times = [ex.notified_at + ex.policy.timeout_ms]
    if ex.last_report_at is not None:
        times.append(ex.last_report_at + ex.policy.progress_timeout_ms)
    return min(times)


def next_timer(state: DeviceOta) -> int | None:
    ex = state.active
    if ex is None:
        return None
    times = [t for t in (_timeout_at(ex),) if t is not None]
    if ex.state is ExecState.VERIFYING and ex.verify_since is not None:
        times.append(ex.verify_since + ex.policy.health_window_ms)
    return min(times, default=None)


# --- encoding (the job's keyed state, and the execution column in Cassandra) -----------------

def execution_json(ex: Execution, history: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "deployment_id": ex.deployment_id, "device_id": ex.device_id, "wave": ex.wave, "state": ex.state.value,
        "attempt": ex.attempt, "seq": ex.seq, "created_at": ex.created_at, "updated_at": ex.updated_at,
        "progress": ex.progress, "error": ex.error, "previous_version": ex.previous_version,
        "firmware": ex.firmware, "policy": ex.policy.to_json(), "notified_at": ex.notified_at,
        "last_report_at": ex.last_report_at, "verify_since": ex.verify_since, "boots": ex.boots,
        "failures": dict(ex.failures), "cancel_requested": ex.cancel_requested, "input_at": ex.input_at}
    if history:
        out["history"] = [{"from": c.from_state.value if c.from_state else None, "to": c.to_state.value, "ts": c.ts,
                           "reason": c.reason} for c in ex.history]
    return out


def _execution(raw: dict[str, Any]) -> Execution:
    return Execution(
        raw["deployment_id"], raw["device_id"], raw["wave"], raw["firmware"], DevicePolicy.from_json(raw["policy"]),
        ExecState(raw["state"]), raw["created_at"], raw["updated_at"], raw["attempt"], raw["seq"], raw["progress"],
        raw["error"], raw["previous_version"], raw["notified_at"], raw["last_report_at"], raw["verify_since"],
        raw["boots"], tuple((k, raw["failures"].get(k, 0)) for k in FAILURE_KINDS if raw["failures"].get(k)),
        raw["cancel_requested"],
        tuple(Change(ExecState(c["from"]) if c["from"] else None, ExecState(c["to"]), c["ts"], c["reason"])
              for c in raw["history"]), raw.get("input_at"))


def encode(state: DeviceOta) -> str:
    return json.dumps({"device_id": state.device_id, "online": state.online,
                       "firmware_version": state.firmware_version,
                       "active": execution_json(state.active) if state.active else None,
                       "finished": [list(f) for f in state.finished]}, separators=(",", ":"))


def decode(text: str | bytes) -> DeviceOta:
    raw = json.loads(text)
    return DeviceOta(raw["device_id"], raw["online"], raw["firmware_version"],
                     _execution(raw["active"]) if raw["active"] else None,
                     tuple((d, s, t) for d, s, t in raw["finished"]))
