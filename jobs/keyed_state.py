"""The keyed-state pieces the commands and OTA jobs share, free of Flink imports (duck-typed):

- ``StateCell``: one key's state as an encoded string, what each job's Flink-free logic reads
  and writes; ``MemoryCell`` in unit tests, ``ValueCell`` over a Flink ValueState in the job;
- ``move_timer``: one processing-time timer per key, kept in a ValueState and moved to each
  step's ``wake_at`` (the previous one deleted), so a key never has two.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateCell(Protocol):
    def get(self) -> str | None: ...

    def put(self, encoded: str) -> None: ...


class MemoryCell:
    """A StateCell in memory (unit tests)."""

    def __init__(self) -> None:
        self.value: str | None = None

    def get(self) -> str | None:
        return self.value

    def put(self, encoded: str) -> None:
        self.value = encoded


class ValueCell:
    """A StateCell over a keyed Flink ValueState of strings (the current key's)."""

    def __init__(self, state: Any):
        self._state = state

    def get(self) -> str | None:
        value: str | None = self._state.value()
        return value

    def put(self, encoded: str) -> None:
        self._state.update(encoded)


def move_timer(timer: Any, ctx: Any, wake_at: int | None) -> None:
    """Make ``wake_at`` the key's one processing-time timer (None: none); ``timer`` is the
    ValueState (LONG) that remembers it, ``ctx`` the function's context."""
    current = timer.value()
    if wake_at == current:
        return
    timers = ctx.timer_service()
    if current is not None:
        timers.delete_processing_time_timer(current)
    if wake_at is None:
        timer.clear()
    else:
        timers.register_processing_time_timer(wake_at)
        timer.update(wake_at)
