"""Device-side shadow sync: apply deltas, report what was applied, converge after a reconnect.

Pure logic, no MQTT: every entry point takes what arrived and returns the messages to publish
(``Message(suffix, payload)`` under ``devices/{id}/``); the agent routes and publishes them. The
rules are those of docs/device-contract.md ("Shadow"):

* Per shadow (the classic one is ``""``) the device keeps its ``reported`` state and the version of
  the last delta or document it applied. A delta or document whose version is not newer is dropped
  (``fleet.shadow.domain.is_stale``); ``accepted`` replies to our own reports never advance that
  version, since an operator's earlier delta may still be on its way.
* A delta goes through the ``apply_desired(name, delta)`` hook, which returns what the device
  actually applied (default: everything); that is merged into ``reported`` and reported with
  ``shadow/update``. A hook that raises applies nothing and leaves the version where it was, so the
  delta the platform pushes on the next connect is applied then.
* A document (the answer to ``shadow/get``) is adopted: the desired fields that differ from what the
  device holds go through the same hook, and the device reports every difference between its state
  and the platform's ``reported``. A device without local state takes the platform's ``reported``
  as its own (it is what the device said before it lost its state).
* On connect nothing is needed (the platform pushes the current delta), except ``shadow/get`` for a
  shadow the device has no local state for (first start, state lost).
* ``rejected`` is logged; ``version_conflict`` triggers a get; ``not_found`` (a get of a shadow never
  written) records an empty state so the next start does not ask again.

State (version and reported per shadow) is persisted in a JSON file, replaced atomically.
Thread-safe: the agent applies downlink on a worker while command handlers may report (set_config).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from device.statefile import read_json, write_json
from fleet.contract.topics import SHADOW_NAME_PATTERN, shadow_topic_suffix
from fleet.shadow.domain import (
    CLASSIC,
    DESIRED,
    DEVICE,
    NOT_FOUND,
    REPORTED,
    VERSION_CONFLICT,
    Rejection,
    ShadowDocument,
    ShadowUpdate,
    Source,
    apply_update,
    compute_delta,
    diff,
    is_stale,
    merge,
)

log = logging.getLogger(__name__)

# apply_desired(shadow name, delta) -> what the device actually applied (a merge patch of reported).
ApplyDesired = Callable[[str, dict[str, Any]], Mapping[str, Any] | None]

SHADOW_KINDS = frozenset({"accepted", "rejected", "delta", "document"})
_FILE_FORMAT = 1


class Message(NamedTuple):
    """One message to publish on devices/{id}/{suffix}. ``after_ack`` runs on the MQTT loop thread
    once the broker acknowledged it (the reboot command goes down only after its result is out)."""

    suffix: str
    payload: dict[str, Any]
    after_ack: Callable[[], None] | None = None


def accept_all(name: str, delta: dict[str, Any]) -> dict[str, Any]:
    """The default ``apply_desired``: the device takes every desired value as it is."""
    return delta


def parse_shadow_suffix(suffix: str) -> tuple[str, str] | None:
    """``shadow/<kind>`` -> ("", kind), ``shadow/name/{n}/<kind>`` -> (n, kind); None for anything else
    (including the device's own ``update``/``get``)."""
    parts = suffix.split("/")
    if len(parts) == 2 and parts[0] == "shadow" and parts[1] in SHADOW_KINDS:
        return CLASSIC, parts[1]
    if (len(parts) == 4 and parts[0] == "shadow" and parts[1] == "name" and parts[3] in SHADOW_KINDS
            and SHADOW_NAME_PATTERN.fullmatch(parts[2])):
        return parts[2], parts[3]
    return None


def _is_version(value: Any) -> TypeGuard[int]:
    return type(value) is int and value >= 0


@dataclass
class LocalShadow:
    # Version of the last delta or document applied (None: none yet, nothing is stale).
    version: int | None = None
    reported: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "reported": self.reported}


class ShadowSync:
    def __init__(self, path: Path | None = None, apply_desired: ApplyDesired = accept_all,
                 names: Iterable[str] = (CLASSIC,)):
        self.path = path
        self.apply_desired = apply_desired
        # The shadows to fetch on connect when there is no local state for them.
        self.names = tuple(names)
        self._lock = threading.RLock()
        self._tokens = itertools.count(1)
        self._token_prefix = secrets.token_hex(4)
        self._shadows: dict[str, LocalShadow] = self._load()

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> dict[str, LocalShadow]:
        raw = read_json(self.path)
        out: dict[str, LocalShadow] = {}
        if not isinstance(raw, dict) or not isinstance(raw.get("shadows"), dict):
            return out
        for name, entry in raw["shadows"].items():
            if not isinstance(entry, dict):
                continue
            version = entry.get("version")
            reported = entry.get("reported")
            out[name] = LocalShadow(version if _is_version(version) else None,
                                    reported if isinstance(reported, dict) else {})
        return out

    def _save(self) -> None:
        write_json(self.path, {"format": _FILE_FORMAT,
                               "shadows": {name: s.to_json() for name, s in self._shadows.items()}})

    # -- state ------------------------------------------------------------------------------
    def has_state(self, name: str = CLASSIC) -> bool:
        with self._lock:
            return name in self._shadows

    def reported(self, name: str = CLASSIC) -> dict[str, Any]:
        """A copy of what the device holds as reported for this shadow."""
        with self._lock:
            shadow = self._shadows.get(name)
            return json.loads(json.dumps(shadow.reported)) if shadow else {}

    def version(self, name: str = CLASSIC) -> int | None:
        """Version of the last delta or document applied (None: none)."""
        with self._lock:
            shadow = self._shadows.get(name)
            return shadow.version if shadow else None

    def _token(self) -> str:
        return f"{self._token_prefix}-{next(self._tokens)}"

    def _update(self, name: str, patch: dict[str, Any]) -> Message:
        return Message(shadow_topic_suffix("update", name),
                       {"state": {REPORTED: patch}, "client_token": self._token()})

    def _get(self, name: str) -> Message:
        return Message(shadow_topic_suffix("get", name), {"client_token": self._token()})

    # -- inputs -----------------------------------------------------------------------------
    def on_connect(self) -> list[Message]:
        """A get for every configured shadow the device holds no state for."""
        with self._lock:
            return [self._get(name) for name in self.names if name not in self._shadows]

    def report(self, name: str, patch: Mapping[str, Any]) -> Message | None:
        """A change the device made itself (e.g. set_config): merged locally, then reported."""
        with self._lock:
            shadow = self._shadows.setdefault(name, LocalShadow())
            new = merge(shadow.reported, dict(patch))
            effective = diff(shadow.reported, new)
            shadow.reported = new
            self._save()
            return self._update(name, effective) if effective else None

    def check_report(self, name: str, patch: Mapping[str, Any]) -> str | None:
        """Why the platform would reject reporting ``patch`` (the shadow rules on the local state:
        keys, depth, values, size of reported), or None if it would pass."""
        with self._lock:
            shadow = self._shadows.get(name)
            doc = ShadowDocument("device", name, reported=dict(shadow.reported) if shadow else {}, version=1)
        outcome = apply_update(doc, ShadowUpdate({REPORTED: dict(patch)}, Source(DEVICE, "device"), 0))
        return f"{outcome.code}: {outcome.message}" if isinstance(outcome, Rejection) else None

    def handle(self, name: str, kind: str, raw: bytes | str) -> list[Message]:
        """One downlink message (``kind`` from ``parse_shadow_suffix``); never raises on bad input."""
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("shadow %r: ignoring %s that is not JSON: %s", name, kind, exc)
            return []
        if not isinstance(payload, dict):
            log.warning("shadow %r: ignoring %s that is not a JSON object", name, kind)
            return []
        if kind == "delta":
            return self.on_delta(name, payload)
        if kind == "document":
            return self.on_document(name, payload)
        if kind == "rejected":
            return self.on_rejected(name, payload)
        return []  # accepted: nothing to do, and it must not advance the held version

    def _apply(self, name: str, delta: dict[str, Any]) -> dict[str, Any] | None:
        """The hook's verdict as a merge patch, or None if it failed (logged)."""
        try:
            applied = self.apply_desired(name, json.loads(json.dumps(delta)))
        except Exception:
            log.exception("shadow %r: apply_desired failed; the delta stays pending", name)
            return None
        if applied is None:
            return {}
        if not isinstance(applied, Mapping):
            log.error("shadow %r: apply_desired returned %s, not a mapping; nothing applied", name,
                      type(applied).__name__)
            return None
        return dict(applied)

    def on_delta(self, name: str, payload: dict[str, Any]) -> list[Message]:
        version, state = payload.get("version"), payload.get("state")
        if not _is_version(version) or not isinstance(state, dict):
            log.warning("shadow %r: ignoring a delta without an integer version and a state object", name)
            return []
        with self._lock:
            shadow = self._shadows.get(name)
            if is_stale(shadow.version if shadow else None, version):
                log.debug("shadow %r: dropping stale delta v%s (holding v%s)", name, version,
                          shadow.version if shadow else None)
                return []
            applied = self._apply(name, state)
            if applied is None:
                return []
            shadow = self._shadows.setdefault(name, LocalShadow())
            shadow.version = version
            shadow.reported = merge(shadow.reported, applied)
            self._save()
            return [self._update(name, applied)] if applied else []

    def on_document(self, name: str, payload: dict[str, Any]) -> list[Message]:
        version, state = payload.get("version"), payload.get("state")
        if not _is_version(version) or not isinstance(state, dict):
            log.warning("shadow %r: ignoring a document without an integer version and a state object", name)
            return []
        desired, platform_reported = state.get(DESIRED) or {}, state.get(REPORTED) or {}
        if not isinstance(desired, dict) or not isinstance(platform_reported, dict):
            log.warning("shadow %r: ignoring a document whose desired or reported is not an object", name)
            return []
        with self._lock:
            shadow = self._shadows.get(name)
            if is_stale(shadow.version if shadow else None, version):
                log.debug("shadow %r: dropping stale document v%s", name, version)
                return []
            base = shadow.reported if shadow else platform_reported
            pending = compute_delta(desired, base)
            applied = self._apply(name, pending) if pending else {}
            if applied is None:
                return []
            shadow = self._shadows.setdefault(name, LocalShadow())
            shadow.version = version
            shadow.reported = merge(base, applied)
            self._save()
            differences = diff(platform_reported, shadow.reported)
            return [self._update(name, differences)] if differences else []

    def on_rejected(self, name: str, payload: dict[str, Any]) -> list[Message]:
        code, message = payload.get("code"), payload.get("message")
        log.warning("shadow %r: platform rejected a request: %s %s", name, code, message)
        with self._lock:
            if code == VERSION_CONFLICT:
                return [self._get(name)]
            if code == NOT_FOUND and name not in self._shadows:
                # Never written: an empty state is the truth, and the next start need not ask again.
                self._shadows[name] = LocalShadow()
                self._save()
        return []
