"""The OTA job's per-record work, free of Flink: one record + keyed state -> outputs.

Two keyed operators, each a thin shell (jobs/ota/core.py) around one entry point here:

* ``rollout_handle`` / ``rollout_fire`` (keyed by deployment id): operator requests from
  ``ota-requests`` (create, targets, pause, resume, cancel) and execution transitions from
  ``ota-events``, through fleet.ota.rollout. Outputs: assignments and cancels for devices
  (Kafka ``ota-assignments``, key device id), the deployment's row (Cassandra ``ota_deployments``)
  and, for an aborted deployment with rollback, the rollback deployments (their rows, and their
  records on ``ota-requests``, which bring them back to this operator).
* ``device_handle`` / ``device_fire`` (keyed by device id): assignments and cancels from
  ``ota-assignments``, the device's ``ota/status`` reports (Kafka ``ota-status``) and its
  connectivity (``device-events``), through fleet.ota.execution. Outputs: notices for the device
  (Kafka ``downlink``, suffix ota/notify, with a signed download path), transitions (Kafka
  ``ota-events``, key deployment id, back to the rollout) and the execution's rows (Cassandra).

The two operators talk through Kafka (a cycle a Flink graph cannot have); both sides are written
at least once and without waiting for a checkpoint, and both drop repeats: an execution
by deployment id (a device never takes a deployment twice), the rollout by each device's
transition ``seq``. Records that are not JSON, of an unknown kind, for another key, or malformed
are dead letters; a bug in a handler dead-letters the record instead of stopping the job.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fleet.contract.topics import Downlink, is_valid_device_id
from fleet.ota import execution as ex
from fleet.ota import rollout as ro
from jobs.keyed_state import StateCell

SOURCE = "ota-job"

# Output kinds.
DOWNLINK = "downlink"  # Kafka downlink, key device id
ASSIGNMENT = "assignment"  # Kafka ota-assignments, key device id
EVENT = "event"  # Kafka ota-events, key deployment id
DEPLOYMENT = "deployment"  # Cassandra ota_deployments (DEPLOYMENT_FIELDS)
NEW_DEPLOYMENT = "new_deployment"  # Cassandra ota_deployments, a whole row (NEW_DEPLOYMENT_FIELDS): a rollback
REQUEST = "request"  # Kafka ota-requests, key deployment id (a rollback deployment's records)
EXECUTION = "execution"  # Cassandra ota_executions and ota_executions_by_device (EXECUTION_FIELDS)
DEAD_LETTER = "dead_letter"

DEPLOYMENT_FIELDS = ["deployment_id", "state", "summary", "updated_at", "write_ts"]
NEW_DEPLOYMENT_FIELDS = ["deployment_id", "name", "firmware_id", "device_type", "version", "state", "created_at",
                         "created_by", "updated_at", "plan", "target_count", "rollback_of", "write_ts"]
EXECUTION_FIELDS = ["deployment_id", "device_id", "state", "wave", "attempt", "updated_at", "execution", "write_ts"]

_DEVICE_STATES = ex.DEVICE_STATES
_ID_LIMIT = 64

# The signed download path of a notice: (deployment_id, device_id, firmware_id, now_ms) -> path+query.
UrlFor = Callable[[str, str, str, int], str]


@dataclass(frozen=True, slots=True)
class Output:
    kind: str
    value: dict[str, Any]
    key: str | None = None  # Kafka key


@dataclass(frozen=True, slots=True)
class Handled:
    outputs: list[Output] = field(default_factory=list)
    wake_at: int | None = None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dead_letter(reason: str, detail: str, raw: str, key: str | None, mqtt_topic: str, now: int) -> Output:
    raw_bytes = raw.encode()
    device = key if key and is_valid_device_id(key) else None
    return Output(DEAD_LETTER, {
        "type": "dead-letter", "reason": reason, "detail": detail[:1000], "source": SOURCE, "mqtt_topic": mqtt_topic,
        "device_id": device, "ingest_ts": now, "raw_b64": base64.b64encode(raw_bytes[:16384]).decode("ascii"),
        "raw_size": len(raw_bytes), "raw_truncated": len(raw_bytes) > 16384}, device)


def _parse(key: str | None, raw: str, now: int) -> dict[str, Any] | Output:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return dead_letter("invalid_json", f"not JSON: {e}", raw, key, "", now)
    if not isinstance(record, dict):
        return dead_letter("invalid_envelope", "not a JSON object", raw, key, "", now)
    return record


def _id_ok(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _ID_LIMIT and "\n" not in value


# --- the rollout (keyed by deployment) ------------------------------------------------------

def deployment_row(r: ro.Rollout, now: int) -> Output:
    # Written as it changes: the write timestamp grows with wall-clock time (a replay after a
    # restart rewrites the same states later, never an older one over a newer one for long), and
    # sits in the upper half of the millisecond so it follows the API's PENDING row of that ms.
    return Output(DEPLOYMENT, {"deployment_id": r.deployment_id, "state": r.state.value,
                               "summary": dumps(ro.summary(r)), "updated_at": r.updated_at,
                               "write_ts": now * 1000 + 500 + r.writes % 500})


def _assignment(r: ro.Rollout, device_id: str, wave: int, now: int) -> Output:
    return Output(ASSIGNMENT, {"op": "assign", "deployment_id": r.deployment_id, "device_id": device_id,
                               "wave": wave, "firmware": r.firmware, "device": r.plan.device.to_json(), "ts": now},
                  device_id)


def _cancel(r: ro.Rollout, device_id: str, now: int) -> Output:
    by = r.history[-1][3] if r.history else "operator"
    return Output(ASSIGNMENT, {"op": "cancel", "deployment_id": r.deployment_id, "device_id": device_id, "by": by,
                               "ts": now}, device_id)


def _rollback_outputs(parent: ro.Rollout, rb: ro.RollbackPlan, now: int) -> list[Output]:
    """A rollback deployment: its whole row (the API reads it as any other), then its records on
    ota-requests, which come back to this operator as a deployment of its own."""
    fw = rb.firmware
    name = f"rollback of {parent.name or parent.deployment_id}"[:100]
    row = Output(NEW_DEPLOYMENT, {
        "deployment_id": rb.deployment_id, "name": name, "firmware_id": str(fw.get("firmware_id")),
        "device_type": str(fw.get("device_type")), "version": str(fw.get("version")), "state": "PENDING",
        "created_at": now, "created_by": SOURCE, "updated_at": now, "plan": dumps(rb.plan),
        "target_count": len(rb.devices), "rollback_of": parent.deployment_id, "write_ts": now * 1000})
    chunks = [rb.devices[i:i + ro.TARGET_CHUNK] for i in range(0, len(rb.devices), ro.TARGET_CHUNK)]
    create = {"op": "create", "deployment_id": rb.deployment_id, "created_at": now, "created_by": SOURCE,
              "name": name, "firmware": fw, "plan": rb.plan, "target_count": len(rb.devices), "chunks": len(chunks),
              "rollback_of": parent.deployment_id}
    records = [create] + [{"op": "targets", "deployment_id": rb.deployment_id, "chunk": i, "devices": c}
                          for i, c in enumerate(chunks)]
    return [row] + [Output(REQUEST, rec, rb.deployment_id) for rec in records]


# The deployment's row (its summary) is written at once when its state changes, and otherwise at
# most this often: in a rollout's busy seconds every device transition changes the counts, and
# writing the whole summary for each was most of the rollout operator's work.
ROW_INTERVAL_MS = 500


def _rollout_outputs(before: ro.Rollout | None, step: ro.Step, now: int) -> tuple[ro.Rollout, list[Output]]:
    r = step.rollout
    out = [_assignment(r, d, w, now) for d, w in step.assign]
    out += [_cancel(r, d, now) for d in step.cancel]
    for rb in step.rollbacks:
        out += _rollback_outputs(r, rb, now)
    urgent = before is None or before.state is not r.state or bool(step.rollbacks) or before.wave != r.wave
    if urgent or ((step.changed or r.row_dirty) and now >= r.row_at + ROW_INTERVAL_MS):
        r = replace(r, writes=r.writes + 1, row_at=now, row_dirty=False)
        out.append(deployment_row(r, now))
    elif step.changed and not r.row_dirty:
        r = replace(r, row_dirty=True)
    return r, out


def _rollout_wake(r: ro.Rollout) -> int | None:
    """The rollout's own next timer, or the deferred row write, whichever is first."""
    times = [t for t in (ro.next_timer(r), r.row_at + ROW_INTERVAL_MS if r.row_dirty else None) if t is not None]
    return min(times, default=None)


def rollout_handle(key: str | None, raw: str, now: int, cell: StateCell, members: ro.Members) -> Handled:
    text = cell.get()
    r = ro.decode(text) if text is not None else None
    # A dead letter keeps the key's timer where it was (a bad record must not stop a rollout).
    keep = _rollout_wake(r) if r is not None else None
    record = _parse(key, raw, now)
    if isinstance(record, Output):
        return Handled([record], keep)
    dep = record.get("deployment_id")
    if not _id_ok(dep):
        return Handled([dead_letter("schema_violation", "deployment_id must be a string of 1-64 characters", raw, None,
                                    "", now)], keep)
    if dep != key:
        return Handled([dead_letter("key_mismatch", f"record key {key!r} is not its deployment_id {dep!r}", raw, None,
                                    "", now)], keep)
    try:
        result = _rollout_step(r, record, now, members)
    except (KeyError, TypeError, ValueError) as e:
        return Handled([dead_letter("schema_violation", f"ota record: {type(e).__name__}: {e}", raw, None, "", now)],
                       keep)
    if isinstance(result, Output):
        return Handled([result], keep)
    after, out = _rollout_outputs(r, result, now)
    if after is not r:
        cell.put(ro.encode(after))
    return Handled(out, _rollout_wake(after))


def _rollout_step(r: ro.Rollout | None, record: dict[str, Any], now: int, members: ro.Members) -> ro.Step | Output:
    op = record.get("op")
    raw = dumps(record)
    if op == "create":
        if r is not None:
            return ro.Step(r, changed=False, outcome="duplicate")
        created = ro.create(record, now)
        if created.target_count <= 0 or created.chunks <= 0:
            return dead_letter("schema_violation", "create: target_count and chunks must be positive", raw, None, "",
                               now)
        return ro.Step(created)
    if r is None:
        # Targets or an operator's op before the create (not in the topic's order): nothing to
        # apply it to. The API produces the create first on the same partition, so this is a bad record.
        return dead_letter("schema_violation", f"unknown_deployment: no deployment {record.get('deployment_id')!r} "
                                               "in the job", raw, None, "", now)
    if op == "targets":
        devices = record["devices"]
        if not isinstance(devices, list) or not all(isinstance(d, str) and is_valid_device_id(d) for d in devices):
            return dead_letter("schema_violation", "targets: devices must be a list of device ids", raw, None, "", now)
        offset = record.get("offset")
        return ro.add_targets(r, members, int(record["chunk"]), devices, now,
                              offset if type(offset) is int else None)
    by = str(record.get("by") or "operator")[:200]
    if op == "pause":
        return ro.pause(r, by, now)
    if op == "resume":
        return ro.resume(r, members, by, now)
    if op == "cancel":
        return ro.cancel(r, members, by, now)
    if record.get("type") == "transition":
        if not isinstance(record.get("device_id"), str) or record.get("to") not in ex.ExecState.__members__ \
                or type(record.get("seq")) is not int:
            return dead_letter("schema_violation", "transition: device_id, to and seq required", raw, None, "", now)
        return ro.on_event(r, members, record, now)
    return dead_letter("schema_violation", f"unknown ota record (op {op!r}, type {record.get('type')!r})", raw, None,
                       "", now)


def rollout_fire(now: int, cell: StateCell, members: ro.Members) -> Handled:
    text = cell.get()
    if text is None:
        return Handled()
    r = ro.decode(text)
    after, out = _rollout_outputs(r, ro.on_timer(r, members, now), now)
    if after is not r:
        cell.put(ro.encode(after))
    return Handled(out, _rollout_wake(after))


# --- the executions (keyed by device) -------------------------------------------------------

def execution_row(e: ex.Execution) -> Output:
    return Output(EXECUTION, {"deployment_id": e.deployment_id, "device_id": e.device_id, "state": e.state.value,
                              "wave": e.wave, "attempt": e.attempt, "updated_at": e.updated_at,
                              "execution": dumps(ex.execution_json(e)),
                              # seq is at least the transition's time in µs and grows with each one; a
                              # progress update (same seq, a later updated_at) lands after it.
                              "write_ts": max(e.seq, e.updated_at * 1000) + (1 if e.progress else 0)})


def _event(e: ex.Execution, c: ex.Change) -> Output:
    return Output(EVENT, {"type": "transition", "deployment_id": e.deployment_id, "device_id": e.device_id,
                          "wave": e.wave, "from": c.from_state.value if c.from_state else None,
                          "to": c.to_state.value, "ts": c.ts, "reason": c.reason, "attempt": e.attempt,
                          "seq": e.seq, "previous_version": e.previous_version}, e.deployment_id)


def _notice(n: ex.Notice, now: int, url_for: UrlFor) -> Output:
    e = n.execution
    if n.op == ex.INSTALL:
        fw = e.firmware
        payload: dict[str, Any] = {
            "op": ex.INSTALL, "deployment_id": e.deployment_id, "attempt": e.attempt, "ts": now,
            # The bootloader's fallback after this many boots of the new image, as the job counts them.
            "max_boots": e.policy.max_boots,
            "firmware": {k: fw.get(k) for k in ("firmware_id", "version", "sha256", "size", "signature", "signer")}}
        payload["firmware"]["url"] = url_for(e.deployment_id, e.device_id, str(fw.get("firmware_id")), now)
    else:
        payload = {"op": ex.CANCEL, "deployment_id": e.deployment_id, "ts": now}
    return Output(DOWNLINK, {"device_id": e.device_id, "suffix": Downlink.OTA_NOTIFY.value, "payload": payload,
                             "id": f"{e.deployment_id}:{n.op}:{e.attempt}", "created_at": now, "expires_at": None},
                  e.device_id)


def _device_outputs(step: ex.Step, now: int, url_for: UrlFor) -> list[Output]:
    out = [_notice(n, now, url_for) for n in step.send]
    out += [_event(e, c) for e, c in step.transitions]
    out += [execution_row(e) for e in step.changed]
    return out


def _finish(cell: StateCell, before: ex.DeviceOta, step: ex.Step, now: int, url_for: UrlFor) -> Handled:
    if step.state != before:
        cell.put(ex.encode(step.state))
    return Handled(_device_outputs(step, now, url_for), ex.next_timer(step.state))


def device_handle(key: str | None, raw: str, now: int, cell: StateCell, url_for: UrlFor) -> Handled:
    text = cell.get()
    loaded = ex.decode(text) if text is not None else None
    # A dead letter keeps the key's timer where it was (a bad record must not stop an execution).
    keep = ex.next_timer(loaded) if loaded is not None else None
    record = _parse(key, raw, now)
    if isinstance(record, Output):
        return Handled([record], keep)
    topic = record.get("mqtt_topic")
    mqtt_topic = topic if isinstance(topic, str) else ""
    device_id = record.get("device_id")
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        return Handled([dead_letter("invalid_device_id", f"device_id {device_id!r} is not well-formed", raw, key,
                                    mqtt_topic, now)], keep)
    if device_id != key:
        return Handled([dead_letter("key_mismatch", f"record key {key!r} is not its device_id {device_id!r}", raw,
                                    device_id, mqtt_topic, now)], keep)
    state = loaded if loaded is not None else ex.DeviceOta(device_id)
    ingested = record.get("ingest_ts")
    at = ingested if type(ingested) is int else None  # the bridge's clock: orders the two device topics
    op, kind = record.get("op"), record.get("type")

    def bad(detail: str, reason: str = "schema_violation") -> Handled:
        return Handled([dead_letter(reason, detail, raw, device_id, mqtt_topic, now)], ex.next_timer(state))

    if op == "assign":
        dep, fw = record.get("deployment_id"), record.get("firmware")
        if not _id_ok(dep) or not isinstance(fw, dict) or type(record.get("wave")) is not int:
            return bad("assign: deployment_id, firmware and wave required")
        a = ex.Assignment(str(dep), device_id, record["wave"], fw, ex.DevicePolicy.from_json(record.get("device")), now)
        return _finish(cell, state, ex.assign(state, a, now), now, url_for)
    if op == "cancel":
        if not _id_ok(record.get("deployment_id")):
            return bad("cancel: deployment_id required")
        step = ex.cancel(state, record["deployment_id"], str(record.get("by") or "operator")[:200], now)
        return _finish(cell, state, step, now, url_for)
    if kind == "status":
        payload = record.get("payload")
        if not isinstance(payload, dict) or type(payload.get("online")) is not bool:
            return bad("status payload needs a boolean online")
        version = payload.get("firmware_version") if isinstance(payload.get("firmware_version"), str) else None
        step = ex.on_connect(state, version, now, at) if payload["online"] else ex.on_disconnect(state, now, at)
        return _finish(cell, state, step, now, url_for)
    if kind == "ota_status":
        payload = record.get("payload")
        if not isinstance(payload, dict) or not _id_ok(payload.get("deployment_id")) \
                or payload.get("state") not in _DEVICE_STATES:
            return bad(f"ota status needs a deployment_id and a state of {sorted(_DEVICE_STATES)}")
        step = ex.on_status(state, payload, now, at)
        if step.outcome is ex.Outcome.UNKNOWN_DEPLOYMENT:
            return bad(f"unknown_deployment: {step.detail}")
        return _finish(cell, state, step, now, url_for)
    return bad(f"unknown record (op {op!r}, type {kind!r})", "invalid_envelope")


def device_fire(now: int, cell: StateCell, url_for: UrlFor) -> Handled:
    text = cell.get()
    if text is None:
        return Handled()
    state = ex.decode(text)
    return _finish(cell, state, ex.on_timer(state, now), now, url_for)
