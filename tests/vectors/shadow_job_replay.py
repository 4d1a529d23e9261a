"""The shadow job's per-record vectors (tests/vectors/shadow_job/*.json): records through
jobs.shadow.logic.handle, for the Java core to replay (ShadowLogicVectorsTest); writes them too.

    .venv/bin/python -m tests.vectors.shadow_job_replay    # regenerate, then read the diff

A vector: ``steps``, each a record as the core receives it (``key``: the Kafka key, ``raw``: the
value's text, ``now``: the job's clock) with ``expect``: every output in order, as ``kind``,
``key`` and ``text``, the exact JSON text the Python core writes (dom.dumps of the record, or of
the row's fields for the Cassandra outputs). The device state carries over from step to step, per
key. Invalid-JSON dead letters are compared without their detail's parser message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet.shadow import domain as dom
from jobs.shadow import logic

VECTOR_DIR = Path(__file__).parent / "shadow_job"
T0 = 1_767_225_600_000


def vector_files() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*.json"))


def run(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    states: dict[str | None, logic.MemoryState] = {}
    outputs = []
    for step in steps:
        state = states.setdefault(step["key"], logic.MemoryState())
        outs = logic.handle(step["key"], step["raw"], step["now"], state)
        outputs.append([{"kind": o.kind, "key": o.key, "text": dom.dumps(o.value)} for o in outs])
    return outputs


def _c(record: Any) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def env(device: str, kind: str, payload: Any, shadow: Any = ..., **extra: Any) -> str:
    record = {"device_id": device, "type": kind, "ts": T0, "ingest_ts": T0, "mqtt_topic": f"devices/{device}/x",
              "payload": payload, **extra}
    if shadow is not ...:
        record["shadow"] = shadow
    return _c(record)


def upd(device: str, reported: Any, shadow: Any = ..., **extra: Any) -> str:
    return env(device, "shadow_update", {"state": {"reported": reported}, **extra}, shadow)


def op(device: str, request_id: Any, desired: Any, **extra: Any) -> str:
    return _c({"request_id": request_id, "device_id": device, "shadow": "", "state": {"desired": desired},
               "version": None, "actor": "alice", "ts": T0, **extra})


def _steps(records: list[tuple[str | None, str]], start: int = T0, step_ms: int = 100) -> list[dict[str, Any]]:
    return [{"key": key, "raw": raw, "now": start + i * step_ms} for i, (key, raw) in enumerate(records)]


BIG = {f"k{i}": i for i in range(257)}

SCENARIOS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "malformed_records": ("Records that are not JSON, not objects, of unknown types or with bad ids: dead letters.", _steps([
        (None, "{oops"), ("d-1", ""), ("d-1", "[1]"), ("d-1", "null"), ("d-1", '"x"'), ("d-1", "{} x"),
        ("d-1", _c({"device_id": "d-1", "type": "telemetry", "ingest_ts": T0})),
        ("d-1", _c({"device_id": "d-1", "type": 5, "ingest_ts": 1.5, "mqtt_topic": 7})),
        ("d-1", _c({"device_id": "d-1", "type": None})),
        ("d-1", _c({"device_id": "d-1", "type": ["a", {"b": None}], "ingest_ts": True})),
        ("bad id", env("bad id", "shadow_get", {})), ("d-1", env("d 1", "shadow_get", {})),
        ("d-1", _c({"device_id": 5, "type": "status", "payload": {}})),
        ("d-2", env("d-1", "shadow_get", {})), ("", env("d-1", "status", {"online": True})),
        ("d-1", env("d-1", "shadow_get", {}, shadow="a/b")), ("d-1", env("d-1", "shadow_get", {}, shadow=5)),
        ("d-1", env("d-1", "shadow_get", {"client_token": "t"}, shadow="it's")),
        ("d-1", env("d-1", "shadow_get", {}, shadow=None)),
        ("d-1", env("d-1", "status", {"online": "yes"})), ("d-1", env("d-1", "status", None)),
    ])),
    "device_updates": ("Device reports: merges, deletes, arrays, numbers and strings as Python writes them, "
                       "every rejection code, gets.", _steps([
        ("d-1", env("d-1", "shadow_get", None)),
        ("d-1", upd("d-1", {"a": 1, "f": 1.5, "big": 2**70, "e": 1e16, "small": 1e-05, "neg": -0.0, "t": True,
                            "s": "é\u2028\"\\/\u0001😀", "arr": [1, {"x": None}, [2.0]], "n": {"m": {"o": 1}}},
                    client_token="c-1")),
        ("d-1", upd("d-1", {"a": 1.0, "big": 2**70, "t": True}, client_token="same")),
        ("d-1", upd("d-1", {"a": True, "f": None, "n": {"m": {"o": None}}, "arr": [1]})),
        ("d-1", upd("d-1", None)),
        ("d-1", upd("d-1", {"a": {"b": 1}}, shadow="cfg")),
        ("d-1", upd("d-1", {"a": 2}, shadow="cfg", version=1, client_token="v")),
        ("d-1", upd("d-1", {"a": 3}, shadow="cfg", version=1, client_token="v")),
        ("d-1", upd("d-1", {"bad key": 1})), ("d-1", upd("d-1", {"it's": 1})),
        ("d-1", upd("d-1", {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}})),
        ("d-1", '{"device_id":"d-1","type":"shadow_update","payload":{"state":{"reported":{"x":NaN}}}}'),
        ("d-1", '{"device_id":"d-1","type":"shadow_update","payload":{"state":{"reported":{"x":[Infinity]}}}}'),
        ("d-1", '{"device_id":"d-1","type":"shadow_update","payload":{"state":{"reported":{"x":1e400}}}}'),
        ("d-1", upd("d-1", BIG)), ("d-1", upd("d-1", {"v": "x" * 8200})),
        ("d-1", env("d-1", "shadow_update", {"state": {"desired": {"a": 1}}, "client_token": "t2"})),
        ("d-1", env("d-1", "shadow_update", {"state": {"reported": {"a": 1}}, "zz": 1, "aa": 2})),
        ("d-1", env("d-1", "shadow_update", {"state": {}})), ("d-1", env("d-1", "shadow_update", [])),
        ("d-1", env("d-1", "shadow_update", {"state": {"other": {}}})),
        ("d-1", env("d-1", "shadow_update", {"state": {"reported": [1]}})),
        ("d-1", upd("d-1", {"a": 1}, version="1")), ("d-1", upd("d-1", {"a": 1}, version=-1)),
        ("d-1", upd("d-1", {"a": 1}, version=True)), ("d-1", upd("d-1", {"a": 1}, version=2**70)),
        ("d-1", upd("d-1", {"a": 1}, client_token="x" * 65)), ("d-1", upd("d-1", {"a": 1}, client_token=5)),
        ("d-1", upd("d-1", {"a": 1}, client_token="😀" * 64)), ("d-1", upd("d-1", {"a": 1}, client_token="")),
        ("d-1", env("d-1", "shadow_get", {"client_token": "g"})),
        ("d-1", env("d-1", "shadow_get", {"client_token": "g"}, shadow="cfg")),
        ("d-1", env("d-1", "shadow_get", {"client_token": "g"}, shadow="nope")),
        ("d-1", env("d-1", "shadow_get", {"x": 1})), ("d-1", env("d-1", "shadow_get", [1])),
        ("d-1", env("d-1", "shadow_get", {"client_token": 5})),
    ], step_ms=1000)),
    "rate_limit": ("22 requests in the same millisecond: the burst of 20 passes, the rest are rate_limited; "
                   "a second later 10 more pass.", [
        *({"key": "d-1", "raw": env("d-1", "shadow_get", {"client_token": f"g{i}"}), "now": T0} for i in range(22)),
        *({"key": "d-1", "raw": upd("d-1", {"i": i}), "now": T0 + 1000 + i} for i in range(11)),
    ]),
    "operators_and_connectivity": ("Operator changes (accepted, conflicts, malformed) and a device going "
                                   "offline and online with pending deltas on two shadows.", _steps([
        ("d-1", env("d-1", "status", {"online": False, "reason": "connection_lost"})),
        ("d-1", op("d-1", "r1", {"led": "on", "cfg": {"a": [1, 2]}})),
        ("d-1", op("d-1", "r2", {"led": "off"}, version=0)),
        ("d-1", op("d-1", "r3", {"led": "off"}, version=1, client_token="p")),
        ("d-1", op("d-1", "r4", {"led": "off"})),
        ("d-1", op("d-1", "r5", None)),
        ("d-1", op("d-1", "r6", {"x": 1}, shadow="named")),
        ("d-1", op("d-1", "r7", {"bad key": 1})),
        ("d-1", op("d-1", "r8", {"x": 1}, version="2")),
        ("d-1", op("d-1", "", {"x": 1})), ("d-1", op("d-1", 5, {"x": 1})),
        ("d-1", op("d 1", "r9", {"x": 1})), ("d-1", op("d-2", "r10", {"x": 1})),
        ("d-1", op("d-1", "r11", {"x": 1}, shadow=None)), ("d-1", op("d-1", "r12", {"x": 1}, actor=5)),
        ("d-1", _c({"request_id": "r13", "device_id": "d-1", "actor": "a", "state": {"reported": {}}})),
        ("d-1", _c({"request_id": "r14", "device_id": 7, "actor": "a", "state": {"desired": {}}})),
        ("d-1", op("d-1", "r15", {"y": 2}, shadow="a/b")),
        ("d-1", env("d-1", "status", {"online": True, "firmware_version": "1.0"})),
        ("d-1", env("d-1", "status", {"online": True})),
        ("d-1", upd("d-1", {"x": 1}, shadow="named")),
        ("d-1", env("d-1", "status", {"online": False, "reason": ""})),
        ("d-1", env("d-1", "status", {"online": True, "firmware_version": ""}, ingest_ts=T0 - 5)),
    ])),
}


def regenerate() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, (description, steps) in SCENARIOS.items():
        for step, output in zip(steps, run(steps), strict=True):
            step["expect"] = output
        vector = {"name": name, "description": description, "steps": steps}
        (VECTOR_DIR / f"{name}.json").write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    regenerate()
