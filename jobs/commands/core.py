"""The commands core: a KeyedProcessFunction (per device) around jobs.commands.logic.

State per device (keyed by device id), strings so savepoints survive refactoring:

- ``commands``: ValueState, fleet.commands.domain.encode(DeviceCommands);
- ``timer``: ValueState, the processing-time timer registered for the device (epoch ms).

Timers are processing time and registered at logic.wake_at after every record and every timer, so
a deadline or a TTL ends a command on its own: nothing an operator sees depends on another
message arriving. One timer per device at a time (the previous one is deleted when it moves).
RocksDB (the cluster's state backend) checkpoints the state and the timers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from jobs.commands import logic
from jobs.commands.logic import BATCH_MEMBER_FIELDS, COMMAND_FIELDS
from jobs.commands.options import JobOptions
from jobs.commands.records import BATCH_MEMBERS, COMMANDS, DEAD_LETTERS, EVENTS
from jobs.keyed_state import ValueCell, move_timer

_KAFKA_TAGS = {logic.EVENT: EVENTS, logic.DEAD_LETTER: DEAD_LETTERS}


class CommandsCore(KeyedProcessFunction):
    """Main output: downlink Row(device_id, JSON); side outputs: records.SIDE_OUTPUTS."""

    def __init__(self, options: JobOptions):
        self.rules = options.rules
        self.keep_final_ms = options.keep_final_ms

    def open(self, ctx: RuntimeContext) -> None:
        self.cell = ValueCell(ctx.get_state(ValueStateDescriptor("commands", Types.STRING())))
        self.timer = ctx.get_state(ValueStateDescriptor("timer", Types.LONG()))
        group = ctx.get_metrics_group().add_group("commands")
        self.counters = {kind: group.counter(kind) for kind in ("records", "timers", "deadLetters", "sent")}

    def process_element(self, raw: str, ctx: KeyedProcessFunction.Context) -> Iterable:
        key = ctx.get_current_key()
        now = ctx.timer_service().current_processing_time()
        try:
            handled = logic.handle(key, raw, now, self.cell, self.rules, self.keep_final_ms)
        except Exception as e:  # a bug must dead-letter the record, not stop every device's commands
            handled = logic.Handled([logic.dead_letter("invalid_envelope", f"commands job error: {type(e).__name__}: {e}",
                                                       raw if isinstance(raw, str) else "", key, "", now)])
        self.counters["records"].inc()
        yield from self._emit(handled, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable:
        self.timer.clear()  # this one has fired
        key = ctx.get_current_key()
        now = max(timestamp, ctx.timer_service().current_processing_time())
        self.counters["timers"].inc()
        yield from self._emit(logic.fire(key, now, self.cell, self.keep_final_ms), ctx)

    def _emit(self, handled: logic.Handled, ctx: Any) -> Iterable:
        self._schedule(handled.wake_at, ctx)
        for out in handled.outputs:
            if out.kind == logic.DOWNLINK:
                self.counters["sent"].inc()
                yield Row(out.key, json.dumps(out.value, separators=(",", ":"), ensure_ascii=False))
            elif out.kind in _KAFKA_TAGS:
                if out.kind == logic.DEAD_LETTER:
                    self.counters["deadLetters"].inc()
                yield _KAFKA_TAGS[out.kind], Row(out.key, json.dumps(out.value, separators=(",", ":"),
                                                                     ensure_ascii=False))
            elif out.kind == logic.BATCH_MEMBER:
                yield BATCH_MEMBERS, Row(*(out.value[f] for f in BATCH_MEMBER_FIELDS))
            else:
                yield COMMANDS, Row(*(out.value[f] for f in COMMAND_FIELDS))

    def _schedule(self, wake_at: int | None, ctx: Any) -> None:
        move_timer(self.timer, ctx, wake_at)
