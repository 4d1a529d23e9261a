"""Replays the shadow vectors (tests/vectors/shadow/*.json) through fleet.shadow.domain; writes them too.

    .venv/bin/python -m tests.vectors.shadow_replay    # regenerate, then read the diff

A vector: ``rules`` (ShadowRules fields), ``device_id``, ``shadow_name`` and ``steps``, each one
``update`` (``source``, ``ts``, the wire ``payload``), ``get`` (``ts``, ``payload``) or ``connect``
(``ts``), with ``expect``: for an update the ``accepted`` and ``delta`` messages, the history
``change`` and the resulting ``document``, or ``rejected`` (the rejected message) and its
``http_status``; for a get the ``document`` message or ``rejected``; for a connect what is pushed
(``push``, null for nothing). The document goes through its stored encoding between steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet.shadow import domain as dom

VECTOR_DIR = Path(__file__).parent / "shadow"
T0 = 1_767_225_600_000


def vector_files() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*.json"))


def _doc(doc: dom.ShadowDocument) -> dict[str, Any]:
    return {"version": doc.version, "desired": doc.desired, "reported": doc.reported, "delta": doc.delta,
            "metadata": doc.metadata}


def _rejected(r: dom.Rejection) -> dict[str, Any]:
    return {"rejected": r.message_json(), "http_status": r.http_status}


def run(vector: dict[str, Any]) -> list[dict[str, Any]]:
    rules = dom.ShadowRules(**vector["rules"])
    doc = dom.ShadowDocument.empty(vector["device_id"], vector["shadow_name"])
    outputs: list[dict[str, Any]] = []
    for step in vector["steps"]:
        if "update" in step:
            u = step["update"]
            parsed = dom.parse_update(u["payload"], dom.Source(**u["source"]), u["ts"], rules)
            out = parsed if isinstance(parsed, dom.Rejection) else dom.apply_update(doc, parsed, rules)
            if isinstance(out, dom.Rejection):
                outputs.append(_rejected(out))
            else:
                outputs.append({"accepted": out.accepted, "delta": out.delta,
                                "change": out.change.to_json() if out.change else None, "document": _doc(out.document)})
                doc = out.document
        elif "get" in step:
            token = dom.parse_get(step["get"]["payload"], rules)
            got = token if isinstance(token, dom.Rejection) else dom.handle_get(doc, step["get"]["ts"], token)
            outputs.append(_rejected(got) if isinstance(got, dom.Rejection) else {"document": got})
        else:
            outputs.append({"push": dom.on_connect(doc, step["connect"]["ts"])})
        doc = dom.decode(dom.encode(doc))
    return outputs


OP = {"kind": "operator", "principal": "alice"}
DEV = {"kind": "device", "principal": "d-1"}


def op(sec: float, desired: Any, **extra: Any) -> dict[str, Any]:
    return {"update": {"source": OP, "ts": T0 + int(sec * 1000), "payload": {"state": {"desired": desired}, **extra}}}


def dev(sec: float, reported: Any, **extra: Any) -> dict[str, Any]:
    return {"update": {"source": DEV, "ts": T0 + int(sec * 1000), "payload": {"state": {"reported": reported}, **extra}}}


def raw(sec: float, source: dict[str, str], payload: Any) -> dict[str, Any]:
    return {"update": {"source": source, "ts": T0 + int(sec * 1000), "payload": payload}}


def get(sec: float, payload: Any = None) -> dict[str, Any]:
    return {"get": {"ts": T0 + int(sec * 1000), "payload": payload}}


def connect(sec: float) -> dict[str, Any]:
    return {"connect": {"ts": T0 + int(sec * 1000)}}


SCENARIOS: dict[str, tuple[str, dict[str, Any], str, list[dict[str, Any]]]] = {
    "offline_device_converges": (
        "Three desired changes while the device is away (versions 1-3; history holds all three), the "
        "device connects and is pushed the whole current delta at v3, reports it, and the delta empties.",
        {}, "", [get(0), op(1, {"led": "on"}), op(2, {"rate": 5}), op(3, {"led": "off"}), connect(10),
                 dev(11, {"led": "off", "rate": 5, "fw": "1.2"}, client_token="r-1"), connect(20),
                 get(21, {"client_token": "g"})]),
    "optimistic_concurrency": (
        "Two operators PATCH on version 1: the first wins (v2), the second is a version_conflict (409) "
        "naming the current version, and changes nothing; a retry on v2 wins.",
        {}, "", [op(0, {"a": 1}), op(1, {"a": 2}, version=1, client_token="p-1"),
                 op(1, {"a": 3}, version=1, client_token="p-2"), op(2, {"a": 3}, version=2, client_token="p-2")]),
    "null_deletes_arrays_whole": (
        "null deletes a key (and an object emptied that way disappears), arrays are replaced whole, "
        "nested objects merge; only changed leaves get new metadata timestamps.",
        {}, "cfg", [dev(0, {"net": {"ssid": "x", "ch": 6}, "tags": [1, 2, 3], "keep": True}),
                    dev(1, {"net": {"ch": None}, "tags": [9], "keep": True}),
                    dev(2, {"net": {"ssid": None}}), dev(3, None)]),
    "no_op_keeps_the_version": (
        "A report of what is already there (1 == 1.0, a null for a missing key) is accepted with "
        "changed false and no new version, no history and no delta.",
        {}, "", [dev(0, {"a": 1, "b": "x"}), dev(1, {"a": 1.0, "z": None}, client_token="same")]),
    "limits": (
        "A 200-byte limit: exactly 200 bytes of desired + reported is accepted, one more is "
        "state_too_large; a bad key, a too-deep patch, a device writing desired, an operator writing "
        "reported, a malformed payload: each rejected with its code, changing nothing.",
        {"max_state_bytes": 200, "max_depth": 3},
        "", [dev(0, {"v": "x" * 190}), dev(1, {"v": "x" * 191}), dev(2, {"bad key": 1}),
             dev(3, {"a": {"b": {"c": {"d": 1}}}}), raw(4, DEV, {"state": {"desired": {"a": 1}}}),
             raw(5, OP, {"state": {"reported": {"a": 1}}}), raw(6, DEV, {"state": {"reported": [1]}}),
             raw(7, DEV, {"state": {"reported": {"a": 1}}, "version": "1"})]),
    "bad_shadow_name": (
        "A named shadow whose name breaks the rules: every request is rejected.",
        {}, "a/b", [dev(0, {"a": 1}, client_token="t")]),
}


def regenerate() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, (description, rules, shadow_name, steps) in SCENARIOS.items():
        vector = {"name": name, "description": description, "rules": rules, "device_id": "d-1",
                  "shadow_name": shadow_name, "steps": steps}
        for step, output in zip(steps, run(vector), strict=True):
            step["expect"] = output
        (VECTOR_DIR / f"{name}.json").write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    regenerate()
