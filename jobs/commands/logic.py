"""The commands job's per-record work, free of Flink: one input record + a device's state -> outputs.

``handle`` takes the record's Kafka key (the device id), its raw JSON, the wall-clock time and a
``StateCell`` (the job's keyed Flink state behind a small interface, a box in unit tests) and
returns a ``Handled``: the outputs (downlink, command events, Cassandra rows, dead letters) and
when the device's next timer is due. ``fire`` is the same for a timer. fleet.commands.domain does
the lifecycle; this module routes records, checks them and shapes the output records.

Records of the three input topics are told apart by their content: operator requests
(schemas/kafka/command-request) carry ``op`` (submit, cancel), device envelopes
(schemas/kafka/envelope) carry ``type`` (command_result, status).

Time: a submitted command's ``created_at`` is the API's (it is in the request record, so a
replayed request is recognised as the same command); every other transition is stamped with the
job's wall clock when it handles the record or the timer fires (``now``).

Dead letters: records that are not JSON, not a known request or envelope, whose key does not
match their device id, malformed requests and results, and results for a command the job does
not know or that contradict a final result. Repeats (a request or a result delivered twice, an
ack after the result) change nothing and are not dead-lettered: at-least-once delivery makes them
normal.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleet.commands import domain as dom
from fleet.contract.topics import Downlink, is_valid_device_id
from jobs.keyed_state import StateCell  # the state: fleet.commands.domain.encode(DeviceCommands)

SOURCE = "commands-job"

# Output kinds (the job's output streams).
DOWNLINK = "downlink"
EVENT = "event"
COMMAND = "command"
BATCH_MEMBER = "batch_member"
DEAD_LETTER = "dead_letter"

# The Cassandra row of a command (schemas/cql/005_commands.cql), in order; ``command`` is
# command_json as text, write_ts the USING TIMESTAMP (us).
COMMAND_FIELDS = ["command_id", "device_id", "state", "name", "created_at", "updated_at", "command", "write_ts"]
# A bulk command's row per device (command_batch_members): the command's state, or REFUSED with the
# code when the job refused the device's submission (a full queue), so the batch's counts add up.
BATCH_MEMBER_FIELDS = ["batch_id", "device_id", "command_id", "state", "reason", "updated_at", "write_ts"]
REFUSED = "REFUSED"

SUBMIT = "submit"
CANCEL = "cancel"
DEFAULT_RULES = dom.CommandRules()  # frozen
DEFAULT_KEEP_FINAL_MS = 5 * 60_000  # whole final commands; then fleet.commands.domain.Ended
_RESULT_STATUSES = {"IN_PROGRESS", *(s.value for s in dom.RESULT_STATES)}


@dataclass(frozen=True, slots=True)
class Output:
    kind: str
    # DOWNLINK / EVENT / DEAD_LETTER: the record (a JSON object); COMMAND / BATCH_MEMBER: the row as a
    # dict of COMMAND_FIELDS / BATCH_MEMBER_FIELDS.
    value: dict[str, Any]
    # The Kafka key (device id) for Kafka outputs; None when unknown (a dead letter).
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Handled:
    outputs: list[Output] = field(default_factory=list)
    # When the device's state next needs a timer (a deadline, a TTL, a prune), or None.
    wake_at: int | None = None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dead_letter(reason: str, detail: str, raw: str, device_id: str | None, mqtt_topic: str, ingest_ts: int) -> Output:
    raw_bytes = raw.encode()
    return Output(DEAD_LETTER, {
        "type": "dead-letter", "reason": reason, "detail": detail, "source": SOURCE, "mqtt_topic": mqtt_topic,
        "device_id": device_id, "ingest_ts": ingest_ts, "raw_b64": base64.b64encode(raw_bytes).decode("ascii"),
        "raw_size": len(raw_bytes), "raw_truncated": False,
    }, device_id)


def command_write_ts(cmd: dom.Command) -> int:
    """The USING TIMESTAMP (us) of a command's rows: its last transition time, then the number of
    transitions (two in one ms stay ordered), then a late result; a replay after a restart
    writes the same or older timestamps and never puts an earlier state back."""
    return cmd.updated_at * 1000 + min(len(cmd.history), 499) * 2 + (1 if cmd.late_result is not None else 0)


def wake_at(state: dom.DeviceCommands, keep_final_ms: int) -> int | None:
    """The earliest of the domain's next timer and the next time ``prune`` changes the state."""
    times = [t for t in (dom.next_timer(state), dom.next_prune(state, keep_final_ms)) if t is not None]
    return min(times, default=None)


# --- outputs of a step -------------------------------------------------------------------------

def _downlink(cmd: dom.Command, now: int) -> Output:
    # The record expires at the command's deadline: past it the command is TIMED_OUT, so the
    # bridge (and the broker, by the MQTT message expiry) must not deliver it any more. Not
    # ``expires_at``: that bounds the wait in the queue (TTL 0 is "sent at its expiry time").
    return Output(DOWNLINK, {"device_id": cmd.device_id, "suffix": Downlink.COMMANDS.value, "payload": cmd.message(),
                             "id": cmd.command_id, "created_at": now,
                             "expires_at": cmd.deadline if cmd.deadline is not None else cmd.expires_at},
                  cmd.device_id)


def command_row(cmd: dom.Command) -> Output:
    return Output(COMMAND, {"command_id": cmd.command_id, "device_id": cmd.device_id, "state": cmd.state.value,
                            "name": cmd.name, "created_at": cmd.created_at, "updated_at": cmd.updated_at,
                            "command": dumps(dom.command_json(cmd)), "write_ts": command_write_ts(cmd)})


def batch_member_row(cmd: dom.Command) -> Output:
    assert cmd.batch_id is not None
    return Output(BATCH_MEMBER, {"batch_id": cmd.batch_id, "device_id": cmd.device_id, "command_id": cmd.command_id,
                                 "state": cmd.state.value, "reason": cmd.history[-1].reason if cmd.history else "",
                                 "updated_at": cmd.updated_at, "write_ts": command_write_ts(cmd)})


def _refused_member_row(batch_id: str, device_id: str, command_id: str, code: str, now: int) -> Output:
    # Written once per refusal, never after the command exists: its timestamp cannot hide a state.
    return Output(BATCH_MEMBER, {"batch_id": batch_id, "device_id": device_id, "command_id": command_id,
                                 "state": REFUSED, "reason": code, "updated_at": now, "write_ts": now * 1000})


def _event(t: dom.Transition, cmd: dom.Command) -> Output:
    return Output(EVENT, {"type": "transition", "command_id": t.command_id, "device_id": cmd.device_id,
                          "from": t.from_state.value if t.from_state else None, "to": t.to_state.value, "ts": t.ts,
                          "reason": t.reason, "result": cmd.result, "error": cmd.error,
                          "command": dom.command_json(cmd)}, cmd.device_id)


def rejection_event(op: str, command_id: str, device_id: str, code: str, message: str, status: int,
                    now: int) -> Output:
    """A request the job refused (nothing changed): the API waiting on it answers ``status``."""
    return Output(EVENT, {"type": "rejected", "op": op, "command_id": command_id, "device_id": device_id,
                          "from": None, "to": None, "ts": now, "reason": code,
                          "rejection": {"code": code, "message": message, "status": status}}, device_id)


def _step_outputs(before: dom.DeviceCommands, step: dom.Step, now: int) -> list[Output]:
    after = step.state
    out = [_downlink(cmd, now) for cmd in step.send]
    changed: list[str] = []
    for t in step.transitions:
        out.append(_event(t, after.commands[t.command_id]))
        if t.command_id not in changed:
            changed.append(t.command_id)
    if step.outcome is dom.Outcome.LATE_RESULT:
        changed += [k for k, c in after.commands.items() if before.commands.get(k) is not c and k not in changed]
    for k in changed:
        if (cmd := after.commands.get(k)) is not None:
            out.append(command_row(cmd))
            if cmd.batch_id is not None:
                out.append(batch_member_row(cmd))
    return out


# --- the entry points --------------------------------------------------------------------------

def _load(cell: StateCell, device_id: str) -> dom.DeviceCommands:
    text = cell.get()
    return dom.decode(text) if text is not None else dom.DeviceCommands(device_id)


def _finish(cell: StateCell, before: dom.DeviceCommands, after: dom.DeviceCommands, now: int, keep_final_ms: int,
            outputs: list[Output]) -> Handled:
    after = dom.prune(after, now, keep_final_ms)
    if after is not before:
        cell.put(dom.encode(after))
    return Handled(outputs, wake_at(after, keep_final_ms))


def fire(key: str, now: int, cell: StateCell, keep_final_ms: int = DEFAULT_KEEP_FINAL_MS) -> Handled:
    """A processing-time timer of device ``key`` fired at ``now``: deadlines, TTLs, pruning."""
    text = cell.get()
    if text is None:
        return Handled()
    state = dom.decode(text)
    step = dom.on_timer(state, now)
    return _finish(cell, state, step.state, now, keep_final_ms, _step_outputs(state, step, now))


def handle(key: str | None, raw: str, now: int, cell: StateCell, rules: dom.CommandRules = DEFAULT_RULES,
           keep_final_ms: int = DEFAULT_KEEP_FINAL_MS) -> Handled:
    """Everything one input record causes. Never raises on bad input: that becomes dead letters."""
    device = key if key and is_valid_device_id(key) else None
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return Handled([dead_letter("invalid_json", f"not JSON: {e}", raw, device, "", now)])
    if not isinstance(record, dict):
        return Handled([dead_letter("invalid_envelope", "not a JSON object", raw, device, "", now)])
    op = record.get("op")
    kind = record.get("type")
    topic = record.get("mqtt_topic")
    mqtt_topic: str = topic if isinstance(topic, str) else ""
    ingested = record.get("ingest_ts")
    ingest_ts: int = ingested if type(ingested) is int else now
    if op is None and kind not in ("command_result", "status"):
        return Handled([dead_letter("invalid_envelope", f"unknown record type {kind!r}", raw, device, mqtt_topic,
                                    ingest_ts)])
    device_id = record.get("device_id")
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        return Handled([dead_letter("invalid_device_id", f"device_id {device_id!r} is not well-formed", raw, device,
                                    mqtt_topic, ingest_ts)])
    if device_id != key:  # the state is the key's: another device's record must not touch it
        return Handled([dead_letter("key_mismatch", f"record key {key!r} is not its device_id {device_id!r}", raw,
                                    device_id, mqtt_topic, ingest_ts)])
    state = _load(cell, device_id)
    if op is not None:
        step_or_out = _request(device_id, op, record, raw, now, state, rules)
    elif kind == "status":
        step_or_out = _status(device_id, record.get("payload"), raw, mqtt_topic, ingest_ts, now, state)
    else:
        step_or_out = _result(device_id, record, raw, mqtt_topic, ingest_ts, now, state, rules)
    if isinstance(step_or_out, list):
        return Handled(step_or_out, wake_at(state, keep_final_ms))
    step, extra = step_or_out
    return _finish(cell, state, step.state, now, keep_final_ms, _step_outputs(state, step, now) + extra)


def _request(device_id: str, op: Any, record: dict[str, Any], raw: str, now: int, state: dom.DeviceCommands,
             rules: dom.CommandRules) -> list[Output] | tuple[dom.Step, list[Output]]:
    command_id = record.get("command_id")
    if not isinstance(command_id, str) or not command_id:
        return [dead_letter("schema_violation", "command request: command_id must be a non-empty string", raw,
                            device_id, "", now)]
    if op == CANCEL:
        by = record.get("by")
        if not isinstance(by, str) or not by:
            return [dead_letter("schema_violation", "command request: by must be a non-empty string", raw, device_id,
                                "", now),
                    rejection_event(CANCEL, command_id, device_id, dom.INVALID_COMMAND, "by must be a non-empty string",
                                    400, now)]
        step = dom.cancel(state, command_id, by, now)
        if step.outcome is dom.Outcome.UNKNOWN_COMMAND:
            return [rejection_event(CANCEL, command_id, device_id, "unknown_command",
                                    f"command {command_id} is not known", 404, now)]
        if step.outcome is dom.Outcome.NOT_CANCELABLE:
            cmd = state.commands[command_id]
            return [rejection_event(CANCEL, command_id, device_id, "not_cancelable",
                                    f"command {command_id} is already {cmd.state.value}", 409, now)]
        return step, []
    if op != SUBMIT:
        return [dead_letter("schema_violation", f"command request: unknown op {op!r}", raw, device_id, "", now)]
    fields = {"name": str, "params": dict, "timeout_ms": int, "ttl_ms": int, "created_by": str, "created_at": int}
    for name, typ in fields.items():
        value = record.get(name)
        if not isinstance(value, typ) or (typ is int and type(value) is not int):
            problem = f"{name} must be {'an integer' if typ is int else 'a ' + typ.__name__}"
            return [dead_letter("schema_violation", f"command request: {problem}", raw, device_id, "", now),
                    rejection_event(SUBMIT, command_id, device_id, dom.INVALID_COMMAND, problem, 400, now)]
    batch_id = record.get("batch_id")
    if batch_id is not None and not isinstance(batch_id, str):
        return [dead_letter("schema_violation", "command request: batch_id must be a string", raw, device_id, "", now),
                rejection_event(SUBMIT, command_id, device_id, dom.INVALID_COMMAND, "batch_id must be a string", 400,
                                now)]
    req = dom.CommandRequest(command_id, device_id, record["name"], record["params"], record["timeout_ms"],
                             record["ttl_ms"], record["created_by"], record["created_at"], batch_id)
    result = dom.submit(state, req, rules)
    if isinstance(result, dom.CommandRejected):
        out = [rejection_event(SUBMIT, command_id, device_id, result.code, result.message, result.http_status, now)]
        if batch_id is not None and result.code != dom.COMMAND_ID_CONFLICT:
            out.append(_refused_member_row(batch_id, device_id, command_id, result.code, now))
        if result.code == dom.INVALID_COMMAND:  # the API checks these first: a record that slipped past it
            out.append(dead_letter("schema_violation", f"{result.code}: {result.message}", raw, device_id, "", now))
        return out
    return result, []


def _status(device_id: str, payload: Any, raw: str, mqtt_topic: str, ingest_ts: int, now: int,
            state: dom.DeviceCommands) -> list[Output] | tuple[dom.Step, list[Output]]:
    if not isinstance(payload, dict) or type(payload.get("online")) is not bool:
        return [dead_letter("schema_violation", "status payload needs a boolean online", raw, device_id, mqtt_topic,
                            ingest_ts)]
    step = dom.on_connect(state, now) if payload["online"] else dom.on_disconnect(state, now)
    return step, []


def _result(device_id: str, record: dict[str, Any], raw: str, mqtt_topic: str, ingest_ts: int, now: int,
            state: dom.DeviceCommands, rules: dom.CommandRules) -> list[Output] | tuple[dom.Step, list[Output]]:
    def bad(detail: str) -> list[Output]:
        return [dead_letter("schema_violation", detail, raw, device_id, mqtt_topic, ingest_ts)]

    command_id = record.get("command_id")
    payload = record.get("payload")
    if not isinstance(command_id, str) or not command_id:
        return bad("command_result without a command_id")
    if not isinstance(payload, dict) or payload.get("status") not in _RESULT_STATUSES:
        return bad(f"command result status must be one of {sorted(_RESULT_STATUSES)}")
    status = payload["status"]
    result = payload.get("result")
    error = payload.get("error")
    if result is not None and not isinstance(result, dict):
        return bad("command result: result must be an object")
    if error is not None and not isinstance(error, str):
        return bad("command result: error must be a string")
    if status == "IN_PROGRESS":
        step = dom.on_ack(state, command_id, now)
    else:
        step = dom.on_result(state, command_id, dom.State(status), now, result,
                             error[:rules.max_error_length] if error is not None else None)
    if step.outcome is dom.Outcome.UNKNOWN_COMMAND:
        return bad(f"unknown_command: device {device_id} has no command {command_id}")
    if step.outcome is dom.Outcome.CONFLICTING_RESULT:
        cmd = state.commands[command_id]
        return bad(f"conflicting_result: command {command_id} already ended {cmd.state.value}")
    return step, []


def outputs_of(handled: Iterable[Handled]) -> list[Output]:
    """Every output of several calls, in order (tests)."""
    return [o for h in handled for o in h.outputs]
