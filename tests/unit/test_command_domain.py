"""fleet.commands.domain: the command lifecycle per device; table-driven and properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleet.commands import domain as dom
from fleet.commands.domain import State as S
from tests.vectors import command_replay

T0 = 1_767_225_600_000
RULES = dom.CommandRules()


def req(cid="c-1", at=T0, timeout_ms=5_000, ttl_ms=60_000, params=None, name="reboot", device="d-1"):
    return dom.CommandRequest(cid, device, name, {} if params is None else params, timeout_ms, ttl_ms, "alice", at)


def fresh(online=False):
    return dom.DeviceCommands("d-1", online)


def submit(state, *reqs):
    for r in reqs:
        out = dom.submit(state, r, RULES)
        assert isinstance(out, dom.Step), out
        state = out.state
    return state


def states(state):
    return {c.command_id: c.state for c in state.commands.values()}


# --- the transition table ----------------------------------------------------------------------

@pytest.mark.parametrize("final", sorted(dom.FINAL, key=lambda s: s.value))
@pytest.mark.parametrize("to", list(S))
def test_no_transition_out_of_a_final_state(final, to):
    cmd = dom.Command("c", "d-1", "n", {}, 1000, T0, "a", T0, 0, final)
    with pytest.raises(dom.InvalidTransition):
        dom.transition(cmd, to, T0, "x")


@pytest.mark.parametrize("frm, to, ok", [
    (S.QUEUED, S.SENT, True), (S.QUEUED, S.IN_PROGRESS, False), (S.QUEUED, S.SUCCEEDED, False),
    (S.QUEUED, S.TIMED_OUT, False), (S.QUEUED, S.EXPIRED, True), (S.SENT, S.EXPIRED, False),
    (S.SENT, S.QUEUED, True), (S.IN_PROGRESS, S.QUEUED, False), (S.IN_PROGRESS, S.SENT, False),
    (S.SENT, S.SUCCEEDED, True), (S.IN_PROGRESS, S.REJECTED, True), (S.IN_PROGRESS, S.TIMED_OUT, True),
])
def test_transition_table(frm, to, ok):
    assert (to in dom.ALLOWED[frm]) is ok


# --- submit ------------------------------------------------------------------------------------

def test_offline_device_queues_and_online_device_gets_it_at_once():
    out = dom.submit(fresh(), req(), RULES)
    assert states(out.state) == {"c-1": S.QUEUED} and out.send == ()
    assert out.transitions == (dom.Transition("c-1", None, S.QUEUED, T0, "created by alice"),)
    out = dom.submit(fresh(online=True), req(), RULES)
    assert states(out.state) == {"c-1": S.SENT}
    assert [c.command_id for c in out.send] == ["c-1"]
    sent = out.state.commands["c-1"]
    assert (sent.sent_at, sent.deadline, sent.expires_at) == (T0, T0 + 5_000, T0 + 60_000)
    assert sent.message() == {"command_id": "c-1", "name": "reboot", "params": {}, "expires_at": T0 + 60_000}


def test_ttl_0_fails_fast_for_an_offline_device():
    out = dom.submit(fresh(), req(ttl_ms=0), RULES)
    assert states(out.state) == {"c-1": S.EXPIRED}
    assert states(dom.submit(fresh(online=True), req(ttl_ms=0), RULES).state) == {"c-1": S.SENT}


@pytest.mark.parametrize("kwargs, code", [
    ({"cid": "a/b"}, dom.INVALID_COMMAND),
    ({"cid": ""}, dom.INVALID_COMMAND),
    ({"name": "1st"}, dom.INVALID_COMMAND),
    ({"name": "set config"}, dom.INVALID_COMMAND),
    ({"params": [1]}, dom.INVALID_COMMAND),
    ({"params": {"x": float("nan")}}, dom.INVALID_COMMAND),
    ({"params": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}, dom.INVALID_COMMAND),
    ({"timeout_ms": 999}, dom.INVALID_COMMAND),
    ({"timeout_ms": 3_600_001}, dom.INVALID_COMMAND),
    ({"timeout_ms": 1.5e3}, dom.INVALID_COMMAND),
    ({"ttl_ms": -1}, dom.INVALID_COMMAND),
    ({"ttl_ms": 7 * 86_400_000 + 1}, dom.INVALID_COMMAND),
    ({"params": {"v": "x" * 8185}}, dom.PARAMS_TOO_LARGE),  # 8193 bytes
    ({"params": {"v": "x" * 8184}}, None),  # exactly 8192
    ({"timeout_ms": 1_000, "ttl_ms": 0, "name": "set_config.v2"}, None),
])
def test_submit_rules(kwargs, code):
    out = dom.submit(fresh(), req(**kwargs), RULES)
    if code is None:
        assert isinstance(out, dom.Step)
    else:
        assert isinstance(out, dom.CommandRejected) and out.code == code, out


def test_the_queue_per_device_is_bounded_by_pending_commands():
    rules = dom.CommandRules(max_pending_per_device=2)
    state = fresh()
    for i in range(2):
        state = dom.submit(state, req(f"c-{i}"), rules).state
    full = dom.submit(state, req("c-9"), rules)
    assert full.code == dom.QUEUE_FULL and full.http_status == 429
    state = dom.cancel(state, "c-0", "bob", T0 + 1).state
    assert isinstance(dom.submit(state, req("c-9"), rules), dom.Step)


def test_a_redelivered_command_is_a_duplicate_and_another_body_a_conflict():
    state = submit(fresh(), req())
    again = dom.submit(state, req(), RULES)
    assert again.outcome is dom.Outcome.DUPLICATE and again.state is state and again.transitions == ()
    other = dom.submit(state, req(params={"x": 1}), RULES)
    assert other.code == dom.COMMAND_ID_CONFLICT and other.http_status == 409


def test_a_command_for_another_device_is_refused():
    assert dom.submit(fresh(), req(device="d-2"), RULES).code == dom.INVALID_COMMAND


# --- connect / disconnect / ack / result -------------------------------------------------------

def test_connect_sends_the_queue_in_order_and_expires_the_stale():
    state = submit(fresh(), req("c-b", ttl_ms=1_000), req("c-a", at=T0 + 1), req("c-c", at=T0 + 2))
    out = dom.on_connect(state, T0 + 5_000)
    assert [c.command_id for c in out.send] == ["c-a", "c-c"]  # submission order, not id order
    assert states(out.state) == {"c-b": S.EXPIRED, "c-a": S.SENT, "c-c": S.SENT}
    assert out.state.online
    assert [t.reason for t in out.transitions] == ["ttl passed before the device connected", "device connected",
                                                   "device connected"]


def test_disconnect_requeues_unacknowledged_commands_only():
    state = submit(fresh(online=True), req("c-1"), req("c-2"))
    state = dom.on_ack(state, "c-1", T0 + 10).state
    out = dom.on_disconnect(state, T0 + 20)
    assert states(out.state) == {"c-1": S.IN_PROGRESS, "c-2": S.QUEUED}
    assert out.state.commands["c-2"].deadline is None and not out.state.online
    back = dom.on_connect(out.state, T0 + 30)
    assert [c.command_id for c in back.send] == ["c-2"]
    assert back.state.commands["c-2"].deadline == T0 + 30 + 5_000


def test_result_lifecycle_and_its_repeats():
    state = submit(fresh(online=True), req())
    state = dom.on_ack(state, "c-1", T0 + 1).state
    assert dom.on_ack(state, "c-1", T0 + 2).outcome is dom.Outcome.IGNORED
    out = dom.on_result(state, "c-1", S.SUCCEEDED, T0 + 3, {"uptime": 0})
    assert out.outcome is dom.Outcome.APPLIED and states(out.state) == {"c-1": S.SUCCEEDED}
    cmd = out.state.commands["c-1"]
    assert cmd.result == {"uptime": 0}
    assert [(t.from_state, t.to_state) for t in cmd.history] == [(None, S.QUEUED), (S.QUEUED, S.SENT),
                                                                  (S.SENT, S.IN_PROGRESS), (S.IN_PROGRESS, S.SUCCEEDED)]
    dup = dom.on_result(out.state, "c-1", S.SUCCEEDED, T0 + 4, {"uptime": 0})
    assert dup.outcome is dom.Outcome.DUPLICATE and dup.state is out.state
    other = dom.on_result(out.state, "c-1", S.FAILED, T0 + 4, error="boom")
    assert other.outcome is dom.Outcome.CONFLICTING_RESULT and other.state is out.state


def test_a_result_without_an_ack_is_accepted():
    state = submit(fresh(online=True), req())
    out = dom.on_result(state, "c-1", S.REJECTED, T0 + 1, error="unknown command")
    assert states(out.state) == {"c-1": S.REJECTED} and out.state.commands["c-1"].error == "unknown command"


def test_an_answer_to_a_requeued_command_counts():
    state = dom.on_disconnect(submit(fresh(online=True), req()), T0 + 1).state
    out = dom.on_result(state, "c-1", S.SUCCEEDED, T0 + 2)
    assert states(out.state) == {"c-1": S.SUCCEEDED}
    acked = dom.on_ack(state, "c-1", T0 + 2)
    assert states(acked.state) == {"c-1": S.IN_PROGRESS}
    assert dom.on_connect(acked.state, T0 + 3).send == ()  # not sent twice


def test_a_result_after_the_timeout_is_late_and_kept_apart():
    state = submit(fresh(online=True), req(timeout_ms=2_000))
    timed = dom.on_timer(state, T0 + 2_000)
    assert states(timed.state) == {"c-1": S.TIMED_OUT}
    late = dom.on_result(timed.state, "c-1", S.SUCCEEDED, T0 + 2_500, {"ok": True})
    assert late.outcome is dom.Outcome.LATE_RESULT and states(late.state) == {"c-1": S.TIMED_OUT}
    assert late.transitions == ()
    assert late.state.commands["c-1"].late_result == {"status": "SUCCEEDED", "result": {"ok": True}, "error": None,
                                                      "ts": T0 + 2_500}
    again = dom.on_result(late.state, "c-1", S.SUCCEEDED, T0 + 2_600, {"ok": True})
    assert again.outcome is dom.Outcome.DUPLICATE


@pytest.mark.parametrize("fn", [
    lambda s: dom.on_ack(s, "nope", T0), lambda s: dom.on_result(s, "nope", S.FAILED, T0),
    lambda s: dom.cancel(s, "nope", "bob", T0),
])
def test_unknown_commands(fn):
    out = fn(fresh())
    assert out.outcome is dom.Outcome.UNKNOWN_COMMAND and out.transitions == ()


def test_on_result_refuses_a_platform_state():
    with pytest.raises(ValueError):
        dom.on_result(fresh(), "c-1", S.TIMED_OUT, T0)


@pytest.mark.parametrize("setup, ok", [
    (lambda s: s, True),  # QUEUED
    (lambda s: dom.on_connect(s, T0 + 1).state, True),  # SENT
    (lambda s: dom.on_ack(dom.on_connect(s, T0 + 1).state, "c-1", T0 + 2).state, True),  # IN_PROGRESS
    (lambda s: dom.on_timer(s, T0 + 60_000).state, False),  # EXPIRED
])
def test_cancel_only_while_not_final(setup, ok):
    state = setup(submit(fresh(), req()))
    out = dom.cancel(state, "c-1", "bob", T0 + 3)
    if ok:
        assert states(out.state) == {"c-1": S.CANCELED} and out.transitions[0].reason == "canceled by bob"
    else:
        assert out.outcome is dom.Outcome.NOT_CANCELABLE and out.state is state


# --- timers ------------------------------------------------------------------------------------

def test_timers_expire_queued_and_time_out_sent():
    state = submit(fresh(), req("q", ttl_ms=10_000))
    state = dom.on_connect(state, T0 + 1).state  # q SENT, deadline T0 + 5001
    state = dom.on_disconnect(state, T0 + 2).state  # q back to QUEUED
    state = submit(state, req("r", at=T0 + 3, ttl_ms=20_000))
    assert dom.next_timer(state) == T0 + 10_000
    assert dom.on_timer(state, T0 + 9_999).transitions == ()
    out = dom.on_timer(state, T0 + 10_000)
    assert states(out.state) == {"q": S.EXPIRED, "r": S.QUEUED}
    state = dom.on_connect(out.state, T0 + 11_000).state
    assert dom.next_timer(state) == T0 + 16_000
    out = dom.on_timer(state, T0 + 16_000)
    assert states(out.state) == {"q": S.EXPIRED, "r": S.TIMED_OUT}
    assert dom.next_timer(out.state) is None


def test_one_hanging_command_never_blocks_the_next():
    state = submit(fresh(online=True), req("slow", timeout_ms=60_000), req("fast", at=T0 + 1))
    assert states(state) == {"slow": S.SENT, "fast": S.SENT}
    state = dom.on_result(state, "fast", S.SUCCEEDED, T0 + 2).state
    assert states(state) == {"slow": S.SENT, "fast": S.SUCCEEDED}


def test_prune_compacts_old_final_commands_then_forgets_them():
    state = submit(fresh(online=True), req("a", params={"big": "x" * 1000}), req("b"))
    state = dom.on_result(state, "a", S.SUCCEEDED, T0 + 10, {"out": "y" * 1000}).state
    assert dom.prune(state, T0 + 100, 1_000) is state
    assert dom.next_prune(state, 1_000) == T0 + 1_010
    pruned = dom.prune(state, T0 + 1_010, 1_000)
    assert set(pruned.commands) == {"b"} and set(pruned.ended) == {"a"}
    assert len(dom.encode(pruned)) < len(dom.encode(state)) - 1_500  # params, result, history are gone
    assert dom.decode(dom.encode(pruned)) == pruned
    # What an Ended command still answers: a repeated submission, another body, a late result, a cancel.
    assert dom.submit(pruned, req("a", params={"big": "x" * 1000})).outcome is dom.Outcome.DUPLICATE
    assert dom.submit(pruned, req("a", params={"other": 1})).code == dom.COMMAND_ID_CONFLICT
    assert dom.on_result(pruned, "a", S.FAILED, T0 + 2_000).outcome is dom.Outcome.DUPLICATE
    assert dom.on_ack(pruned, "a", T0 + 2_000).outcome is dom.Outcome.IGNORED
    assert dom.cancel(pruned, "a", "ops", T0 + 2_000).outcome is dom.Outcome.NOT_CANCELABLE
    assert dom.next_prune(pruned, 1_000) == T0 + 10 + dom.REMEMBER_ENDED_MS
    forgotten = dom.prune(pruned, T0 + 10 + dom.REMEMBER_ENDED_MS, 1_000)
    assert forgotten.ended == {} and set(forgotten.commands) == {"b"}
    assert dom.on_result(forgotten, "a", S.SUCCEEDED, T0 + 2_000).outcome is dom.Outcome.UNKNOWN_COMMAND


def test_a_device_remembers_at_most_max_ended_commands_the_newest():
    state = fresh(online=True)
    n = dom.MAX_ENDED + 5
    for i in range(n):
        state = dom.submit(state, req(f"c{i}", at=T0 + i)).state
        state = dom.on_result(state, f"c{i}", S.SUCCEEDED, T0 + i).state
    pruned = dom.prune(state, T0 + n + 1_000, 1_000)
    assert len(pruned.ended) == dom.MAX_ENDED and "c0" not in pruned.ended and f"c{n - 1}" in pruned.ended
    assert pruned.commands == {}


def test_encoding_round_trips():
    state = submit(fresh(online=True), req("a", params={"x": [1, {"y": None}]}), req("b"))
    state = dom.on_result(dom.on_ack(state, "a", T0 + 1).state, "a", S.FAILED, T0 + 2, {"code": 3}, "bad").state
    assert dom.decode(dom.encode(state)) == state


# --- properties --------------------------------------------------------------------------------

IDS = st.sampled_from(["c-0", "c-1", "c-2", "c-3"])
EVENTS = st.one_of(
    st.tuples(st.just("submit"), IDS, st.integers(1_000, 5_000), st.integers(0, 10_000)),
    st.tuples(st.just("connect")), st.tuples(st.just("disconnect")),
    st.tuples(st.just("ack"), IDS),
    st.tuples(st.just("result"), IDS, st.sampled_from(sorted(dom.RESULT_STATES, key=lambda s: s.value))),
    st.tuples(st.just("cancel"), IDS),
    st.tuples(st.just("timer")),
)


def _run(state, event, now):
    kind = event[0]
    if kind == "submit":
        out = dom.submit(state, req(event[1], at=now, timeout_ms=event[2], ttl_ms=event[3]), RULES)
        return out if isinstance(out, dom.Step) else dom.Step(state)
    if kind == "connect":
        return dom.on_connect(state, now)
    if kind == "disconnect":
        return dom.on_disconnect(state, now)
    if kind == "ack":
        return dom.on_ack(state, event[1], now)
    if kind == "result":
        return dom.on_result(state, event[1], event[2], now)
    if kind == "cancel":
        return dom.cancel(state, event[1], "bob", now)
    return dom.on_timer(state, now)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.integers(0, 3_000)), max_size=25))
@example([(("connect",), 0), (("submit", "c-0", 1000, 0), 0), (("disconnect",), 10), (("timer",), 5000)])
@example([(("submit", "c-0", 1000, 100), 0), (("timer",), 100), (("result", "c-0", S.SUCCEEDED), 1)])
@example([(("connect",), 0), (("submit", "c-0", 1000, 5000), 0), (("ack", "c-0"), 1), (("disconnect",), 1),
          (("connect",), 1), (("timer",), 1000)])
def test_lifecycle_properties(events):
    state, now = fresh(), T0
    for event, dt in events:
        now += dt
        before = {k: (c.state, c.history) for k, c in state.commands.items()}
        out = _run(state, event, now)
        after = out.state
        for cid, (old_state, history) in before.items():
            cmd = after.commands[cid]
            assert cmd.history[:len(history)] == history  # history only grows
            if old_state.final:
                assert cmd.state is old_state and cmd.history == history  # final is final
        for t in out.transitions:
            assert t.from_state is None or t.to_state in dom.ALLOWED[t.from_state]
            assert t.ts == now
        for c in out.send:
            assert c.state is S.SENT and now <= c.expires_at  # an expired command is never sent (ttl 0: only now)
        assert [c.seq for c in out.send] == sorted(c.seq for c in out.send)
        assert dom.decode(dom.encode(after)) == after
        state = after
    # every command ends, given its timers
    rounds = 0
    while (t := dom.next_timer(state)) is not None:
        step = dom.on_timer(state, max(t, now))
        assert step.transitions  # a timer that is due always moves something
        state, rounds = step.state, rounds + 1
    assert rounds <= len(state.commands)
    assert all(c.state.final for c in state.commands.values())


# --- the shared vectors (tests/vectors/commands), for a second core to replay too --------------

COMMAND_VECTORS = command_replay.vector_files()


def test_the_command_vectors_are_there():
    assert len(COMMAND_VECTORS) >= 5


@pytest.mark.parametrize("path", COMMAND_VECTORS, ids=[p.stem for p in COMMAND_VECTORS])
def test_command_vector(path):
    vector = json.loads(path.read_text())
    outputs = command_replay.run(vector)
    for index, (step, output) in enumerate(zip(vector["steps"], outputs, strict=True)):
        assert output == step["expect"], f"{vector['name']} step {index}: {step}"
