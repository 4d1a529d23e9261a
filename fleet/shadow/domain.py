"""Device shadow rules, free of Flink: merge, delta, version, metadata, limits, history records.

The shadow job keys its state by (device id, shadow name) and is a thin shell around this
module: it loads the ``ShadowDocument`` (``decode`` of what it stored, or ``ShadowDocument.empty``),
calls ``apply_update`` / ``handle_get`` / ``on_connect``, stores ``encode(document)`` and publishes
what the result says. Time is always passed in (epoch ms): nothing here reads a clock.

Rules (the bar is AWS IoT shadows and Azure twins, see docs/device-contract.md):

* A document has ``desired`` and ``reported`` sections, a ``version`` and per-leaf ``metadata``
  (the same tree as the section, each leaf the epoch-ms time its value last changed). ``delta`` is
  derived, never stored: every desired field whose value differs from reported, recursively, with
  desired-only fields included and reported-only fields not.
* A patch merges like JSON merge patch (RFC 7386): objects merge key by key, ``null`` deletes a key,
  anything else (arrays included, whole) replaces. A section set to ``null`` is cleared.
  Documents never hold empty objects: an object left empty by deletions disappears, so writing
  ``{}`` to a key is the same as deleting it (this keeps ``delta`` free of empty husks).
* Values compare as JSON: ``1`` equals ``1.0``, ``true`` is not ``1``.
* A device writes only ``reported``, an operator only ``desired`` (``forbidden_section`` otherwise).
* An update carrying ``version`` applies only if it equals the current version (0 for a shadow
  that does not exist yet); otherwise nothing changes (``version_conflict``, HTTP 409).
* The version goes up by exactly 1 on every accepted update that changes something.
  **A no-op update (every value already as written) is accepted without a new version**: it is
  answered on ``accepted`` (so a device waiting for its reply never stalls) with ``changed: false``
  and the current version, but writes no history, no metadata and no delta. AWS bumps the version
  even then; we do not, because a device re-reporting the same state on every boot would otherwise
  churn versions, fill the history with empty changes and make operators' ``If-Match`` PATCHes fail
  with conflicts on versions in which nothing happened.
* What an accepted update "applied" is its effective patch: the smallest merge patch turning the old
  section into the new one (changed leaves, deleted keys as ``null``). The accepted message, the
  metadata stamps and the history record all use it, so unchanged leaves keep their timestamps.
* A delta message is published after an accepted update that changed ``desired`` and left a
  non-empty delta. A device report never triggers one: re-sending the delta to a device that just
  reported it could not apply it would loop.
* On connect, a device gets the current delta (with the current version) if it is non-empty, and
  nothing otherwise: a fleet reconnecting after a broker restart must not pull every full document;
  a device that lost its state asks with ``shadow/get``.
* Limits (``ShadowRules``), checked in this order, first failure wins: shadow name, client token,
  section permission, version, key names, nesting depth and values of the patch, key count of each
  resulting section, then the byte size of desired + reported as compact UTF-8 JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

# --- rejection codes (stable, machine-readable) and their HTTP equivalents ----------------------

INVALID_REQUEST = "invalid_request"
INVALID_SHADOW_NAME = "invalid_shadow_name"
FORBIDDEN_SECTION = "forbidden_section"
VERSION_CONFLICT = "version_conflict"
INVALID_KEY = "invalid_key"
TOO_DEEP = "too_deep"
INVALID_VALUE = "invalid_value"
TOO_MANY_KEYS = "too_many_keys"
STATE_TOO_LARGE = "state_too_large"
NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"

HTTP_STATUS = {
    INVALID_REQUEST: 400, INVALID_SHADOW_NAME: 400, FORBIDDEN_SECTION: 403, VERSION_CONFLICT: 409,
    INVALID_KEY: 400, TOO_DEEP: 400, INVALID_VALUE: 400, TOO_MANY_KEYS: 413, STATE_TOO_LARGE: 413,
    NOT_FOUND: 404, RATE_LIMITED: 429,
}

DESIRED = "desired"
REPORTED = "reported"
SECTIONS = (DESIRED, REPORTED)

DEVICE = "device"
OPERATOR = "operator"
# Which section each kind of writer may change.
WRITABLE = {DEVICE: REPORTED, OPERATOR: DESIRED}

CLASSIC = ""  # the unnamed shadow


@dataclass(frozen=True, slots=True)
class ShadowRules:
    """The knobs of the domain (the job's settings set them)."""

    # desired + reported as compact UTF-8 JSON, metadata excluded (AWS: 8 KB).
    max_state_bytes: int = 8192
    # Levels of objects/arrays in a section; the section itself is level 1 (AWS: 6).
    max_depth: int = 6
    # Keys in one section, counted at every level.
    max_keys: int = 256
    key_pattern: str = r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}"
    # "" is the classic shadow and always allowed; a named shadow must match this (AWS: 1-64 of [a-zA-Z0-9:_-]).
    name_pattern: str = r"[A-Za-z0-9:_-]{1,64}"
    max_client_token_length: int = 64
    # Requests per device and shadow: a bucket of `burst` that refills at `per_second`.
    burst: int = 20
    per_second: int = 10


@lru_cache(maxsize=32)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# --- JSON helpers ------------------------------------------------------------------------------

def dumps(obj: Any) -> str:
    """Compact JSON, the serialization sizes are measured on (and the state is stored in)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_size(obj: Any) -> int:
    return len(dumps(obj).encode())


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (1 == 1.0), but a boolean is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` merged into ``target`` (neither is changed): null deletes, objects merge, the rest replaces.

    An object left empty disappears, so the result never holds ``{}``.
    """
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            base = result.get(key)
            sub = merge(base if isinstance(base, dict) else {}, value)
            if sub:
                result[key] = sub
            else:
                result.pop(key, None)
        else:
            result[key] = _copy(value)
    return result


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The smallest merge patch p with ``merge(old, p) == new`` (for documents without empty objects)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = _copy(value)
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = diff(old[key], value)
            if sub:
                patch[key] = sub
        elif not json_equal(old[key], value):
            patch[key] = _copy(value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def compute_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """Every desired field that differs from reported, recursively (desired-only fields included)."""
    delta: dict[str, Any] = {}
    for key, want in desired.items():
        if key not in reported:
            delta[key] = _copy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                delta[key] = sub
        elif not json_equal(want, have):
            delta[key] = _copy(want)
    return delta


def stamp(patch: dict[str, Any], ts: int) -> dict[str, Any]:
    """The metadata patch for an effective patch: each written leaf becomes ``ts``, deletions stay null."""
    return {k: (None if v is None else stamp(v, ts) if isinstance(v, dict) else ts) for k, v in patch.items()}


def mask(metadata: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """The part of a metadata tree covering the keys of ``shape`` (e.g. of the delta)."""
    out: dict[str, Any] = {}
    for key, value in shape.items():
        if key not in metadata:
            continue
        meta = metadata[key]
        out[key] = mask(meta, value) if isinstance(value, dict) and isinstance(meta, dict) else meta
    return out


def depth(value: Any) -> int:
    """Nesting levels of objects and arrays: a scalar is 0, ``{"a": 1}`` is 1."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def count_keys(value: Any) -> int:
    """Keys of every object at every level (objects inside arrays too)."""
    if isinstance(value, dict):
        return len(value) + sum(count_keys(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_keys(v) for v in value)
    return 0


# --- records -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Source:
    """Who wrote an update: a device (``principal`` is its id) or an operator (their principal name)."""

    kind: str
    principal: str


@dataclass(frozen=True, slots=True)
class ShadowUpdate:
    """One update request. ``state`` holds only the sections it writes: ``{"reported": {...}}``;
    a section mapped to None clears it. ``ts`` is the platform's receive time, which stamps metadata."""

    state: dict[str, dict[str, Any] | None]
    source: Source
    ts: int
    version: int | None = None
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    message: str
    client_token: str | None = None
    # The shadow's current version where known, so a client that lost a race can resync.
    version: int | None = None

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def message_json(self) -> dict[str, Any]:
        """The payload of ``.../shadow/rejected``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.version is not None:
            out["version"] = self.version
        if self.client_token is not None:
            out["client_token"] = self.client_token
        return out


@dataclass(frozen=True, slots=True)
class ShadowDocument:
    device_id: str
    name: str
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    # {"desired": tree of ts, "reported": tree of ts}
    metadata: dict[str, dict[str, Any]] = field(default_factory=lambda: {DESIRED: {}, REPORTED: {}})
    version: int = 0
    updated_at: int | None = None

    @classmethod
    def empty(cls, device_id: str, name: str = CLASSIC) -> ShadowDocument:
        """A shadow that does not exist yet (version 0): what the job starts from."""
        return cls(device_id, name)

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def delta(self) -> dict[str, Any]:
        return compute_delta(self.desired, self.reported)

    def to_json(self) -> dict[str, Any]:
        """The document as the API and ``shadow/document`` show it."""
        return {"device_id": self.device_id, "name": self.name, "version": self.version,
                "state": {DESIRED: _copy(self.desired), REPORTED: _copy(self.reported), "delta": self.delta},
                "metadata": _copy(self.metadata), "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class ShadowChange:
    """One accepted version, for the history (Cassandra and the lake)."""

    device_id: str
    shadow_name: str
    version: int
    source_kind: str
    actor: str
    ts: int
    client_token: str | None
    # The effective patch per section written ({"desired": {...}} and/or {"reported": {...}}).
    patch: dict[str, dict[str, Any]]
    desired: dict[str, Any]
    reported: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "shadow_name": self.shadow_name, "version": self.version,
                "source_kind": self.source_kind, "actor": self.actor, "ts": self.ts,
                "client_token": self.client_token, "patch": _copy(self.patch),
                DESIRED: _copy(self.desired), REPORTED: _copy(self.reported)}


@dataclass(frozen=True, slots=True)
class Accepted:
    document: ShadowDocument
    # Payload of ``.../shadow/accepted``.
    accepted: dict[str, Any]
    # Payload of ``.../shadow/delta``, or None when none is due.
    delta: dict[str, Any] | None
    # The history record, None for a no-op.
    change: ShadowChange | None

    @property
    def changed(self) -> bool:
        return self.change is not None


# --- encoding (what the job stores) ------------------------------------------------------------

def encode(doc: ShadowDocument) -> str:
    return dumps({"device_id": doc.device_id, "name": doc.name, DESIRED: doc.desired, REPORTED: doc.reported,
                  "metadata": doc.metadata, "version": doc.version, "updated_at": doc.updated_at})


def decode(text: str | bytes) -> ShadowDocument:
    raw = json.loads(text)
    return ShadowDocument(raw["device_id"], raw["name"], raw[DESIRED], raw[REPORTED], raw["metadata"],
                          raw["version"], raw["updated_at"])


# --- validation --------------------------------------------------------------------------------

def validate_shadow_name(name: str, rules: ShadowRules = ShadowRules()) -> Rejection | None:
    if name == CLASSIC or (isinstance(name, str) and _regex(rules.name_pattern).fullmatch(name)):
        return None
    return Rejection(INVALID_SHADOW_NAME, f"shadow name {name!r} does not match {rules.name_pattern}")


def _is_version(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_token(token: Any, rules: ShadowRules) -> Rejection | None:
    if token is None:
        return None
    if not isinstance(token, str) or not 1 <= len(token) <= rules.max_client_token_length:
        return Rejection(INVALID_REQUEST, f"client_token must be a string of 1-{rules.max_client_token_length} characters")
    return None


def parse_update(payload: Any, source: Source, ts: int, rules: ShadowRules = ShadowRules()) -> ShadowUpdate | Rejection:
    """A device's ``shadow/update`` payload, or the operator's request body, -> ShadowUpdate.

    ``{"state": {"desired"|"reported": object|null}, "version"?: int >= 0, "client_token"?: str}``;
    a device's own ``ts`` is accepted and ignored (metadata uses the platform's time).
    """
    if not isinstance(payload, dict):
        return Rejection(INVALID_REQUEST, "the update is not a JSON object")
    token = payload.get("client_token")
    if (bad := _check_token(token, rules)) is not None:
        return bad
    unknown = sorted(set(payload) - {"state", "version", "client_token", "ts"})
    if unknown:
        return Rejection(INVALID_REQUEST, f"unknown field {unknown[0]!r}", token)
    state = payload.get("state")
    if not isinstance(state, dict) or not state:
        return Rejection(INVALID_REQUEST, "state must be an object with desired and/or reported", token)
    for section, value in state.items():
        if section not in SECTIONS:
            return Rejection(INVALID_REQUEST, f"state.{section} is not a section (desired, reported)", token)
        if value is not None and not isinstance(value, dict):
            return Rejection(INVALID_REQUEST, f"state.{section} must be an object or null", token)
    version = payload.get("version")
    if version is not None and not _is_version(version):
        return Rejection(INVALID_REQUEST, "version must be an integer >= 0", token)
    return ShadowUpdate(dict(state), source, ts, version, token)


def parse_get(payload: Any, rules: ShadowRules = ShadowRules()) -> str | None | Rejection:
    """A ``shadow/get`` payload -> its client token (None when absent), or why not."""
    if payload is None:
        return None
    if not isinstance(payload, dict) or set(payload) - {"client_token", "ts"}:
        return Rejection(INVALID_REQUEST, "a get is {} or {\"client_token\": ...}")
    token = payload.get("client_token")
    return _check_token(token, rules) or token


def _check_patch(patch: dict[str, Any], path: str, rules: ShadowRules) -> Rejection | None:
    """Depth first, then every key (inside arrays only that it is a string) and every value."""
    if depth(patch) > rules.max_depth:
        return Rejection(TOO_DEEP, f"{path} nests deeper than {rules.max_depth} levels")
    return _check_keys(patch, path, rules, policed=True)


def _check_keys(value: Any, path: str, rules: ShadowRules, policed: bool) -> Rejection | None:
    if isinstance(value, dict):
        key_re = _regex(rules.key_pattern)
        for key, item in value.items():
            if not isinstance(key, str):
                return Rejection(INVALID_VALUE, f"{path}: key {key!r} is not a string")
            if policed and not key_re.fullmatch(key):
                return Rejection(INVALID_KEY, f"{path}: key {key!r} does not match {rules.key_pattern}")
            if (bad := _check_keys(item, f"{path}.{key}", rules, policed)) is not None:
                return bad
        return None
    if isinstance(value, list):
        # Arrays are values, replaced whole: the keys of objects inside them are not field names.
        for index, item in enumerate(value):
            if (bad := _check_keys(item, f"{path}[{index}]", rules, False)) is not None:
                return bad
        return None
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float) and math.isfinite(value):
        return None
    return Rejection(INVALID_VALUE, f"{path}: {value!r} is not a JSON value")


# --- the operations ----------------------------------------------------------------------------

def apply_update(doc: ShadowDocument, update: ShadowUpdate, rules: ShadowRules = ShadowRules()) -> Accepted | Rejection:
    """Apply one update to a document (``ShadowDocument.empty`` when there is none yet).

    Returns ``Accepted`` (the new document, the messages to publish, the history record) or a
    ``Rejection`` (the document is then unchanged: the caller keeps the one it has).
    """
    token = update.client_token
    if (bad := validate_shadow_name(doc.name, rules)) is not None:
        return replace(bad, client_token=token)
    if (bad := _check_token(token, rules)) is not None:
        return bad
    if not update.state:
        return Rejection(INVALID_REQUEST, "state must name desired and/or reported", token)
    allowed = WRITABLE.get(update.source.kind)
    if allowed is None:
        return Rejection(INVALID_REQUEST, f"unknown source kind {update.source.kind!r}", token)
    for section in update.state:
        if section not in SECTIONS:
            return Rejection(INVALID_REQUEST, f"state.{section} is not a section (desired, reported)", token)
        if section != allowed:
            return Rejection(FORBIDDEN_SECTION, f"updates from a {update.source.kind} may write only state.{allowed}", token)
    if update.version is not None and update.version != doc.version:
        return Rejection(VERSION_CONFLICT, f"version {update.version} is not the current version {doc.version}",
                         token, doc.version)
    new = {DESIRED: doc.desired, REPORTED: doc.reported}
    for section, patch in update.state.items():
        if patch is None:
            new[section] = {}
            continue
        if not isinstance(patch, dict):
            return Rejection(INVALID_REQUEST, f"state.{section} must be an object or null", token)
        if (bad := _check_patch(patch, f"state.{section}", rules)) is not None:
            return replace(bad, client_token=token)
        new[section] = merge(new[section], patch)
    for section in SECTIONS:
        if count_keys(new[section]) > rules.max_keys:
            return Rejection(TOO_MANY_KEYS, f"state.{section} would hold more than {rules.max_keys} keys", token)
    size = json_size(new[DESIRED]) + json_size(new[REPORTED])
    if size > rules.max_state_bytes:
        return Rejection(STATE_TOO_LARGE,
                         f"desired + reported would be {size} bytes, more than {rules.max_state_bytes}", token)

    effective = {s: p for s in SECTIONS if (p := diff(getattr(doc, s), new[s]))}
    if not effective:
        accepted = {"version": doc.version, "state": {}, "metadata": {}, "timestamp": update.ts, "changed": False}
        if token is not None:
            accepted["client_token"] = token
        return Accepted(doc, accepted, None, None)

    metadata = {s: merge(doc.metadata.get(s, {}), stamp(effective[s], update.ts)) if s in effective
                else doc.metadata.get(s, {}) for s in SECTIONS}
    version = doc.version + 1
    new_doc = replace(doc, desired=new[DESIRED], reported=new[REPORTED], metadata=metadata, version=version,
                      updated_at=update.ts)
    accepted = {"version": version, "state": _copy(effective),
                "metadata": {s: stamp(p, update.ts) for s, p in effective.items()},
                "timestamp": update.ts, "changed": True}
    if token is not None:
        accepted["client_token"] = token
    delta = delta_message(new_doc, update.ts) if DESIRED in effective else None
    change = ShadowChange(doc.device_id, doc.name, version, update.source.kind, update.source.principal, update.ts,
                          token, _copy(effective), _copy(new[DESIRED]), _copy(new[REPORTED]))
    return Accepted(new_doc, accepted, delta, change)


def delta_message(doc: ShadowDocument, ts: int) -> dict[str, Any] | None:
    """The payload of ``.../shadow/delta`` for the document as it is, or None if nothing differs."""
    delta = doc.delta
    if not delta:
        return None
    return {"version": doc.version, "state": delta, "metadata": mask(doc.metadata.get(DESIRED, {}), delta),
            "timestamp": ts}


def document_message(doc: ShadowDocument, ts: int, client_token: str | None = None) -> dict[str, Any]:
    """The payload of ``.../shadow/document`` (the answer to a get)."""
    out = {"version": doc.version,
           "state": {DESIRED: _copy(doc.desired), REPORTED: _copy(doc.reported), "delta": doc.delta},
           "metadata": _copy(doc.metadata), "timestamp": ts}
    if client_token is not None:
        out["client_token"] = client_token
    return out


def handle_get(doc: ShadowDocument, ts: int, client_token: str | None = None) -> dict[str, Any] | Rejection:
    """A get: the document message, or ``not_found`` for a shadow that was never written."""
    if not doc.exists:
        return Rejection(NOT_FOUND, f"no shadow {doc.name!r} for device {doc.device_id}", client_token, 0)
    return document_message(doc, ts, client_token)


def on_connect(doc: ShadowDocument, ts: int) -> dict[str, Any] | None:
    """What to push to a device that just connected: the current delta if non-empty, else nothing."""
    return delta_message(doc, ts) if doc.exists else None


def is_stale(held_version: int | None, incoming_version: int) -> bool:
    """Device side: ignore a delta or document whose version is not newer than the one held.

    ``held_version`` must be the version of the last delta or document the device applied, not the
    version of its own accepted reports: a report accepted as v5 must not make the device drop the
    operator's delta v4 still on its way (the AWS SDK's skipped-delta bug).
    """
    return held_version is not None and incoming_version <= held_version


# --- request rate per device (a token bucket on passed-in time) --------------------------------

@dataclass(frozen=True, slots=True)
class TokenBucket:
    # In thousandths of a request, so the refill is exact integer arithmetic on both cores.
    milli_tokens: int
    updated_at: int


def take(bucket: TokenBucket | None, now: int, rules: ShadowRules = ShadowRules()) -> tuple[bool, TokenBucket]:
    """May one more request from this device pass at ``now``? Returns the verdict and the new bucket.

    Full at first sight; refills ``per_second`` requests a second (``per_second`` milli-tokens a
    millisecond) up to ``burst``; time going backwards refills nothing. A refused request costs nothing.
    """
    full = rules.burst * 1000
    if bucket is None:
        tokens, last = full, now
    else:
        elapsed = max(0, now - bucket.updated_at)
        tokens = min(full, bucket.milli_tokens + elapsed * rules.per_second)
        last = max(now, bucket.updated_at)
    if tokens >= 1000:
        return True, TokenBucket(tokens - 1000, last)
    return False, TokenBucket(tokens, last)


def rate_limited(client_token: str | None = None, rules: ShadowRules = ShadowRules()) -> Rejection:
    return Rejection(RATE_LIMITED, f"more than {rules.per_second} requests a second (burst {rules.burst})", client_token)
