"""Replays the command vectors (tests/vectors/commands/*.json) through fleet.commands.domain; writes them too.

    .venv/bin/python -m tests.vectors.command_replay    # regenerate, then read the diff

A vector: ``rules`` (CommandRules fields), ``device_id`` and ``steps``, each one of ``submit``
(the request), ``connect``/``disconnect``/``timer`` (a time), ``ack``, ``result``, ``cancel``, with
``expect``: ``rejected`` (code) for a refused submit, else the ``outcome``, the ``transitions``
made, the messages to ``send`` in order, every command's ``states`` and the ``next_timer``.
The device's state goes through its stored encoding between steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet.commands import domain as dom

VECTOR_DIR = Path(__file__).parent / "commands"
T0 = 1_767_225_600_000


def vector_files() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*.json"))


def _apply(state: dom.DeviceCommands, step: dict[str, Any], rules: dom.CommandRules) -> dom.Step | dom.CommandRejected:
    if "submit" in step:
        s = step["submit"]
        return dom.submit(state, dom.CommandRequest(s["command_id"], state.device_id, s["name"], s["params"],
                                                    s["timeout_ms"], s["ttl_ms"], s["created_by"], s["at"]), rules)
    if "connect" in step:
        return dom.on_connect(state, step["connect"])
    if "disconnect" in step:
        return dom.on_disconnect(state, step["disconnect"])
    if "timer" in step:
        return dom.on_timer(state, step["timer"])
    if "ack" in step:
        return dom.on_ack(state, step["ack"]["command_id"], step["ack"]["ts"])
    if "cancel" in step:
        return dom.cancel(state, step["cancel"]["command_id"], step["cancel"]["by"], step["cancel"]["ts"])
    r = step["result"]
    return dom.on_result(state, r["command_id"], dom.State(r["status"]), r["ts"], r.get("result"), r.get("error"))


def run(vector: dict[str, Any]) -> list[dict[str, Any]]:
    rules = dom.CommandRules(**vector["rules"])
    state = dom.DeviceCommands(vector["device_id"])
    outputs: list[dict[str, Any]] = []
    for step in vector["steps"]:
        out = _apply(state, step, rules)
        if isinstance(out, dom.CommandRejected):
            outputs.append({"rejected": out.code, "http_status": out.http_status})
        else:
            state = out.state
            outputs.append({"outcome": out.outcome.value,
                            "transitions": [{"command_id": t.command_id, "from": t.from_state.value if t.from_state else None,
                                             "to": t.to_state.value, "ts": t.ts, "reason": t.reason} for t in out.transitions],
                            "send": [c.message() for c in out.send],
                            "states": {c.command_id: c.state.value for c in sorted(state.commands.values(), key=lambda c: c.seq)},
                            "next_timer": dom.next_timer(state)})
        state = dom.decode(dom.encode(state))
    return outputs


def submit(cid: str, sec: float, timeout_s: float = 5, ttl_s: float = 60, name: str = "reboot",
           params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"submit": {"command_id": cid, "name": name, "params": params or {}, "timeout_ms": int(timeout_s * 1000),
                       "ttl_ms": int(ttl_s * 1000), "created_by": "alice", "at": T0 + int(sec * 1000)}}


def at(kind: str, sec: float) -> dict[str, Any]:
    return {kind: T0 + int(sec * 1000)}


def ack(cid: str, sec: float) -> dict[str, Any]:
    return {"ack": {"command_id": cid, "ts": T0 + int(sec * 1000)}}


def result(cid: str, sec: float, status: str = "SUCCEEDED", **extra: Any) -> dict[str, Any]:
    return {"result": {"command_id": cid, "status": status, "ts": T0 + int(sec * 1000), **extra}}


def cancel(cid: str, sec: float) -> dict[str, Any]:
    return {"cancel": {"command_id": cid, "by": "bob", "ts": T0 + int(sec * 1000)}}


SCENARIOS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
    "online_round_trip": (
        "An online device gets the command at once, acknowledges it, answers; the same result again is a duplicate.",
        {}, [at("connect", 0), submit("c-1", 1, params={"delay_s": 3}), ack("c-1", 1.1),
             result("c-1", 1.5, result={"uptime": 0}), result("c-1", 1.6, result={"uptime": 0})]),
    "offline_queue_in_order": (
        "Three commands queued while offline, the first with a 2 s TTL: on reconnect at 10 s it is EXPIRED "
        "(never sent) and the other two go out in submission order.",
        {}, [submit("c-z", 0, ttl_s=2), submit("c-b", 1), submit("c-a", 2), at("connect", 10)]),
    "timeout_then_late_result": (
        "timeout_s=2 to a device that never answers in time: TIMED_OUT at the deadline; the result "
        "arriving afterwards is a late_result and the state stays TIMED_OUT.",
        {}, [at("connect", 0), submit("c-1", 0, timeout_s=2), at("timer", 1.999), at("timer", 2),
             result("c-1", 3, result={"ok": True})]),
    "disconnect_requeues": (
        "The device drops before acknowledging: the command goes back to QUEUED, is re-sent on "
        "reconnect with a new deadline, and a slow command does not block the one behind it.",
        {}, [at("connect", 0), submit("slow", 0, timeout_s=30), submit("next", 0.5), ack("slow", 0.6),
             at("disconnect", 1), at("connect", 5), result("next", 5.5), at("timer", 30)]),
    "cancel_and_limits": (
        "A queue of two: a third is refused (queue_full); canceling one frees a place; a canceled "
        "command can't be canceled again; oversized params and a bad TTL are refused.",
        {"max_pending_per_device": 2, "max_params_bytes": 32},
        [submit("a", 0), submit("b", 0), submit("c", 0), cancel("a", 1), cancel("a", 2), submit("c", 3),
         submit("d", 3, params={"v": "x" * 30}), submit("e", 3, ttl_s=-1), at("timer", 63)]),
}


def regenerate() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, (description, rules, steps) in SCENARIOS.items():
        vector = {"name": name, "description": description, "rules": rules, "device_id": "d-1", "steps": steps}
        for step, output in zip(steps, run(vector), strict=True):
            step["expect"] = output
        (VECTOR_DIR / f"{name}.json").write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    regenerate()
