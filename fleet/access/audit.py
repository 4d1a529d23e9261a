"""The audit log (``audit_log`` in 001_registry.cql): who did what, when, with what outcome.

One partition per UTC day, newest first. ``detail`` is a short JSON object chosen by the caller;
it must never contain secrets (the API writes ids, names and status codes only).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cassandra.util import datetime_from_uuid1, uuid_from_time

if TYPE_CHECKING:  # the driver ships no type hints: these are Any to mypy, names for the reader
    from cassandra.cluster import ResponseFuture, Session
    from cassandra.query import PreparedStatement


@dataclass(frozen=True)
class AuditRecord:
    id: str
    ts: dt.datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]


def day_of(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%d")


class AuditLog:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._insert = session.prepare(
            "INSERT INTO audit_log (day, ts, actor, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)")
        self._list = session.prepare(
            "SELECT ts, actor, action, target, outcome, detail FROM audit_log WHERE day = ? LIMIT ?")
        self._list_before = session.prepare(
            "SELECT ts, actor, action, target, outcome, detail FROM audit_log WHERE day = ? AND ts < ? LIMIT ?")

    def _statement(self, actor: str, action: str, target: str | None, outcome: str,
                   detail: dict[str, Any] | None) -> tuple[PreparedStatement, tuple[Any, ...]]:
        now = dt.datetime.now(dt.UTC)
        return self._insert, (day_of(now), uuid_from_time(now), actor, action, target, outcome,
                              json.dumps(detail or {}, default=str, sort_keys=True))

    def record(self, actor: str, action: str, target: str | None, outcome: str,
               detail: dict[str, Any] | None = None) -> None:
        self.session.execute(*self._statement(actor, action, target, outcome, detail))

    def record_async(self, actor: str, action: str, target: str | None, outcome: str,
                     detail: dict[str, Any] | None = None) -> ResponseFuture:
        """A cassandra ResponseFuture; for callers on an event loop that must not block."""
        return self.session.execute_async(*self._statement(actor, action, target, outcome, detail))

    def list(self, day: str, limit: int, before: str | None = None) -> list[AuditRecord]:
        if before:
            rows = self.session.execute(self._list_before, (day, uuid.UUID(before), limit))
        else:
            rows = self.session.execute(self._list, (day, limit))
        return [AuditRecord(str(r.ts), datetime_from_uuid1(r.ts).replace(tzinfo=dt.UTC), r.actor, r.action,
                            r.target, r.outcome, json.loads(r.detail or "{}")) for r in rows]
