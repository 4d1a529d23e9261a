"""jobs.commands.logic: routing, checks and output records around fleet.commands.domain (no Flink)."""

from __future__ import annotations

import json

import pytest

from fleet.commands import domain as dom
from fleet.contract.validation import kafka_schema
from jobs.commands import logic
from jobs.commands.logic import fire, handle
from jobs.keyed_state import MemoryCell

T0 = 1_767_225_600_000


def submit(command_id="c-1", device="d-1", name="reboot", params=None, timeout_ms=5_000, ttl_ms=60_000, at=T0,
           **extra) -> str:
    return json.dumps({"op": "submit", "command_id": command_id, "device_id": device, "name": name,
                       "params": {"delay_s": 1} if params is None else params, "timeout_ms": timeout_ms,
                       "ttl_ms": ttl_ms, "created_by": "alice", "created_at": at, **extra})


def cancel(command_id="c-1", device="d-1", at=T0) -> str:
    return json.dumps({"op": "cancel", "command_id": command_id, "device_id": device, "by": "bob", "ts": at})


def status(online: bool, device="d-1", at=T0) -> str:
    return json.dumps({"device_id": device, "type": "status", "ts": at, "ingest_ts": at,
                       "mqtt_topic": f"devices/{device}/status", "payload": {"online": online}})


def result(command_id="c-1", status="SUCCEEDED", device="d-1", at=T0, **payload) -> str:
    return json.dumps({"device_id": device, "type": "command_result", "ts": at, "ingest_ts": at,
                       "mqtt_topic": f"devices/{device}/commands/{command_id}/result", "command_id": command_id,
                       "payload": {"status": status, **payload}})


def of(handled, kind):
    return [o.value for o in handled.outputs if o.kind == kind]


def moves(handled):
    return [(e["command_id"], e["from"], e["to"]) for e in of(handled, logic.EVENT)]


def check_schemas(handled):
    for e in of(handled, logic.EVENT):
        assert kafka_schema("command-event").is_valid(e), e
    for d in of(handled, logic.DOWNLINK):
        assert kafka_schema("downlink").is_valid(d), d
    for d in of(handled, logic.DEAD_LETTER):
        assert kafka_schema("dead-letter").is_valid(d), d


def test_offline_queue_then_connect_sends_in_order_then_ack_and_result():
    cell = MemoryCell()
    h1 = handle("d-1", submit("c-1"), T0 + 1, cell)
    h2 = handle("d-1", submit("c-2", at=T0 + 5), T0 + 6, cell)
    assert moves(h1) == [("c-1", None, "QUEUED")] and of(h1, logic.DOWNLINK) == []
    assert h1.wake_at == T0 + 60_000 and h2.wake_at == T0 + 60_000  # the TTL of the oldest queued
    on = handle("d-1", status(True), T0 + 100, cell)
    assert moves(on) == [("c-1", "QUEUED", "SENT"), ("c-2", "QUEUED", "SENT")]
    down = of(on, logic.DOWNLINK)
    assert [(d["suffix"], d["payload"]["command_id"], d["expires_at"]) for d in down] == [
        ("commands", "c-1", T0 + 100 + 5_000), ("commands", "c-2", T0 + 100 + 5_000)]
    assert down[0]["payload"] == {"command_id": "c-1", "name": "reboot", "params": {"delay_s": 1},
                                  "expires_at": T0 + 60_000}
    assert on.wake_at == T0 + 5_100  # the deadline
    ack = handle("d-1", result("c-1", "IN_PROGRESS"), T0 + 200, cell)
    done = handle("d-1", result("c-1", "SUCCEEDED", result={"ok": True}), T0 + 300, cell)
    assert moves(ack) == [("c-1", "SENT", "IN_PROGRESS")]
    assert moves(done) == [("c-1", "IN_PROGRESS", "SUCCEEDED")]
    event = of(done, logic.EVENT)[0]
    assert event["result"] == {"ok": True} and event["command"]["state"] == "SUCCEEDED"
    [row] = of(done, logic.COMMAND)
    assert (row["command_id"], row["device_id"], row["state"], row["created_at"], row["updated_at"]) == (
        "c-1", "d-1", "SUCCEEDED", T0, T0 + 300)
    assert json.loads(row["command"])["result"] == {"ok": True}
    for h in (h1, h2, on, ack, done):
        check_schemas(h)


def test_the_deadline_fires_timed_out_and_a_late_result_is_kept():
    cell = MemoryCell()
    handle("d-1", status(True), T0, cell)
    sent = handle("d-1", submit(timeout_ms=2_000), T0 + 1, cell)
    assert moves(sent) == [("c-1", None, "QUEUED"), ("c-1", "QUEUED", "SENT")] and sent.wake_at == T0 + 2_000
    assert of(fire("d-1", T0 + 1_999, cell), logic.EVENT) == []  # early: nothing yet
    timed = fire("d-1", T0 + 2_000, cell)
    assert moves(timed) == [("c-1", "SENT", "TIMED_OUT")]
    assert timed.wake_at == T0 + 2_000 + logic.DEFAULT_KEEP_FINAL_MS  # only the prune is left
    late = handle("d-1", result(status="SUCCEEDED", result={"v": 1}), T0 + 3_000, cell)
    assert moves(late) == [] and of(late, logic.DEAD_LETTER) == []
    [row] = of(late, logic.COMMAND)
    assert row["state"] == "TIMED_OUT" and json.loads(row["command"])["late_result"]["result"] == {"v": 1}
    assert row["write_ts"] > of(timed, logic.COMMAND)[0]["write_ts"]
    pruned = fire("d-1", T0 + 2_000 + logic.DEFAULT_KEEP_FINAL_MS, cell)
    state = dom.decode(cell.value)
    assert state.commands == {} and state.ended["c-1"].state is dom.State.TIMED_OUT
    assert pruned.wake_at == T0 + 2_000 + dom.REMEMBER_ENDED_MS  # then it is forgotten too
    again = handle("d-1", result(status="SUCCEEDED", result={"v": 1}), T0 + 2_000 + logic.DEFAULT_KEEP_FINAL_MS + 1, cell)
    assert again.outputs == []  # a repeat of a compacted command: nothing, not a dead letter
    forgotten = fire("d-1", T0 + 2_000 + dom.REMEMBER_ENDED_MS, cell)
    assert forgotten.wake_at is None and dom.decode(cell.value).ended == {}


def test_queued_past_its_ttl_expires_by_timer_and_is_never_sent():
    cell = MemoryCell()
    handle("d-1", submit(ttl_ms=1_000), T0, cell)
    expired = fire("d-1", T0 + 1_000, cell)
    assert moves(expired) == [("c-1", "QUEUED", "EXPIRED")]
    assert of(handle("d-1", status(True), T0 + 2_000, cell), logic.DOWNLINK) == []


def test_cancel_and_its_refusals():
    cell = MemoryCell()
    handle("d-1", submit(), T0, cell)
    canceled = handle("d-1", cancel(), T0 + 1, cell)
    assert moves(canceled) == [("c-1", "QUEUED", "CANCELED")]
    again = handle("d-1", cancel(), T0 + 2, cell)
    [event] = of(again, logic.EVENT)
    assert (event["type"], event["op"], event["rejection"]["status"], event["rejection"]["code"]) == (
        "rejected", "cancel", 409, "not_cancelable")
    unknown = of(handle("d-1", cancel("nope"), T0 + 3, cell), logic.EVENT)[0]
    assert unknown["rejection"]["status"] == 404
    check_schemas(again)


def test_submit_refusals_are_events_for_the_waiting_api():
    cell = MemoryCell()
    handle("d-1", submit(), T0, cell)
    dup = handle("d-1", submit(), T0 + 1, cell)
    assert dup.outputs == []  # the same request again: nothing
    conflict = of(handle("d-1", submit(params={"other": 1}), T0 + 2, cell), logic.EVENT)[0]
    assert (conflict["rejection"]["code"], conflict["rejection"]["status"]) == ("command_id_conflict", 409)
    full = MemoryCell()
    rules = dom.CommandRules(max_pending_per_device=1)
    handle("d-1", submit("a"), T0, full, rules)
    [event] = of(handle("d-1", submit("b"), T0, full, rules), logic.EVENT)
    assert (event["rejection"]["code"], event["rejection"]["status"]) == ("queue_full", 429)
    bad = handle("d-1", submit(timeout_ms="soon"), T0, MemoryCell())
    assert [o.kind for o in bad.outputs] == [logic.DEAD_LETTER, logic.EVENT]
    assert of(bad, logic.EVENT)[0]["rejection"]["status"] == 400
    check_schemas(bad)


def test_a_disconnect_requeues_unacknowledged_commands_and_reconnect_resends():
    cell = MemoryCell()
    handle("d-1", status(True), T0, cell)
    handle("d-1", submit(), T0, cell)
    off = handle("d-1", status(False), T0 + 10, cell)
    assert moves(off) == [("c-1", "SENT", "QUEUED")]
    on = handle("d-1", status(True), T0 + 20, cell)
    assert [d["payload"]["command_id"] for d in of(on, logic.DOWNLINK)] == ["c-1"]


@pytest.mark.parametrize("raw, key, reason", [
    ("{oops", "d-1", "invalid_json"),
    ("[1]", "d-1", "invalid_envelope"),
    (json.dumps({"device_id": "d-1", "type": "telemetry", "payload": {}}), "d-1", "invalid_envelope"),
    (submit(device="d-2"), "d-1", "key_mismatch"),
    (submit(device="bad id"), "d-1", "invalid_device_id"),
    (result(status="DONE"), "d-1", "schema_violation"),
    (result(result=[1]), "d-1", "schema_violation"),
    (result("unknown"), "d-1", "schema_violation"),
    (status(None), "d-1", "schema_violation"),  # type: ignore[arg-type]
    (json.dumps({"op": "explode", "command_id": "c", "device_id": "d-1"}), "d-1", "schema_violation"),
])
def test_malformed_records_are_dead_lettered(raw, key, reason):
    handled = handle(key, raw, T0, MemoryCell())
    letters = of(handled, logic.DEAD_LETTER)
    assert [d["reason"] for d in letters] == [reason], handled.outputs
    check_schemas(handled)


def test_a_result_contradicting_a_final_one_is_dead_lettered_a_repeat_is_not():
    cell = MemoryCell()
    handle("d-1", status(True), T0, cell)
    handle("d-1", submit(), T0, cell)
    handle("d-1", result(), T0 + 1, cell)
    assert handle("d-1", result(), T0 + 2, cell).outputs == []
    letters = of(handle("d-1", result(status="FAILED", error="x"), T0 + 3, cell), logic.DEAD_LETTER)
    assert letters and letters[0]["detail"].startswith("conflicting_result")


def test_request_records_match_their_schema():
    for raw in (submit(), cancel()):
        assert kafka_schema("command-request").is_valid(json.loads(raw))
