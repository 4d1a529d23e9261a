"""Device-side commands (device/commands.py, device/dedup_store.py) and the agent's downlink wiring."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from device.agent import AgentConfig, DeviceAgent
from device.commands import (
    CommandFailed,
    CommandProcessor,
    CommandRefused,
    CommandRegistry,
    Reply,
    SerialLane,
)
from device.dedup_store import DedupStore
from device.identity import enroll_locally
from fleet.contract.topics import Uplink
from fleet.contract.validation import SchemaViolation, default_validators
from fleet.identity.pki import LocalPKI

NOW = 1_700_000_000_000


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def cmd(command_id="c-1", name="echo", params=None, expires_at=NOW + 60_000, **extra) -> bytes:
    body = {"command_id": command_id, "name": name, "params": {} if params is None else params,
            "expires_at": expires_at, **extra}
    return raw(body)


class Harness:
    def __init__(self, path=None, clock=lambda: NOW, **kw):
        self.registry = CommandRegistry()
        self.calls: list[dict] = []

        def echo(params):
            self.calls.append(params)
            return {"echo": params}

        self.registry.register("echo", echo)
        self.store = DedupStore(path)
        self.processor = CommandProcessor(self.registry, self.store, clock=clock, **kw)
        self.out = []

    def run(self, payload: bytes):
        self.out = []
        self.processor.process(payload, self.out.append)
        return [(m.suffix, m.payload) for m in self.out]


def result_schema():
    return default_validators()[Uplink.COMMAND_RESULT]


def test_receipt_then_result():
    h = Harness()
    out = h.run(cmd(params={"x": 1}))
    assert out == [("commands/c-1/result", {"status": "IN_PROGRESS"}),
                   ("commands/c-1/result", {"status": "SUCCEEDED", "result": {"echo": {"x": 1}}})]
    assert h.calls == [{"x": 1}]
    for _, payload in out:
        result_schema().check(payload)


def test_the_receipt_is_published_before_the_handler_runs():
    h = Harness()
    seen_at_call = []
    h.registry.register("look", lambda params: seen_at_call.append(list(h.out)) or {})
    h.run(cmd(name="look"))
    assert [m.payload for m in seen_at_call[0]] == [{"status": "IN_PROGRESS"}]


def test_repeat_gets_the_stored_result_and_never_runs_twice():
    h = Harness()
    first = h.run(cmd())
    assert h.run(cmd()) == [first[-1]]
    assert len(h.calls) == 1


def test_dedup_survives_a_restart(tmp_path):
    path = tmp_path / "command-results.json"
    h = Harness(path)
    final = h.run(cmd(params={"n": 1}))[-1]
    restarted = Harness(path)  # new store instance on the same file, new processor
    assert restarted.run(cmd(params={"n": 1})) == [final]
    assert restarted.calls == []


def test_a_command_cut_short_by_a_restart_is_failed_not_run_again(tmp_path):
    path = tmp_path / "r.json"
    DedupStore(path).put("c-1", {"status": "IN_PROGRESS"}, NOW, NOW + 60_000)  # died while running
    h = Harness(path)
    out = h.run(cmd())
    assert h.calls == []
    assert out == [("commands/c-1/result", {"status": "FAILED",
                                            "error": "interrupted: the agent restarted while the command ran"})]
    assert Harness(path).run(cmd()) == out


def test_expired_command_is_rejected_and_not_run():
    h = Harness(expiry_grace_ms=2_000)
    assert h.run(cmd(expires_at=NOW - 2_001)) == [("commands/c-1/result", {"status": "REJECTED", "error": "expired"})]
    assert h.calls == []
    # Within the grace (clock skew; a ttl-0 command is sent at its expiry time) it runs.
    assert h.run(cmd(command_id="c-2", expires_at=NOW - 2_000))[-1][1]["status"] == "SUCCEEDED"
    # A repeat of the expired one gets the same answer.
    assert h.run(cmd(expires_at=NOW - 2_001)) == [("commands/c-1/result", {"status": "REJECTED", "error": "expired"})]


def test_no_expires_at_never_expires():
    h = Harness()
    payload = {"command_id": "c-1", "name": "echo", "params": {}}
    assert h.run(raw(payload))[-1][1]["status"] == "SUCCEEDED"


def test_unknown_command_is_rejected():
    h = Harness()
    out = h.run(cmd(name="self_destruct"))
    assert out == [("commands/c-1/result", {"status": "REJECTED", "error": "unknown_command"})]
    result_schema().check(out[0][1])


def test_handler_exception_is_failed_with_its_text():
    h = Harness()

    def boom(params):
        raise ValueError("sensor offline")

    h.registry.register("boom", boom)
    out = h.run(cmd(name="boom"))
    assert out[0][1] == {"status": "IN_PROGRESS"}
    assert out[1][1] == {"status": "FAILED", "error": "ValueError: sensor offline"}
    result_schema().check(out[1][1])


def test_handler_signals_failed_and_refused():
    h = Harness()

    def fail(params):
        raise CommandFailed("disk full")

    def refuse(params):
        raise CommandRefused("not in maintenance mode")

    h.registry.register("fail", fail)
    h.registry.register("refuse", refuse)
    assert h.run(cmd("a", "fail"))[-1][1] == {"status": "FAILED", "error": "disk full"}
    assert h.run(cmd("b", "refuse"))[-1][1] == {"status": "REJECTED", "error": "not in maintenance mode"}


def test_long_error_text_is_cut_to_the_schema_limit():
    h = Harness()

    def boom(params):
        raise CommandFailed("x" * 5000)

    h.registry.register("boom", boom)
    payload = h.run(cmd(name="boom"))[-1][1]
    assert len(payload["error"]) == 1024
    result_schema().check(payload)


@pytest.mark.parametrize("value, status, expect", [
    (None, "SUCCEEDED", None),
    ({"a": [1, 2]}, "SUCCEEDED", {"a": [1, 2]}),
    (Reply({"r": 1}), "SUCCEEDED", {"r": 1}),
    ([1, 2], "FAILED", "handler returned list, not an object"),
    ({"t": object()}, "FAILED", "result is not JSON"),
    ({"nan": float("nan")}, "FAILED", "result is not JSON"),
    ({f"k{i}": i for i in range(257)}, "FAILED", "result has more than 256 keys"),
])
def test_handler_results(value, status, expect):
    h = Harness()
    h.registry.register("r", lambda params: value)
    payload = h.run(cmd(name="r"))[-1][1]
    assert payload["status"] == status
    if status == "SUCCEEDED":
        assert payload.get("result") == expect
    else:
        assert payload["error"].startswith(expect)
    result_schema().check(payload)


def test_reply_carries_the_after_ack_action():
    h = Harness()
    action = lambda: None  # noqa: E731
    h.registry.register("r", lambda params: Reply({"ok": True}, after_ack=action))
    h.run(cmd(name="r"))
    assert h.out[0].after_ack is None and h.out[1].after_ack is action


@pytest.mark.parametrize("payload", [
    b"", b"{", b"\xff", b"[]", b"null", b"7", raw({"name": "echo"}), raw({"command_id": 5, "name": "echo"}),
    raw({"command_id": "", "name": "echo"}), raw({"command_id": "a/b", "name": "echo"}),
    raw({"command_id": "+", "name": "echo"}), raw({"command_id": "x" * 65, "name": "echo"}),
])
def test_payloads_without_a_usable_command_id_are_ignored(payload):
    h = Harness()
    assert h.run(payload) == [] and h.calls == [] and len(h.store) == 0


@pytest.mark.parametrize("payload, error", [
    (cmd(name=5), "invalid_command: name"),
    (cmd(name=""), "invalid_command: name"),
    (cmd(name="1abc"), "invalid_command: name"),
    (cmd(params=[1]), "invalid_command: params"),
    (cmd(params="x"), "invalid_command: params"),
    (cmd(expires_at="soon"), "invalid_command: expires_at"),
    (cmd(expires_at=1.5), "invalid_command: expires_at"),
    (cmd(expires_at=True), "invalid_command: expires_at"),
])
def test_malformed_commands_are_rejected_with_the_reason(payload, error):
    h = Harness()
    out = h.run(payload)
    assert len(out) == 1 and out[0][1]["status"] == "REJECTED" and out[0][1]["error"].startswith(error)
    assert h.calls == []
    result_schema().check(out[0][1])


def test_unknown_fields_are_tolerated():
    assert Harness().run(cmd(priority="high"))[-1][1]["status"] == "SUCCEEDED"


def test_registry():
    reg = CommandRegistry()
    fn = reg.register("a.b-c_1", lambda p: None)
    assert reg.get("a.b-c_1") is fn and reg.names == ["a.b-c_1"]
    reg.unregister("a.b-c_1")
    assert reg.get("a.b-c_1") is None
    with pytest.raises(ValueError):
        reg.register("bad name", lambda p: None)


# -- the result schema -----------------------------------------------------------------------------

@pytest.mark.parametrize("payload, ok", [
    ({"status": "IN_PROGRESS"}, True),
    ({"status": "IN_PROGRESS", "ts": NOW}, True),
    ({"status": "IN_PROGRESS", "result": {}}, False),
    ({"status": "IN_PROGRESS", "error": "x"}, False),
    ({"status": "SUCCEEDED", "result": {"a": 1}}, True),
    ({"status": "REJECTED", "error": "expired"}, True),
    ({"status": "QUEUED"}, False),
])
def test_result_schema_accepts_the_receipt(payload, ok):
    schema = result_schema()
    assert schema.is_valid(payload) is ok
    assert schema.reference.is_valid(payload) is ok
    if not ok:
        with pytest.raises(SchemaViolation):
            schema.check(payload)


# -- the dedup store ------------------------------------------------------------------------------

def test_dedup_store_keeps_the_last_n(tmp_path):
    store = DedupStore(tmp_path / "d.json", max_entries=3)
    for i in range(5):
        store.put(f"c{i}", {"status": "SUCCEEDED"}, NOW + i)
    assert [c in store for c in ("c0", "c1", "c2", "c3", "c4")] == [False, False, True, True, True]
    assert len(DedupStore(tmp_path / "d.json", max_entries=3)) == 3


def test_dedup_store_forgets_after_retention_past_expiry(tmp_path):
    store = DedupStore(tmp_path / "d.json", retention_ms=1_000)
    store.put("late-expiry", {"status": "SUCCEEDED"}, NOW, expires_at=NOW + 10_000)
    store.put("no-expiry", {"status": "SUCCEEDED"}, NOW)
    store.put("trigger", {"status": "SUCCEEDED"}, NOW + 1_001)
    assert "no-expiry" not in store and "late-expiry" in store
    store.put("trigger2", {"status": "SUCCEEDED"}, NOW + 11_001)
    assert "late-expiry" not in store and store.get("trigger2") == {"status": "SUCCEEDED"}


def test_dedup_store_ignores_a_damaged_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b"\x00garbage")
    assert len(DedupStore(path)) == 0
    path.write_text(json.dumps({"results": {"ok": {"payload": {"status": "FAILED"}, "stored_at": NOW},
                                            "bad": {"payload": "x", "stored_at": NOW}, "bad2": 3}}))
    store = DedupStore(path)
    assert "ok" in store and "bad" not in store and "bad2" not in store


# -- the worker lane ------------------------------------------------------------------------------

def test_lane_runs_in_order_and_a_slow_lane_does_not_hold_back_another():
    release = threading.Event()
    order = []
    slow, fast = SerialLane(name="slow"), SerialLane(name="fast")
    slow.submit(lambda: (release.wait(5), order.append("slow-1")))
    slow.submit(lambda: order.append("slow-2"))
    for i in range(3):
        fast.submit(order.append, f"fast-{i}")
    assert fast.wait_idle(5)
    assert order == ["fast-0", "fast-1", "fast-2"]
    release.set()
    assert slow.wait_idle(5)
    assert order[3:] == ["slow-1", "slow-2"]


def test_lane_survives_a_failing_task():
    lane, done = SerialLane(), []
    lane.submit(lambda: 1 / 0)
    lane.submit(done.append, 1)
    assert lane.wait_idle(5) and done == [1]


# -- the agent's wiring (no broker) ---------------------------------------------------------------

class InlineExecutor:
    def submit(self, fn, *args):
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = LocalPKI(tmp_path_factory.mktemp("pki"))
    p.ensure()
    return p


@pytest.fixture
def agent(pki, tmp_path, monkeypatch):
    ident = enroll_locally(pki, "dev-1", tmp_path / "dev-1")
    a = DeviceAgent(ident, AgentConfig("localhost", 1, reboot_delay=0.5), executor=InlineExecutor())
    a.published = []
    monkeypatch.setattr(a.loop, "call_soon", lambda fn, *args: fn(*args))

    def publish(topic, payload, seq, retain=False, then=None):
        a.published.append((topic, json.loads(payload), retain, then))
        return True

    monkeypatch.setattr(a, "_publish", publish)
    yield a
    a.seq.close()


def deliver(agent, suffix, payload):
    agent._on_message(agent.client, None, SimpleNamespace(topic=f"devices/{agent.device_id}/{suffix}", payload=payload))


def test_agent_connect_subscribes_before_announcing_online_then_gets_the_shadow(agent, monkeypatch):
    calls = []
    monkeypatch.setattr(agent.client, "subscribe", lambda subs: calls.append(("subscribe", subs)))
    agent._on_connect(agent.client, None, None, SimpleNamespace(is_failure=False), None)
    (kind, subs), = calls
    assert [(t, o.QoS, o.noLocal) for t, o in subs] == [("devices/dev-1/shadow/#", 1, True),
                                                        ("devices/dev-1/commands", 1, False),
                                                        ("devices/dev-1/ota/notify", 1, False)]
    assert [p[0] for p in agent.published] == ["devices/dev-1/status", "devices/dev-1/shadow/get"]


def test_agent_routes_commands_and_answers_on_the_result_topic(agent):
    agent.commands.register("ping", lambda params: {"pong": params.get("n")})
    deliver(agent, "commands", cmd("c-9", "ping", {"n": 3}, expires_at=int(time.time() * 1000) + 60_000))
    assert [(t, p) for t, p, _, _ in agent.published] == [
        ("devices/dev-1/commands/c-9/result", {"status": "IN_PROGRESS"}),
        ("devices/dev-1/commands/c-9/result", {"status": "SUCCEEDED", "result": {"pong": 3}})]


def test_agent_applies_a_delta_and_reports_it(agent):
    deliver(agent, "shadow/delta", raw({"version": 2, "state": {"led": "on"}, "metadata": {}, "timestamp": 1}))
    deliver(agent, "shadow/name/fw/delta", raw({"version": 1, "state": {"v": 2}}))
    deliver(agent, "shadow/update", raw({"state": {"reported": {"x": 1}}}))  # our own echo: not downlink
    deliver(agent, "telemetry", b"whatever")
    topics = [t for t, *_ in agent.published]
    assert topics == ["devices/dev-1/shadow/update", "devices/dev-1/shadow/name/fw/update"]
    assert agent.published[0][1]["state"] == {"reported": {"led": "on"}}
    assert agent.shadow.reported() == {"led": "on"} and agent.shadow.version() == 2


def test_agent_ignores_broken_downlink(agent):
    for suffix in ("commands", "shadow/delta", "shadow/document", "shadow/rejected", "shadow/name/x/delta"):
        for payload in (b"", b"{", b"\xff\xfe", b"[]", b"null"):
            deliver(agent, suffix, payload)
    assert agent.published == []


def test_set_config_merges_into_the_reported_config(agent):
    exp = int(time.time() * 1000) + 60_000
    deliver(agent, "commands", cmd("c-1", "set_config", {"rate": 5, "unit": "C"}, expires_at=exp))
    deliver(agent, "commands", cmd("c-2", "set_config", {"rate": 10, "unit": None}, expires_at=exp))
    results = [p for t, p, _, _ in agent.published if t.endswith("/result") and p["status"] != "IN_PROGRESS"]
    assert results == [{"status": "SUCCEEDED", "result": {"config": {"rate": 5, "unit": "C"}}},
                       {"status": "SUCCEEDED", "result": {"config": {"rate": 10}}}]
    updates = [p["state"]["reported"] for t, p, _, _ in agent.published if t.endswith("/shadow/update")]
    assert updates == [{"config": {"rate": 5, "unit": "C"}}, {"config": {"rate": 10, "unit": None}}]
    assert agent.shadow.reported() == {"config": {"rate": 10}}
    # The update goes out before the result that tells the operator it is done.
    kinds = [(t.rsplit("/", 1)[-1], p.get("status")) for t, p, _, _ in agent.published][:3]
    assert kinds == [("result", "IN_PROGRESS"), ("update", None), ("result", "SUCCEEDED")]


def test_set_config_refuses_what_the_shadow_would_reject(agent):
    deliver(agent, "commands", cmd("c-1", "set_config", {"bad key": 1}, expires_at=int(time.time() * 1000) + 60_000))
    final = agent.published[-1][1]
    assert final["status"] == "REJECTED" and final["error"].startswith("invalid_key")
    assert agent.shadow.reported() == {}


def test_reboot_answers_first_then_goes_down_and_comes_back(agent, monkeypatch):
    monkeypatch.setattr(agent.client, "is_connected", lambda: True)
    disconnects = []
    monkeypatch.setattr(agent.client, "disconnect", lambda *a, **k: disconnects.append(1))
    deliver(agent, "commands", cmd("c-1", "reboot", {"delay_s": 0.5}, expires_at=int(time.time() * 1000) + 60_000))
    topic, result, _, then = agent.published[-1]
    assert result == {"status": "SUCCEEDED", "result": {"rebooting": True, "delay_s": 0.5}} and then is not None
    assert disconnects == []  # nothing happens before the result is acknowledged
    then()  # the result's PUBACK
    topic, status, retain, then = agent.published[-1]
    assert topic == "devices/dev-1/status" and status["online"] is False and status["reason"] == "reboot" and retain
    assert disconnects == []
    then()  # the offline status's PUBACK
    assert disconnects == [1]
    agent._on_disconnect(agent.client, None, None, 0, None)
    timer = agent._reconnect_timer
    assert timer is not None and timer.fn == agent._connect and 0.3 < timer.when - time.monotonic() <= 0.5


def test_reboot_refuses_a_bad_delay(agent):
    deliver(agent, "commands", cmd("c-1", "reboot", {"delay_s": "soon"}, expires_at=int(time.time() * 1000) + 60_000))
    assert agent.published[-1][1]["status"] == "REJECTED"


def test_agent_state_survives_a_restart(pki, tmp_path):
    ident = enroll_locally(pki, "dev-2", tmp_path / "dev-2")
    first = DeviceAgent(ident, AgentConfig("localhost", 1), executor=InlineExecutor())
    first.shadow.handle("", "delta", raw({"version": 4, "state": {"a": 1}}))
    first._command_processor.process(cmd("c-1", "set_config", {"k": 1}, expires_at=int(time.time() * 1000) + 60_000),
                                     lambda m: None)
    first.seq.close()
    again = DeviceAgent(ident, AgentConfig("localhost", 1), executor=InlineExecutor())
    assert again.shadow.version() == 4 and again.shadow.reported() == {"a": 1, "config": {"k": 1}}
    out = []
    again._command_processor.process(cmd("c-1", "set_config", {"k": 1}), out.append)
    assert [m.payload for m in out] == [{"status": "SUCCEEDED", "result": {"config": {"k": 1}}}]
    again.seq.close()
    assert DeviceAgent(ident, AgentConfig("localhost", 1), persist_seq=False).shadow.version() is None
