"""The OTA job's two keyed functions, thin shells around jobs.ota.logic.

``RolloutCore`` (keyed by deployment id). State: ``rollout`` (ValueState, fleet.ota.rollout.encode),
``targets`` (MapState index -> device id), ``members`` (MapState device id -> rollout.Member.encode),
``timer``. ``DeviceCore`` (keyed by device id). State: ``ota`` (ValueState,
fleet.ota.execution.encode), ``timer``. Strings, so savepoints survive refactoring.

Timers are processing time, one per key at a time, registered at the logic's ``wake_at`` after
every record and every timer: a release at the rate limit, a health window, a timeout happen on
their own, never waiting for another record. RocksDB checkpoints the state and the timers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from fleet.ota import download_urls
from fleet.ota.rollout import Member
from jobs.keyed_state import ValueCell, move_timer
from jobs.ota import logic
from jobs.ota.logic import DEPLOYMENT_FIELDS, EXECUTION_FIELDS, NEW_DEPLOYMENT_FIELDS
from jobs.ota.records import (
    DEPLOYMENTS,
    DEVICE_DEAD_LETTERS,
    EVENTS,
    EXECUTIONS,
    NEW_DEPLOYMENTS,
    REQUESTS,
    ROLLOUT_DEAD_LETTERS,
)


class _Members:
    """fleet.ota.rollout.Members over the function's two MapStates (the current key's)."""

    def __init__(self, targets: Any, members: Any):
        self._targets = targets
        self._members = members

    def target(self, index: int) -> str | None:
        value: str | None = self._targets.get(index)
        return value

    def put_target(self, index: int, device_id: str) -> None:
        self._targets.put(index, device_id)

    def member(self, device_id: str) -> Member | None:
        value = self._members.get(device_id)
        return Member.decode(value) if value is not None else None

    def put_member(self, device_id: str, member: Member) -> None:
        self._members.put(device_id, member.encode())


def _json_row(out: logic.Output) -> Row:
    return Row(out.key, json.dumps(out.value, separators=(",", ":"), ensure_ascii=False))


class _TimedCore(KeyedProcessFunction):
    """The shell both functions share: a record or a timer -> ``_handle`` / ``_fire`` (the logic)
    -> ``_emit``; one processing-time timer per key, moved to each step's wake_at."""

    grace_ms = 0
    counters: dict[str, Any]

    def _handle(self, key: str, raw: str, now: int) -> logic.Handled:
        raise NotImplementedError

    def _fire(self, now: int) -> logic.Handled:
        raise NotImplementedError

    def _emit(self, handled: logic.Handled, ctx: Any) -> Iterable:
        raise NotImplementedError

    def process_element(self, raw: str, ctx: KeyedProcessFunction.Context) -> Iterable:
        # The keyed stream (internals.key_by_device) hands over the value; the key is the current key.
        now = ctx.timer_service().current_processing_time()
        key = ctx.get_current_key()
        try:
            handled = self._handle(key, raw, now)
        except Exception as e:  # a bug must dead-letter the record, not stop every other key
            handled = self._failed(e, raw, key, now)
        self.counters["records"].inc()
        yield from self._emit(handled, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable:
        self.timer.clear()
        self.counters["timers"].inc()
        now = max(timestamp, ctx.timer_service().current_processing_time())
        if (later := self._deferred(now)) is not None:
            yield from self._emit(logic.Handled([], later), ctx)
            return
        try:
            handled = self._fire(now)
        except Exception as e:
            handled = self._failed(e, "", ctx.get_current_key(), now, retry=True)
        yield from self._emit(handled, ctx)

    def _open_timer(self, ctx: RuntimeContext) -> None:
        self.timer = ctx.get_state(ValueStateDescriptor("timer", Types.LONG()))
        self.opened_at = int(time.time() * 1000)

    def _deferred(self, now: int) -> int | None:
        """After a start or a restore, timers that were due while the job was down fire before the
        backlog of device reports is read: a device that crashed meanwhile would pass its health
        window, a device that reported would time out. They wait ``grace_ms`` for the input."""
        ready = self.opened_at + self.grace_ms
        return ready if now < ready else None

    def _failed(self, e: Exception, raw: Any, key: str | None, now: int, retry: bool = False) -> logic.Handled:
        """A bug: dead-letter the record and keep the key's timer (retried a minute later when it
        was the timer that failed), so the key is never left without one."""
        letter = logic.dead_letter("invalid_envelope", f"ota job error: {type(e).__name__}: {e}",
                                   raw if isinstance(raw, str) else "", key, "", now)
        return logic.Handled([letter], now + 60_000 if retry else self.timer.value())

    def _schedule(self, wake_at: int | None, ctx: Any) -> None:
        move_timer(self.timer, ctx, wake_at)


class RolloutCore(_TimedCore):
    """Main output: ota-assignments Row(device_id, JSON); side outputs: DEPLOYMENTS, NEW_DEPLOYMENTS,
    REQUESTS (rollbacks) and ROLLOUT_DEAD_LETTERS."""

    def __init__(self, grace_ms: int):
        self.grace_ms = grace_ms

    def open(self, ctx: RuntimeContext) -> None:
        self.cell = ValueCell(ctx.get_state(ValueStateDescriptor("rollout", Types.STRING())))
        self.members = _Members(ctx.get_map_state(MapStateDescriptor("targets", Types.INT(), Types.STRING())),
                                ctx.get_map_state(MapStateDescriptor("members", Types.STRING(), Types.STRING())))
        self._open_timer(ctx)
        group = ctx.get_metrics_group().add_group("ota_rollout")
        self.counters = {k: group.counter(k) for k in ("records", "timers", "deadLetters", "assignments")}

    def _handle(self, key: str, raw: str, now: int) -> logic.Handled:
        return logic.rollout_handle(key, raw, now, self.cell, self.members)

    def _fire(self, now: int) -> logic.Handled:
        return logic.rollout_fire(now, self.cell, self.members)

    def _emit(self, handled: logic.Handled, ctx: Any) -> Iterable:
        self._schedule(handled.wake_at, ctx)
        for out in handled.outputs:
            if out.kind == logic.ASSIGNMENT:
                self.counters["assignments"].inc()
                yield _json_row(out)
            elif out.kind == logic.DEAD_LETTER:
                self.counters["deadLetters"].inc()
                yield ROLLOUT_DEAD_LETTERS, _json_row(out)
            elif out.kind == logic.REQUEST:
                yield REQUESTS, _json_row(out)
            elif out.kind == logic.NEW_DEPLOYMENT:
                yield NEW_DEPLOYMENTS, Row(*(out.value[f] for f in NEW_DEPLOYMENT_FIELDS))
            else:
                yield DEPLOYMENTS, Row(*(out.value[f] for f in DEPLOYMENT_FIELDS))


class DeviceCore(_TimedCore):
    """Main output: downlink Row(device_id, JSON); side outputs: EVENTS, EXECUTIONS, DEVICE_DEAD_LETTERS."""

    def __init__(self, url_key_path: str, url_ttl_s: int, grace_ms: int):
        self.url_key_path = url_key_path
        self.url_ttl_s = url_ttl_s
        self.grace_ms = grace_ms

    def open(self, ctx: RuntimeContext) -> None:
        key = download_urls.load_or_create_key(Path(self.url_key_path))
        ttl = self.url_ttl_s

        def url_for(deployment_id: str, device_id: str, firmware_id: str, now_ms: int) -> str:
            return download_urls.download_path(key, deployment_id, device_id, firmware_id, now_ms / 1000, ttl)

        self.url_for = url_for
        self.cell = ValueCell(ctx.get_state(ValueStateDescriptor("ota", Types.STRING())))
        self._open_timer(ctx)
        group = ctx.get_metrics_group().add_group("ota_device")
        self.counters = {k: group.counter(k) for k in ("records", "timers", "deadLetters", "notices", "transitions")}

    def _handle(self, key: str, raw: str, now: int) -> logic.Handled:
        return logic.device_handle(key, raw, now, self.cell, self.url_for)

    def _fire(self, now: int) -> logic.Handled:
        return logic.device_fire(now, self.cell, self.url_for)

    def _emit(self, handled: logic.Handled, ctx: Any) -> Iterable:
        self._schedule(handled.wake_at, ctx)
        for out in handled.outputs:
            if out.kind == logic.DOWNLINK:
                self.counters["notices"].inc()
                yield _json_row(out)
            elif out.kind == logic.EVENT:
                self.counters["transitions"].inc()
                yield EVENTS, _json_row(out)
            elif out.kind == logic.DEAD_LETTER:
                self.counters["deadLetters"].inc()
                yield DEVICE_DEAD_LETTERS, _json_row(out)
            else:
                yield EXECUTIONS, Row(*(out.value[f] for f in EXECUTION_FIELDS))
