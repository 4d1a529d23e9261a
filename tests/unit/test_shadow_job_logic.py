"""jobs.shadow.logic: routing, envelopes and output records around fleet.shadow.domain (no Flink)."""

from __future__ import annotations

import json

import pytest

from jobs.shadow import logic
from jobs.shadow.logic import MemoryState, handle

T0 = 1_704_067_200_000


def env(device="d-1", kind="shadow_update", payload=None, **extra) -> str:
    record = {"device_id": device, "type": kind, "ts": T0, "ingest_ts": T0, "mqtt_topic": f"devices/{device}/x",
              "payload": {"state": {"reported": {"a": 1}}} if payload is None else payload, **extra}
    return json.dumps(record)


def desired(request_id="r1", version=None, state=None, device="d-1") -> str:
    return json.dumps({"request_id": request_id, "device_id": device, "shadow": "",
                       "state": {"desired": {"x": 1}} if state is None else state, "version": version,
                       "actor": "ops", "ts": T0})


def kinds(outputs):
    return [(o.kind, o.value.get("suffix") or o.value.get("reason") or o.value.get("status")) for o in outputs]


def test_device_report_is_accepted_stored_and_historied():
    state = MemoryState()
    out = handle("d-1", env(payload={"state": {"reported": {"a": 1}}, "client_token": "t"}), T0 + 5, state)
    assert [o.kind for o in out] == [logic.DOWNLINK, logic.SHADOW, logic.HISTORY]
    assert out[0].value["payload"]["client_token"] == "t" and out[0].key == "d-1"
    assert out[1].value["write_ts"] == logic.shadow_write_ts(1, T0 + 5)
    assert json.loads(state.docs[""])["version"] == 1


def test_write_timestamps_order_by_version_first():
    assert logic.shadow_write_ts(2, 0) > logic.shadow_write_ts(1, 999_999_999_999)
    assert logic.shadow_write_ts(1, T0 + 1) > logic.shadow_write_ts(1, T0)


def test_if_match_conflict_and_verdicts():
    state = MemoryState()
    first = handle("d-1", desired("r1", 0), T0, state)
    second = handle("d-1", desired("r2", 0), T0, state)
    assert kinds(first) == [(logic.VERDICT, 200), (logic.SHADOW, None), (logic.HISTORY, None),
                            (logic.DOWNLINK, "shadow/delta")]
    assert second[0].value | {"ts": 0} == {"request_id": "r2", "device_id": "d-1", "shadow": "", "status": 409,
                                          "code": "version_conflict", "message": second[0].value["message"],
                                          "version": 1, "ts": 0}
    assert len(second) == 1


def test_online_pushes_pending_deltas_of_every_shadow():
    state = MemoryState()
    handle("d-1", env(kind="status", payload={"online": False}), T0, state)
    handle("d-1", desired("r1"), T0, state)
    handle("d-1", json.dumps({**json.loads(desired("r2")), "shadow": "cfg"}), T0, state)
    out = handle("d-1", env(kind="status", payload={"online": True}), T0 + 10, state)
    assert kinds(out) == [(logic.CONNECTIVITY, None), (logic.DOWNLINK, "shadow/delta"),
                          (logic.DOWNLINK, "shadow/name/cfg/delta")]
    assert out[0].value["connected"] is True and out[0].value["connected_since"] == T0


@pytest.mark.parametrize(("key", "raw", "reason"), [
    ("d-1", "{oops", "invalid_json"),
    ("d-1", "[1]", "invalid_envelope"),
    ("d-1", env(kind="telemetry"), "invalid_envelope"),
    ("d-2", env(), "key_mismatch"),
    ("", env(), "key_mismatch"),
    ("d-1", env(kind="status", payload={"online": "yes"}), "schema_violation"),
    ("d-1", desired(state={"reported": {}}), "schema_violation"),
])
def test_bad_records_are_dead_lettered(key, raw, reason):
    out = handle(key, raw, T0, MemoryState())
    assert logic.DEAD_LETTER in [o.kind for o in out]
    assert next(o for o in out if o.kind == logic.DEAD_LETTER).value["reason"] == reason


def test_malformed_device_update_is_rejected_and_dead_lettered():
    out = handle("d-1", env(payload={"state": {"desired": {"a": 1}}}), T0, MemoryState())
    assert kinds(out) == [(logic.DOWNLINK, "shadow/rejected"), (logic.DEAD_LETTER, "schema_violation")]


def test_conflict_rate_limit_and_missing_get_are_answers_not_dead_letters():
    state = MemoryState()
    handle("d-1", env(), T0, state)
    conflict = handle("d-1", env(payload={"state": {"reported": {"a": 2}}, "version": 7}), T0, state)
    missing = handle("d-1", env(kind="shadow_get", payload={}, shadow="other"), T0, state)
    assert kinds(conflict) == [(logic.DOWNLINK, "shadow/rejected")]
    assert kinds(missing) == [(logic.DOWNLINK, "shadow/name/other/rejected")]
    answers = [handle("d-1", env(kind="shadow_get", payload={}), T0, state) for _ in range(30)]
    assert kinds(answers[-1]) == [(logic.DOWNLINK, "shadow/rejected")]
    assert answers[-1][0].value["payload"]["code"] == "rate_limited"
