"""OTA deployments on the API's side, free of FastAPI, Kafka and Cassandra: what a create request may
ask (name, target, plan), the ``ota-requests`` records it becomes, the conflict rule, and what
``GET /v1/ota/deployments/{id}`` shows of the OTA job's summary.

**Create.** ``POST /v1/ota/deployments`` checks the name (``check_name``), the target (``target``)
and the plan (``validate_plan``: every field bounded, every default filled in, a 400 naming the
field otherwise), resolves the target to an ordered device list (``resolve``: only active devices
of the firmware's device type, at most ``MAX_TARGETS``; a group or filter is shuffled per
deployment, ``rollout_order``), refuses a device another deployment still holds (``blocks``,
``conflict_error``: a 409 naming it), writes the PENDING row, and produces ``create_records``:
one ``create`` then the ``targets`` chunks (at most ``TARGET_CHUNK`` ids each, in rollout order),
all keyed by the deployment id. ``pause`` / ``resume`` / ``cancel`` are one ``op_record`` each.
Two creations racing for one device can both pass the conflict check; the job then refuses the
later assignment (REJECTED, another_deployment_active: fleet/ota/execution.py).

**Summary** (``ota_deployments.summary``, JSON, written by the job with the state column:
fleet/ota/rollout.py ``summary`` makes it). What the API reads of it (``progress``); other keys
are ignored, and a missing one reads as nothing released / zero::

    {"state": "RUNNING",            # the deployment state (the state column wins if they differ)
     "reason": "wave 1 met; ...",   # why it is in that state
     "wave": 1,                     # the current wave, 0-based
     "released": 42,                # devices released so far (targets in rollout order)
     "rate_per_minute": 120.0,      # the current release rate (rises with rate_increase)
     "counts": {"SUCCEEDED": 40, "DOWNLOADING": 2},   # released devices per execution state
     "waves": [{"index": 0, "size": 5, "released": 5, "counts": {"SUCCEEDED": 5}, "met": true}, ...],
     "history": [{"from": "PENDING", "to": "RUNNING", "ts": 1717156800000, "reason": "started"}],
     "paused_by": "alice"}          # optional
    # counts may leave out zero states; waves: every wave of the plan that has devices.

Until the job first writes it the summary is null and ``pending_summary`` stands in: the row's
state (PENDING), zero counts, the waves' sizes from the plan. A device appears in
``ota_executions`` only once released: the devices list and counts show released devices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.identity.devices import Device, DeviceFilter, DeviceStatus, RegistryError, check_device_id
from fleet.identity.devices import check_name as check_registry_name
from fleet.infra.page_cursor import decode_after, encode_after
from fleet.ota import execution
from fleet.ota.catalog import FirmwareRecord
from fleet.ota.errors import DeploymentError
from fleet.ota.execution import FAILURE_KINDS, DevicePolicy, ExecState
from fleet.ota.rollout import MAX_RATE, TARGET_CHUNK, DeployState, Plan, wave_bounds

# Stated limits. An explicit list must fit a request body (api_max_body_bytes, 1 MiB by default).
MAX_TARGETS = 100_000
MAX_DEVICE_IDS = 10_000
MAX_NAME = 100
MAX_WAVES = 20
MAX_RATE_FACTOR = 10.0
MAX_RETRIES = 10
_DAY_MS = 86_400_000

DEPLOYMENT_STATES = tuple(s.value for s in DeployState)
FINAL_DEPLOYMENT = frozenset(s.value for s in DeployState if s.final)
EXECUTION_STATES = tuple(s.value for s in ExecState)
FINAL_EXECUTION = frozenset(s.value for s in execution.FINAL)
_SUCCESSES = frozenset(s.value for s in execution.SUCCESSES)
_FAILURES = frozenset(s.value for s in execution.FAILURES)
OPS = ("pause", "resume", "cancel")

DEFAULT_DEVICE: dict[str, Any] = DevicePolicy().to_json()
# The job clamps to the same bounds (fleet/ota/execution.py DevicePolicy.from_json).
DEVICE_BOUNDS = {"progress_timeout_ms": (1_000, 7 * _DAY_MS), "timeout_ms": (1_000, 30 * _DAY_MS),
                 "health_window_ms": (0, _DAY_MS), "max_boots": (1, 20)}
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d{1,3})?)%$")


def _bad(message: str) -> DeploymentError:
    return DeploymentError("bad_request", message)


# -- the name --------------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """1-100 characters once trimmed, none of them control or format characters; need not be unique."""
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise _bad("name must not be empty")
    if len(name) > MAX_NAME:
        raise _bad(f"name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise _bad("name must not contain control or format characters")
    return name


# -- the plan --------------------------------------------------------------------------------------

def _object(value: Any, path: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{path} must be an object")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise _bad(f"{path}.{unknown[0]} is not a field of {path} (it has {', '.join(keys)})")
    return value


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{path} must be a whole number")
    if not low <= value <= high:
        raise _bad(f"{path} must be between {low} and {high}; it is {value}")
    return value


def _number(value: Any, path: str, low: float, high: float, *, above_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{path} must be a number")
    if value > high or value < low or (above_low and value == low):
        bound = f"above {low:g} and at most {high:g}" if above_low else f"between {low:g} and {high:g}"
        raise _bad(f"{path} must be {bound}; it is {value:g}")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{path} must be true or false")
    return value


def _size(value: Any, path: str) -> str | int:
    if isinstance(value, str):
        m = _PERCENT.match(value.strip())
        if m is None or not 0 < float(m.group(1)) <= 100:
            raise _bad(f"{path} must be a percent of the targets above 0% and at most 100% (e.g. \"10%\") "
                       f"or a device count; it is {value[:40]!r}")
        return f"{float(m.group(1)):g}%"
    return _int(value, path, 1, MAX_TARGETS)


def _failure_threshold(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    f = _object(value, path, ("count", "pct", "min_sample"))
    count = None if f.get("count") is None else _int(f["count"], f"{path}.count", 1, MAX_TARGETS)
    # 0% would abort on the first decided device even if it succeeded.
    pct = None if f.get("pct") is None else _number(f["pct"], f"{path}.pct", 0, 100, above_low=True)
    if count is None and pct is None:
        raise _bad(f"{path} needs a count or a pct (or leave the threshold out)")
    min_sample = 1 if f.get("min_sample") is None else _int(f["min_sample"], f"{path}.min_sample", 1, MAX_TARGETS)
    return {"count": count, "pct": pct, "min_sample": min_sample}


def _wave(value: Any, path: str) -> dict[str, Any]:
    w = _object(value, path, ("size", "success_threshold_pct", "approval", "failure_threshold"))
    if "size" not in w:
        raise _bad(f"{path}.size is required: a percent of the targets (\"10%\") or a device count")
    return {"size": _size(w["size"], f"{path}.size"),
            "success_threshold_pct": _number(w.get("success_threshold_pct", 100), f"{path}.success_threshold_pct",
                                             0, 100),
            "approval": _bool(w.get("approval", False), f"{path}.approval"),
            "failure_threshold": _failure_threshold(w.get("failure_threshold"), f"{path}.failure_threshold")}


def _device_policy(value: Any, path: str) -> dict[str, Any]:
    d = _object({} if value is None else value, path, (*DEVICE_BOUNDS, "retries"))
    out: dict[str, Any] = {k: _int(d.get(k, DEFAULT_DEVICE[k]), f"{path}.{k}", low, high)
                           for k, (low, high) in DEVICE_BOUNDS.items()}
    retries = _object({} if d.get("retries") is None else d["retries"], f"{path}.retries", FAILURE_KINDS)
    out["retries"] = {k: _int(retries.get(k, DEFAULT_DEVICE["retries"][k]), f"{path}.retries.{k}", 0, MAX_RETRIES)
                      for k in FAILURE_KINDS}
    # The overall timeout counts from the first notification and includes the health window.
    if out["health_window_ms"] >= out["timeout_ms"]:
        raise _bad(f"{path}.health_window_ms ({out['health_window_ms']}) must be shorter than {path}.timeout_ms "
                   f"({out['timeout_ms']}): no device could succeed before it timed out")
    if out["progress_timeout_ms"] > out["timeout_ms"]:
        raise _bad(f"{path}.progress_timeout_ms ({out['progress_timeout_ms']}) must not be longer than "
                   f"{path}.timeout_ms ({out['timeout_ms']})")
    return out


def validate_plan(raw: Any) -> dict[str, Any]:
    """The plan as the job gets it (every field present, defaults filled in), or a 400 naming the field.

    Defaults: one wave of 100% (success threshold 100%, no approval, no failure threshold),
    60 devices per minute, no rate increase, DEFAULT_DEVICE, no rollback on abort. A wave's size is
    a percent of the targets (rounded up, at least 1) or a count; the last wave takes the rest
    whatever its size says, and a wave left with no device is dropped.
    """
    p = _object({} if raw is None else raw, "plan",
                ("waves", "rate_per_minute", "rate_increase", "device", "rollback_on_abort"))
    waves_raw = p.get("waves")
    if waves_raw is None:
        waves_raw = [{"size": "100%"}]
    if not isinstance(waves_raw, list) or not 1 <= len(waves_raw) <= MAX_WAVES:
        raise _bad(f"plan.waves must be a list of 1 to {MAX_WAVES} waves")
    increase = p.get("rate_increase")
    if increase is not None:
        inc = _object(increase, "plan.rate_increase", ("factor", "every_successes"))
        for key in ("factor", "every_successes"):
            if inc.get(key) is None:
                raise _bad(f"plan.rate_increase.{key} is required (or leave rate_increase out)")
        increase = {"factor": _number(inc["factor"], "plan.rate_increase.factor", 1, MAX_RATE_FACTOR, above_low=True),
                    "every_successes": _int(inc["every_successes"], "plan.rate_increase.every_successes", 1,
                                            MAX_TARGETS)}
    return {"waves": [_wave(w, f"plan.waves[{i}]") for i, w in enumerate(waves_raw)],
            "rate_per_minute": _number(p.get("rate_per_minute", 60), "plan.rate_per_minute", 1, MAX_RATE),
            "rate_increase": increase,
            "device": _device_policy(p.get("device"), "plan.device"),
            "rollback_on_abort": _bool(p.get("rollback_on_abort", False), "plan.rollback_on_abort")}


def wave_sizes(plan: Mapping[str, Any], n: int) -> list[int]:
    """Devices per wave over ``n`` targets, as the job cuts them (empty waves dropped)."""
    return [end - start for start, end in wave_bounds(Plan.from_json(dict(plan)), n)]


# -- the target ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """Exactly one of: a group, a registry filter (status, device_type, metadata), a list of device ids."""

    group: str | None = None
    status: str | None = None
    device_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    device_ids: tuple[str, ...] | None = None

    @property
    def is_filter(self) -> bool:
        return self.group is None and self.device_ids is None

    def as_json(self) -> dict[str, Any]:
        """For the audit log: the group or filter as given, a list by its length."""
        if self.device_ids is not None:
            return {"device_ids": len(self.device_ids)}
        if self.group is not None:
            return {"group": self.group}
        return {"filter": {k: v for k, v in (("status", self.status), ("device_type", self.device_type),
                                             ("metadata", dict(self.metadata) or None)) if v is not None}}


def target(*, group: str | None = None, filter: Mapping[str, Any] | None = None,
           device_ids: Iterable[str] | None = None) -> Target:
    given = [k for k, v in (("group", group), ("filter", filter), ("device_ids", device_ids)) if v is not None]
    if len(given) != 1:
        raise _bad("target needs exactly one of group, filter, device_ids" +
                   (f"; it has {', '.join(given)}" if given else ""))
    try:
        if group is not None:
            return Target(group=check_registry_name("target.group", group))
        if device_ids is not None:
            ids = tuple(dict.fromkeys(device_ids))
            if not ids:
                raise _bad("target.device_ids is empty")
            if len(ids) > MAX_DEVICE_IDS:
                raise _bad(f"target.device_ids lists {len(ids)} devices, more than {MAX_DEVICE_IDS}; "
                           "use a group or a filter")
            for device_id in ids:
                check_device_id(device_id)
            return Target(device_ids=ids)
        assert filter is not None
        f = _object(dict(filter), "target.filter", ("status", "device_type", "metadata"))
        f = {k: v for k, v in f.items() if v is not None}
        if not f or f == {"metadata": {}}:
            raise _bad("target.filter needs at least one of status, device_type, metadata")
        status = f.get("status")
        if status is not None and status != DeviceStatus.active.value:
            raise _bad(f"target.filter.status {str(status)[:20]!r}: only active devices can take a deployment "
                       "(disabled and revoked devices cannot connect)")
        device_type = f.get("device_type")
        if device_type is not None:
            check_registry_name("target.filter.device_type", device_type)
        metadata = dict(f.get("metadata") or {})
        for key, value in metadata.items():
            check_registry_name("target.filter.metadata key", key)
            if not isinstance(value, str):
                raise _bad(f"target.filter.metadata.{key} must be a string")
        return Target(status=status, device_type=device_type, metadata=metadata)
    except RegistryError as exc:
        raise _bad(str(exc)) from None


class Registry(Protocol):
    """What resolving needs of fleet/identity/registry.py DeviceRegistry."""

    def get_many(self, device_ids: list[str]) -> Mapping[str, Device]: ...

    def list(self, flt: DeviceFilter, limit: int, after: str | None = None) -> tuple[list[Device], str | None]: ...


_GET_CHUNK = 500
_PAGE = 1000


def _named(ids: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _check_listed(ids: Sequence[str], found: Mapping[str, Device], device_type: str,
                  visible_groups: frozenset[str] | None) -> None:
    def visible(d: Device | None) -> bool:
        return d is not None and (visible_groups is None or bool(visible_groups & d.groups))

    missing = [i for i in ids if not visible(found.get(i))]
    if missing:  # an invisible device is not found, as everywhere (a scoped key cannot probe ids)
        raise _bad(f"target.device_ids: {'device' if len(missing) == 1 else 'devices'} {_named(missing)} not found")
    other = [i for i in ids if found[i].device_type != device_type]
    if other:
        theirs = found[other[0]].device_type
        raise _bad(f"target.device_ids: {_named(other)} {'is' if len(other) == 1 else 'are'} not of the firmware's "
                   f"device type {device_type!r} ({other[0]!r} has {repr(theirs) if theirs else 'none'})")
    inactive = [i for i in ids if found[i].status is not DeviceStatus.active]
    if inactive:
        raise _bad(f"target.device_ids: {_named(inactive)} {'is' if len(inactive) == 1 else 'are'} not active "
                   f"({inactive[0]!r} is {found[inactive[0]].status.value}); only active devices can take a deployment")


def resolve(t: Target, registry: Registry, *, device_type: str, visible_groups: frozenset[str] | None) -> list[str]:
    """The target's device ids in registry order (a list: as given): only active devices of
    ``device_type`` the caller may see. A listed device that is not one is a 400 naming it; a
    group or filter skips the others. 400 when nothing is left or more than MAX_TARGETS are."""
    if t.device_ids is not None:
        ids = list(t.device_ids)
        found: dict[str, Device] = {}
        for start in range(0, len(ids), _GET_CHUNK):
            found.update(registry.get_many(ids[start:start + _GET_CHUNK]))
        _check_listed(ids, found, device_type, visible_groups)
        return ids
    if t.device_type is not None and t.device_type != device_type:
        raise _bad(f"target.filter.device_type {t.device_type!r} is not the firmware's device type {device_type!r}")
    flt = DeviceFilter(status=DeviceStatus.active, group=t.group, device_type=device_type, metadata=t.metadata,
                       visible_groups=visible_groups)
    out: list[str] = []
    after: str | None = None
    while True:
        page, after = registry.list(flt, _PAGE, after)
        out += [d.device_id for d in page]
        if len(out) > MAX_TARGETS:
            raise _bad(f"target selects more than {MAX_TARGETS} devices (the most one deployment takes); "
                       "split it by group or metadata")
        if after is None:
            break
    if not out:
        what = f"in group {t.group!r}" if t.group is not None else f"matching {json.dumps(t.as_json()['filter'])}"
        raise _bad(f"target selects no device: no active device of device type {device_type!r} {what}")
    return out


def rollout_order(deployment_id: str, t: Target, device_ids: Sequence[str]) -> list[str]:
    """The order the waves take the devices in. A list keeps the operator's order (the first ones
    are the canaries they chose); a group or filter is shuffled by a hash of the deployment and the
    device, so the first wave is a spread of the fleet, not its lowest ids, and stays the same."""
    if t.device_ids is not None:
        return list(device_ids)
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{deployment_id}/{d}".encode()).digest())


# -- conflicts -------------------------------------------------------------------------------------

_RUNS_ON = frozenset({ExecState.INSTALLING.value, ExecState.REBOOTING.value, ExecState.VERIFYING.value})


def blocks(deployment_state: str | None, execution_state: str | None) -> bool:
    """Whether a deployment that targets a device keeps it from another one. While the deployment
    is not final: until the device's execution of it (if it has one yet) is final. Once it is
    final (canceled, aborted): only while the device is past the point of no return (installing,
    rebooting, verifying: it runs on to its own outcome; the earlier states are being canceled).
    A deployment whose row is gone holds nothing."""
    if deployment_state is None:
        return False
    if deployment_state in FINAL_DEPLOYMENT:
        return execution_state in _RUNS_ON
    return execution_state is None or execution_state not in FINAL_EXECUTION


@dataclass(frozen=True, slots=True)
class Holder:
    """A device held by another deployment."""

    device_id: str
    deployment_id: str
    name: str
    state: str


def conflict_error(held: Sequence[Holder]) -> DeploymentError:
    """The 409, naming the other deployment (the first one, and how many others there are)."""
    first = held[0]
    devices = [h.device_id for h in held if h.deployment_id == first.deployment_id]
    others = sorted({h.deployment_id for h in held} - {first.deployment_id})
    more = f"; {len(others)} other deployments hold other target devices ({_named(others, 3)})" if others else ""
    return DeploymentError("conflict", f"{len(devices)} target {'device is' if len(devices) == 1 else 'devices are'} "
                                       f"in deployment {first.deployment_id!r} ({first.name!r}, {first.state}), "
                                       f"which is not final: {_named(devices)}{more}. A device takes one active "
                                       "deployment at a time: wait for it to end, cancel it, or leave those out")


# -- the records (ota-requests, key = deployment_id) -----------------------------------------------

def new_deployment_id() -> str:
    return uuid.uuid4().hex


def chunked(devices: Sequence[str]) -> list[list[str]]:
    return [list(devices[i:i + TARGET_CHUNK]) for i in range(0, len(devices), TARGET_CHUNK)]


def firmware_json(f: FirmwareRecord) -> dict[str, Any]:
    return {"firmware_id": f.firmware_id, "device_type": f.device_type, "version": f.version, "sha256": f.sha256,
            "size": f.size, "signature": base64.b64encode(f.signature).decode(), "signer": f.signer}


MAX_ROLLBACK_IMAGES = 100


def rollback_images(firmware: FirmwareRecord, catalog: Iterable[FirmwareRecord]) -> list[dict[str, Any]]:
    """What a deployment with ``rollback_on_abort`` may roll devices back to: the device type's other
    images (newest first, at most MAX_ROLLBACK_IMAGES); the job picks each device's previous version."""
    others = [f for f in catalog if f.device_type == firmware.device_type and f.version != firmware.version]
    others.sort(key=lambda f: f.created_at, reverse=True)
    return [firmware_json(f) for f in others[:MAX_ROLLBACK_IMAGES]]


def create_records(*, deployment_id: str, name: str, firmware: FirmwareRecord, plan: Mapping[str, Any],
                   chunks: Sequence[Sequence[str]], created_at: int, created_by: str,
                   rollback_of: str | None = None,
                   rollback_firmware: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The ``create`` record, then one ``targets`` record per chunk (chunk 0..n-1, rollout order)."""
    create = {"op": "create", "deployment_id": deployment_id, "created_at": created_at, "created_by": created_by,
              "name": name, "firmware": firmware_json(firmware), "plan": dict(plan),
              "target_count": sum(len(c) for c in chunks), "chunks": len(chunks), "rollback_of": rollback_of,
              "rollback_firmware": [dict(f) for f in rollback_firmware]}
    return [create, *({"op": "targets", "deployment_id": deployment_id, "chunk": i, "devices": list(c)}
                      for i, c in enumerate(chunks))]


def op_record(op: str, deployment_id: str, *, by: str, ts: int, request_id: str) -> dict[str, Any]:
    if op not in OPS:
        raise ValueError(f"not an operation: {op!r}")
    return {"op": op, "deployment_id": deployment_id, "by": by, "ts": ts, "request_id": request_id}


# -- what GET shows --------------------------------------------------------------------------------

def pending_summary(plan: Mapping[str, Any], target_count: int, state: str = "PENDING") -> dict[str, Any]:
    """The summary before the job wrote one: nothing released, the waves' sizes from the plan."""
    return {"state": state, "reason": "", "wave": 0, "released": 0, "counts": {},
            "waves": [{"index": i, "size": n, "released": 0, "counts": {}}
                      for i, n in enumerate(wave_sizes(plan, target_count))],
            "history": []}


def _counts(raw: Any) -> dict[str, int]:
    got = raw if isinstance(raw, Mapping) else {}
    return {s: v if isinstance(v := got.get(s), int) else 0 for s in EXECUTION_STATES}


def _int_of(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _wave_view(raw: Mapping[str, Any], index: int, size: int, wave_plan: Mapping[str, Any]) -> dict[str, Any]:
    counts = _counts(raw.get("counts"))
    succeeded = sum(counts[x] for x in _SUCCESSES)
    threshold = float(wave_plan.get("success_threshold_pct", 100))
    size = _int_of(raw, "size", size)
    return {"index": index, "size": size, "released": _int_of(raw, "released", 0), "counts": counts,
            "succeeded": succeeded, "failed": sum(counts[x] for x in _FAILURES),
            "success_threshold_pct": threshold, "met": bool(raw.get("met", succeeded * 100 >= threshold * size))}


def progress(*, state: str, summary: Mapping[str, Any] | None, plan: Mapping[str, Any],
             target_count: int) -> dict[str, Any]:
    """What GET shows of a deployment's progress: ``summary`` as the job wrote it (or
    ``pending_summary``), every execution state counted (zeros included), per wave too.
    ``state`` is the row's state column (the job writes it with the summary)."""
    s = summary if isinstance(summary, Mapping) else pending_summary(plan, target_count, state)
    raw_waves = [w for w in s.get("waves") or [] if isinstance(w, Mapping)]
    by_index = {w.get("index"): w for w in raw_waves}
    plans = plan.get("waves") or [{}]
    waves = [_wave_view(by_index.get(i, {}), i, size, plans[min(i, len(plans) - 1)])
             for i, size in enumerate(wave_sizes(plan, target_count))]
    released = _int_of(s, "released", sum(w["released"] for w in waves))
    paused_by, rate = s.get("paused_by"), s.get("rate_per_minute")
    return {"state": state, "final": state in FINAL_DEPLOYMENT, "reason": str(s.get("reason") or ""),
            "wave": _int_of(s, "wave", 0), "released": released, "unreleased": max(0, target_count - released),
            "rate_per_minute": float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool)
            else float(plan.get("rate_per_minute", 60)),
            "counts": _counts(s.get("counts")), "waves": waves,
            "history": [dict(h) for h in s.get("history") or [] if isinstance(h, Mapping)],
            "paused_by": paused_by if isinstance(paused_by, str) else None,
            "rollback": dict(rb) if isinstance(rb := s.get("rollback"), Mapping) else None}


def encode_cursor(after: str) -> str:
    return encode_after(after)


def decode_cursor(cursor: str | None) -> str | None:
    """The id to continue after; ValueError for a token this API did not hand out."""
    if not cursor:
        return None
    try:
        after = decode_after(cursor)
    except ValueError:
        raise ValueError("not an OTA page token") from None
    if not 0 < len(after) <= 200:
        raise ValueError("not an OTA page token")
    return after
