"""Device-side remote commands: a handler registry, dedup by command id, receipts and results.

Pure logic, no MQTT: ``CommandProcessor.process(raw, emit)`` takes one ``devices/{id}/commands``
payload and calls ``emit(Message)`` for what to publish (the receipt, then the result); the agent
runs it on a worker (``SerialLane``) so a slow handler never blocks the MQTT loop, and publishes
through the loop. The rules are those of docs/device-contract.md ("Commands"):

* ``{"command_id", "name", "params", "expires_at"}``; a payload that is not JSON or has no usable
  ``command_id`` is logged and ignored (there is no topic to answer on).
* A command id already answered gets the stored result again and never runs twice, across
  restarts (``DedupStore``). One stored as running whose agent died meanwhile is answered
  ``FAILED`` (it may have half run; running it again could do it twice).
* Past ``expires_at`` (beyond ``expiry_grace_ms``, for clock skew and for a ttl-0 command, which is
  sent at its expiry time): ``REJECTED`` with ``"expired"``. A name with no handler: ``REJECTED``
  with ``"unknown_command"``. Malformed name / params / expires_at: ``REJECTED`` with the reason.
* Otherwise the receipt ``{"status": "IN_PROGRESS"}``, the handler, and ``SUCCEEDED`` with its
  ``result`` or ``FAILED`` with ``error`` (the exception's text).

A handler is ``fn(params: dict) -> dict | Reply | None``. It may raise ``CommandFailed`` (FAILED with
that message), ``CommandRefused`` (REJECTED with it) or anything else (FAILED, ``Type: text``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from device.dedup_store import DedupStore
from device.shadow_sync import Message

log = logging.getLogger(__name__)

IN_PROGRESS = "IN_PROGRESS"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
REJECTED = "REJECTED"

EXPIRED = "expired"
UNKNOWN_COMMAND = "unknown_command"
INVALID_COMMAND = "invalid_command"
INTERRUPTED = "interrupted: the agent restarted while the command ran"

# Same rules as the platform (fleet.commands.domain.CommandRules): the id is also a topic level.
COMMAND_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_ERROR_LENGTH = 1024  # schemas/mqtt/command-result.schema.json
MAX_RESULT_KEYS = 256
MAX_RESULT_BYTES = 65_536


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandFailed(Exception):
    """Raised by a handler: the command ran and failed (FAILED with this message)."""


class CommandRefused(Exception):
    """Raised by a handler: the device will not run this command (REJECTED with this message)."""


@dataclass(frozen=True)
class Reply:
    """What a handler may return instead of a plain dict: the result, and something to do on the MQTT
    loop thread once the result is acknowledged by the broker (e.g. go down for a reboot)."""

    result: Mapping[str, Any] | None = None
    after_ack: Callable[[], None] | None = None


Handler = Callable[[dict[str, Any]], Mapping[str, Any] | Reply | None]


class CommandRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def register(self, name: str, fn: Handler) -> Handler:
        """Register (or replace) the handler for ``name``; returns ``fn`` so it works as a decorator
        via ``functools.partial(registry.register, name)``."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"command name {name!r} does not match {NAME_PATTERN.pattern}")
        with self._lock:
            self._handlers[name] = fn
        return fn

    def unregister(self, name: str) -> None:
        with self._lock:
            self._handlers.pop(name, None)

    def get(self, name: str) -> Handler | None:
        with self._lock:
            return self._handlers.get(name)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)


def result_suffix(command_id: str) -> str:
    return f"commands/{command_id}/result"


def _final(status: str, *, result: Mapping[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status}
    if result is not None:
        out["result"] = dict(result)
    if error is not None:
        out["error"] = error[:MAX_ERROR_LENGTH]
    return out


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_result(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A handler's return value as (result object, None), or (None, why it is unusable)."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        return None, f"handler returned {type(value).__name__}, not an object"
    if len(value) > MAX_RESULT_KEYS:
        return None, f"result has more than {MAX_RESULT_KEYS} keys"
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"result is not JSON: {exc}"
    if len(encoded) > MAX_RESULT_BYTES:
        return None, f"result is larger than {MAX_RESULT_BYTES} bytes"
    return json.loads(encoded), None


class CommandProcessor:
    def __init__(self, registry: CommandRegistry, store: DedupStore, *, clock: Callable[[], int] = now_ms,
                 expiry_grace_ms: int = 2_000):
        self.registry = registry
        self.store = store
        self.clock = clock
        self.expiry_grace_ms = expiry_grace_ms
        # Ids running in this process (a stored IN_PROGRESS not in here was cut short by a restart).
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def process(self, raw: bytes | str, emit: Callable[[Message], None]) -> None:
        """Handle one command message; ``emit`` is called for each message to publish, in order.
        Never raises because of the message's content."""
        try:
            cmd = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring a command that is not JSON: %s", exc)
            return
        if not isinstance(cmd, dict):
            log.warning("ignoring a command that is not a JSON object")
            return
        command_id = cmd.get("command_id")
        if not isinstance(command_id, str) or not COMMAND_ID_PATTERN.fullmatch(command_id):
            log.warning("ignoring a command without a valid command_id: %.80r", command_id)
            return
        suffix = result_suffix(command_id)
        now = self.clock()
        expires_at = cmd.get("expires_at")
        stored_expiry = expires_at if type(expires_at) is int else None

        with self._lock:
            stored = self.store.get(command_id)
            if stored is not None:
                if stored.get("status") == IN_PROGRESS and command_id not in self._running:
                    stored = _final(FAILED, error=INTERRUPTED)
                    self.store.put(command_id, stored, now, stored_expiry)
                log.info("command %s: repeat, answering %s again", command_id, stored.get("status"))
                emit(Message(suffix, stored))
                return

        def finish(payload: dict[str, Any], after_ack: Callable[[], None] | None = None) -> None:
            with self._lock:
                self.store.put(command_id, payload, self.clock(), stored_expiry)
                self._running.discard(command_id)
            emit(Message(suffix, payload, after_ack))

        checked = self._check(cmd, now)
        if isinstance(checked, dict):
            finish(checked)
            return
        name, params, handler = checked
        receipt = {"status": IN_PROGRESS}
        with self._lock:
            # Stored before running: a crash while the handler runs must never lead to a second run.
            self.store.put(command_id, receipt, now, stored_expiry)
            self._running.add(command_id)
        emit(Message(suffix, receipt))
        finish(*self._run(command_id, name, params, handler))

    def _check(self, cmd: dict[str, Any], now: int) -> dict[str, Any] | tuple[str, dict[str, Any], Handler]:
        """The REJECTED result for a command that must not run, else its name, params and handler."""
        name, params, expires_at = cmd.get("name"), cmd.get("params", {}), cmd.get("expires_at")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            return _final(REJECTED, error=f"{INVALID_COMMAND}: name must match {NAME_PATTERN.pattern}")
        if not isinstance(params, dict):
            return _final(REJECTED, error=f"{INVALID_COMMAND}: params must be an object")
        if expires_at is not None and type(expires_at) is not int:
            return _final(REJECTED, error=f"{INVALID_COMMAND}: expires_at must be epoch milliseconds")
        if expires_at is not None and now > expires_at + self.expiry_grace_ms:
            return _final(REJECTED, error=EXPIRED)
        handler = self.registry.get(name)
        if handler is None:
            return _final(REJECTED, error=UNKNOWN_COMMAND)
        return name, params, handler

    @staticmethod
    def _run(command_id: str, name: str, params: dict[str, Any],
             handler: Handler) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """Run the handler: the final result message, and what to do once it is acknowledged."""
        try:
            value = handler(params)
        except CommandFailed as exc:
            return _final(FAILED, error=str(exc) or "failed"), None
        except CommandRefused as exc:
            return _final(REJECTED, error=str(exc) or "refused"), None
        except Exception as exc:
            log.warning("command %s (%s) failed: %s", command_id, name, _error_text(exc))
            return _final(FAILED, error=_error_text(exc)), None
        after_ack = value.after_ack if isinstance(value, Reply) else None
        result, problem = _check_result(value.result if isinstance(value, Reply) else value)
        if problem is not None:
            return _final(FAILED, error=problem), None
        return _final(SUCCEEDED, result=result), after_ack


# -- workers --------------------------------------------------------------------------------------

_shared_pool: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ThreadPoolExecutor:
    """One small pool for every agent in the process (the simulator runs thousands of agents)."""
    global _shared_pool
    with _shared_lock:
        if _shared_pool is None:
            _shared_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="device-worker")
        return _shared_pool


class SerialLane:
    """Runs submitted calls one at a time, in submission order, on an executor shared with others:
    one device's deltas (or commands) apply in the order they arrived, while other devices' run in
    parallel. A call that raises is logged; the lane goes on."""

    def __init__(self, executor: Executor | None = None, name: str = "lane"):
        self._executor = executor
        self.name = name
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._busy = False
        self._idle = threading.Condition(self._lock)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._queue.append((fn, args))
            if self._busy:
                return
            self._busy = True
        (self._executor or shared_pool()).submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._busy = False
                    self._idle.notify_all()
                    return
                fn, args = self._queue.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("%s: a downlink task failed", self.name)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far has run (tests, clean shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)
