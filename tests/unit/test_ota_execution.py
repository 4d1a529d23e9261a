"""fleet.ota.execution: one device's OTA state machine, table-driven where it is a table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fleet.ota import execution as ex
from fleet.ota.execution import Assignment, DeviceOta, DevicePolicy, ExecState, Outcome

T0 = 1_700_000_000_000
FW = {"firmware_id": "f1", "device_type": "sensor", "version": "2.0.0", "sha256": "ab" * 32, "size": 10,
      "signature": "c2ln", "signer": "platform"}
POLICY = DevicePolicy(progress_timeout_ms=10_000, timeout_ms=60_000, health_window_ms=5_000, max_boots=2,
                      retries=(("download", 1), ("verify", 0), ("install", 0)))


def assignment(dep: str = "dep1", policy: DevicePolicy = POLICY, version: str = "2.0.0") -> Assignment:
    return Assignment(dep, "d1", 0, {**FW, "version": version}, policy, T0)


def online(version: str = "1.0.0") -> DeviceOta:
    return DeviceOta("d1", online=True, firmware_version=version)


def report(state: str, dep: str = "dep1", **extra: Any) -> dict[str, Any]:
    return {"deployment_id": dep, "state": state, **extra}


def run(steps: list[tuple[str, Any]], start: DeviceOta | None = None) -> tuple[DeviceOta, list[ex.Step]]:
    """Apply (kind, arg) inputs one second apart from T0."""
    state = start if start is not None else online()
    out = []
    for i, (kind, arg) in enumerate(steps):
        now = T0 + i * 1000 if kind != "timer" else arg
        if kind == "assign":
            step = ex.assign(state, arg, now)
        elif kind == "status":
            step = ex.on_status(state, arg, now)
        elif kind == "connect":
            step = ex.on_connect(state, arg, now)
        elif kind == "disconnect":
            step = ex.on_disconnect(state, now)
        elif kind == "cancel":
            step = ex.cancel(state, "dep1", "alice", now)
        elif kind == "timer":
            step = ex.on_timer(state, now)
        else:
            raise AssertionError(kind)
        state = step.state
        out.append(step)
    return state, out


def final_of(state: DeviceOta, dep: str = "dep1") -> str | None:
    return next((s for d, s, _ in state.finished if d == dep), None)


HAPPY = [("assign", assignment()), ("status", report("RECEIVED")), ("status", report("DOWNLOADING", progress=50)),
         ("status", report("DOWNLOADED")), ("status", report("INSTALLING")), ("status", report("REBOOTING")),
         ("disconnect", None), ("connect", "2.0.0"), ("status", report("BOOTED", firmware_version="2.0.0", boot=1))]


def test_happy_path_needs_a_healthy_window_before_success() -> None:
    state, steps = run(HAPPY)
    assert state.active is not None and state.active.state is ExecState.VERIFYING
    assert [c.to_state.value for _, c in (t for s in steps for t in s.transitions)] == [
        "QUEUED", "NOTIFIED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING", "VERIFYING"]
    assert steps[0].send and steps[0].send[0].op == ex.INSTALL
    due = ex.next_timer(state)
    assert due is not None and state.active.verify_since is not None
    assert due == state.active.verify_since + POLICY.health_window_ms
    assert ex.on_timer(state, due - 1).outcome is Outcome.IGNORED
    done = ex.on_timer(state, due)
    assert done.state.active is None and final_of(done.state) == "SUCCEEDED"
    assert done.state.firmware_version == "2.0.0"


def test_a_disconnect_while_verifying_restarts_the_window_and_counts_a_boot() -> None:
    state, _ = run(HAPPY + [("disconnect", None)])
    assert state.active is not None and state.active.verify_since is None
    assert ex.next_timer(state) is not None  # the overall timeout still bounds it
    state = ex.on_connect(state, "2.0.0", T0 + 20_000).state
    assert state.active is not None and state.active.boots == 2 and state.active.verify_since == T0 + 20_000


def test_crash_loop_fails_and_is_never_success() -> None:
    steps = HAPPY + [("disconnect", None), ("connect", "2.0.0"), ("disconnect", None), ("connect", "2.0.0")]
    state, _ = run(steps)
    assert final_of(state) == "FAILED"
    assert state.active is None


def test_booting_the_old_image_is_rolled_back() -> None:
    steps = HAPPY[:7] + [("connect", "1.0.0")]
    state, _ = run(steps)
    assert final_of(state) == "ROLLED_BACK"


@pytest.mark.parametrize("reported", ["REJECTED", "ROLLED_BACK", "ALREADY_INSTALLED"])
def test_the_devices_final_word(reported: str) -> None:
    state, _ = run([("assign", assignment()), ("status", report("DOWNLOADING")),
                    ("status", report(reported, error="tampered"))])
    assert final_of(state) == reported


def test_failure_retried_per_kind_then_failed() -> None:
    state, steps = run([("assign", assignment()), ("status", report("DOWNLOADING")),
                        ("status", report("FAILED", failure="download", error="reset"))])
    assert state.active is not None and state.active.state is ExecState.NOTIFIED and state.active.attempt == 2
    assert steps[-1].send and steps[-1].send[0].op == ex.INSTALL  # a fresh notice
    state, _ = run([("status", report("FAILED", failure="download"))], state)
    assert final_of(state) == "FAILED"
    state, _ = run([("assign", assignment()), ("status", report("FAILED", failure="install"))])
    assert final_of(state) == "FAILED"  # install has no retries in this policy


def test_offline_device_queues_and_is_notified_on_connect() -> None:
    state, steps = run([("assign", assignment())], DeviceOta("d1"))
    assert state.active is not None and state.active.state is ExecState.QUEUED and not steps[0].send
    assert ex.next_timer(state) is None  # waiting for the device is not being stuck
    step = ex.on_connect(state, "1.0.0", T0 + 5000)
    assert step.state.active is not None and step.state.active.state is ExecState.NOTIFIED and step.send


def test_reconnect_mid_download_resends_the_notice() -> None:
    state, _ = run([("assign", assignment()), ("status", report("DOWNLOADING", progress=30)), ("disconnect", None)])
    step = ex.on_connect(state, "1.0.0", T0 + 9000)
    assert step.send and step.send[0].op == ex.INSTALL
    assert step.state.active is not None and step.state.active.state is ExecState.DOWNLOADING


@pytest.mark.parametrize("prefix,expect_state,expect_notice", [
    ([], "CANCELED", None),  # QUEUED (offline below)
    ([("status", report("RECEIVED"))], "CANCELED", ex.CANCEL),
    ([("status", report("DOWNLOADING"))], "CANCELED", ex.CANCEL),
    ([("status", report("DOWNLOADED"))], "CANCELED", ex.CANCEL),
    ([("status", report("INSTALLING"))], "INSTALLING", None),
    ([("status", report("INSTALLING")), ("status", report("REBOOTING"))], "REBOOTING", None),
    (HAPPY[1:], "VERIFYING", None),
])
def test_cancel_in_every_state(prefix: list[tuple[str, Any]], expect_state: str, expect_notice: str | None) -> None:
    start = DeviceOta("d1") if not prefix else online()
    state, _ = run([("assign", assignment())] + prefix, start)
    step = ex.cancel(state, "dep1", "alice", T0 + 100_000)
    if expect_state == "CANCELED":
        assert final_of(step.state) == "CANCELED"
    else:
        assert step.state.active is not None and step.state.active.state.value == expect_state
        assert step.state.active.cancel_requested == "alice"
    assert [n.op for n in step.send] == ([expect_notice] if expect_notice else [])


def test_no_progress_times_out_and_tells_the_device_to_stop() -> None:
    state, _ = run([("assign", assignment()), ("status", report("DOWNLOADING"))])
    due = ex.next_timer(state)
    assert due == T0 + 1000 + POLICY.progress_timeout_ms
    step = ex.on_timer(state, due)
    assert final_of(step.state) == "TIMED_OUT" and [n.op for n in step.send] == [ex.CANCEL]


def test_overall_timeout_bounds_a_chatty_device() -> None:
    state, _ = run([("assign", assignment())])
    now = T0
    for i in range(1, 20):  # progress every 5 s never lets the progress timeout fire
        now = T0 + i * 5000
        state = ex.on_status(state, report("DOWNLOADING", progress=i), now).state
    step = ex.on_timer(state, T0 + POLICY.timeout_ms)
    assert final_of(step.state) == "TIMED_OUT"


def test_never_twice_and_one_at_a_time() -> None:
    state, _ = run([("assign", assignment()), ("status", report("REJECTED", error="tampered"))])
    again = ex.assign(state, assignment(), T0 + 10_000)
    assert again.outcome is Outcome.DUPLICATE and again.state == state
    busy, _ = run([("assign", assignment("depA"))])
    other = ex.assign(busy, assignment("depB"), T0 + 5000)
    assert other.state.active is not None and other.state.active.deployment_id == "depA"
    assert final_of(other.state, "depB") == "REJECTED"
    assert other.transitions[-1][1].reason.startswith("another_deployment_active: depA")


def test_already_installed_when_the_device_runs_it() -> None:
    step = ex.assign(online("2.0.0"), assignment(), T0)
    assert final_of(step.state) == "ALREADY_INSTALLED" and not step.send


@pytest.mark.parametrize("late,outcome", [
    (report("DOWNLOADING"), Outcome.STALE),  # after INSTALLING: a repeat delivered late
    (report("DOWNLOADING", dep="other"), Outcome.UNKNOWN_DEPLOYMENT),
])
def test_stale_and_unknown_reports_change_nothing(late: dict[str, Any], outcome: Outcome) -> None:
    state, _ = run([("assign", assignment()), ("status", report("INSTALLING"))])
    step = ex.on_status(state, late, T0 + 9000)
    assert step.outcome is outcome and step.state == state and not step.transitions


def test_reports_after_the_end_are_late() -> None:
    state, _ = run([("assign", assignment()), ("status", report("REJECTED"))])
    assert ex.on_status(state, report("DOWNLOADING"), T0 + 9000).outcome is Outcome.LATE


def test_progress_is_news_without_a_transition() -> None:
    state, _ = run([("assign", assignment()), ("status", report("DOWNLOADING", progress=10))])
    step = ex.on_status(state, report("DOWNLOADING", progress=60), T0 + 5000)
    assert step.outcome is Outcome.PROGRESS and not step.transitions and step.changed[0].progress == 60


def test_seq_grows_with_every_transition() -> None:
    state, steps = run(HAPPY)
    seqs = [e.seq for s in steps for e, _ in s.transitions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_encode_round_trip() -> None:
    state, _ = run(HAPPY + [("disconnect", None)])
    assert ex.decode(ex.encode(state)) == state


def test_policy_from_json_clamps_and_defaults() -> None:
    p = DevicePolicy.from_json({"progress_timeout_ms": 5, "max_boots": 100, "retries": {"download": 99}})
    assert p.progress_timeout_ms == 1000 and p.max_boots == 20 and p.retries_for("download") == 10
    assert p.retries_for("install") == DevicePolicy().retries_for("install")
    assert DevicePolicy.from_json(None) == DevicePolicy()


def test_finished_is_bounded() -> None:
    state = online()
    for i in range(ex.MAX_FINISHED + 5):
        state = ex.on_status(ex.assign(state, assignment(f"dep{i}"), T0 + i).state,
                             report("REJECTED", dep=f"dep{i}"), T0 + i).state
    assert len(state.finished) == ex.MAX_FINISHED and state.finished[0][0] == "dep5"


def test_back_on_the_new_version_before_the_install_reports_is_a_boot() -> None:
    # Connectivity and reports come through different topics: the reconnect may overtake them.
    state, _ = run([("assign", assignment()), ("status", report("DOWNLOADED")), ("disconnect", None),
                    ("connect", "2.0.0")])
    assert state.active is not None and state.active.state is ExecState.VERIFYING
    late = ex.on_status(state, report("REBOOTING"), T0 + 9000)
    assert late.outcome is Outcome.STALE and not late.send


def test_connectivity_older_than_the_newest_report_does_not_move_the_execution() -> None:
    state = ex.assign(online(), assignment(), T0).state
    state = ex.on_status(state, report("REBOOTING"), T0 + 100, at=T0 + 100).state
    # A blip during the download (ingested before REBOOTING) delivered late: not a fallback.
    step = ex.on_connect(state, "1.0.0", T0 + 200, at=T0 + 50)
    assert step.outcome is Outcome.STALE and step.state.active is not None
    assert step.state.active.state is ExecState.REBOOTING
    # BOOTED first, then the reboot's own offline/online (ingested before it): one boot, not two.
    state = ex.on_status(state, report("BOOTED", firmware_version="2.0.0", boot=1), T0 + 300, at=T0 + 300).state
    state = ex.on_disconnect(state, T0 + 310, at=T0 + 150).state
    state = ex.on_connect(state, "2.0.0", T0 + 320, at=T0 + 250).state
    assert state.active is not None and state.active.boots == 1 and state.active.verify_since is not None
    # A real crash afterwards still counts.
    state = ex.on_disconnect(state, T0 + 400, at=T0 + 400).state
    state = ex.on_connect(state, "2.0.0", T0 + 500, at=T0 + 500).state
    assert state.active is not None and state.active.boots == 2


def test_a_repeated_failure_of_an_older_attempt_uses_no_retry() -> None:
    state, _ = run([("assign", assignment()), ("status", report("FAILED", failure="download", attempt=1))])
    assert state.active is not None and state.active.attempt == 2
    step = ex.on_status(state, report("FAILED", failure="download", attempt=1), T0 + 9000)
    assert step.outcome is Outcome.STALE and step.state == state


def test_verifying_is_bounded_by_its_window_not_the_overall_timeout() -> None:
    state, _ = run(HAPPY)
    assert state.active is not None
    late = replace(state.active, notified_at=T0 - POLICY.timeout_ms)  # long past the overall timeout
    state = replace(state, active=late)
    assert ex.next_timer(state) == late.verify_since + POLICY.health_window_ms  # type: ignore[operator]
    gone = ex.on_disconnect(state, T0 + 20_000).state
    assert ex.next_timer(gone) == T0 + 20_000 + POLICY.progress_timeout_ms
    assert final_of(ex.on_timer(gone, T0 + 20_000 + POLICY.progress_timeout_ms).state) == "TIMED_OUT"
