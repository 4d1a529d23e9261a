"""Bulk commands in Cassandra (schemas/cql/006_command_batches.cql, 007_command_batch_cancel.cql).

``command_batches`` is the API's (the batch and its fan-out's progress); ``command_batch_members``
is the commands job's (each device's command state). Reading a batch's progress reads its members'
partition, only the state column, in pages of ``_FETCH`` rows: about 10 ms per thousand devices.
A cancellation sets ``canceled_at`` once (a lightweight transaction); the fan-out polls it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.infra.cql_values import epoch_ms, from_epoch_ms

if TYPE_CHECKING:  # the driver ships no type hints
    from cassandra.cluster import Session

_FETCH = 5000


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    name: str
    params: dict[str, Any]
    timeout_ms: int
    ttl_ms: int
    target: dict[str, Any]
    scope: frozenset[str] | None  # the creating key's groups; None: an unscoped key
    created_by: str
    created_at: int
    state: str = "submitting"
    error: str | None = None
    targeted: int = 0
    submitted: int = 0
    skipped: int = 0
    skipped_sample: tuple[str, ...] = ()
    heartbeat_at: int | None = None
    canceled_at: int | None = None
    canceled_by: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    device_id: str
    command_id: str
    state: str
    reason: str
    updated_at: int


class BatchStore:
    """Prepared statements over one Cassandra session (prepared on construction)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._create = session.prepare(
            "INSERT INTO command_batches (batch_id, name, params, timeout_ms, ttl_ms, target, scope, created_by, "
            "created_at, state, targeted, submitted, skipped, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?)")
        self._progress = session.prepare(
            "UPDATE command_batches SET state = ?, error = ?, targeted = ?, submitted = ?, skipped = ?, "
            "skipped_sample = ?, heartbeat_at = ? WHERE batch_id = ?")
        self._get = session.prepare("SELECT * FROM command_batches WHERE batch_id = ?")
        self._states = session.prepare("SELECT state FROM command_batch_members WHERE batch_id = ?")
        self._states.fetch_size = _FETCH
        self._members = session.prepare(
            "SELECT device_id, command_id, state, reason, updated_at FROM command_batch_members "
            "WHERE batch_id = ? AND device_id > ? LIMIT ?")
        self._refs = session.prepare(
            "SELECT device_id, command_id, state FROM command_batch_members WHERE batch_id = ?")
        self._refs.fetch_size = _FETCH
        self._cancel = session.prepare(
            "UPDATE command_batches SET canceled_at = ?, canceled_by = ? WHERE batch_id = ? IF canceled_at = null")
        self._canceled = session.prepare("SELECT canceled_at FROM command_batches WHERE batch_id = ?")

    def create(self, b: Batch) -> None:
        self.session.execute(self._create, (
            b.batch_id, b.name, json.dumps(b.params, separators=(",", ":"), ensure_ascii=False), b.timeout_ms,
            b.ttl_ms, json.dumps(b.target, separators=(",", ":")), set(b.scope) if b.scope is not None else None,
            b.created_by, from_epoch_ms(b.created_at), b.state, from_epoch_ms(b.heartbeat_at or b.created_at)))

    def progress(self, batch_id: str, *, state: str, error: str | None, targeted: int, submitted: int,
                 skipped: int, skipped_sample: list[str], now: int) -> None:
        self.session.execute(self._progress, (state, error, targeted, submitted, skipped, skipped_sample or None,
                                              from_epoch_ms(now), batch_id))

    def get(self, batch_id: str) -> Batch | None:
        row = self.session.execute(self._get, (batch_id,)).one()
        if row is None:
            return None
        # An unscoped key's batch has scope null; a scoped key's never empty (a key has >= 1 group).
        scope = frozenset(row.scope) if row.scope else None
        return Batch(row.batch_id, row.name, json.loads(row.params), row.timeout_ms, row.ttl_ms,
                     json.loads(row.target), scope, row.created_by, epoch_ms(row.created_at) or 0, row.state,
                     row.error, row.targeted or 0, row.submitted or 0, row.skipped or 0,
                     tuple(row.skipped_sample or ()), epoch_ms(row.heartbeat_at), epoch_ms(row.canceled_at),
                     row.canceled_by)

    def member_states(self, batch_id: str) -> list[str]:
        """Every member's state (paged through by the driver)."""
        return [r.state for r in self.session.execute(self._states, (batch_id,))]

    def members(self, batch_id: str, *, limit: int, after: str | None = None) -> list[Member]:
        """Up to ``limit`` members in device-id order after device ``after``."""
        rows = self.session.execute(self._members, (batch_id, after or "", limit))
        return [Member(r.device_id, r.command_id, r.state, r.reason or "", epoch_ms(r.updated_at) or 0) for r in rows]

    def member_refs(self, batch_id: str) -> list[Member]:
        """Every member's device, command and state (paged through by the driver; no reason, no time)."""
        return [Member(r.device_id, r.command_id, r.state, "", 0) for r in self.session.execute(self._refs, (batch_id,))]

    def cancel(self, batch_id: str, *, by: str, now: int) -> bool:
        """Mark the batch canceled unless it is already; whether this call marked it."""
        return bool(self.session.execute(self._cancel, (from_epoch_ms(now), by, batch_id)).was_applied)

    def canceled(self, batch_id: str) -> bool:
        """Whether the batch is marked canceled (the fan-out asks between chunks)."""
        row = self.session.execute(self._canceled, (batch_id,)).one()
        return row is not None and row.canceled_at is not None
