"""Reads of what the commands job stored, and the API's idempotency keys.

The commands job writes ``commands`` and ``commands_by_device`` (schemas/cql/005_commands.cql) on
every transition; the API reads them here as the domain's command JSON
(fleet.commands.domain.command_json). ``command_idempotency`` is the one table the API writes:
``claim`` is a lightweight transaction, so of two concurrent requests with one key exactly one
creates the command.

Device pages go newest first; the page token names the last command returned (its creation time
and id) and the next page holds the ones after it in that order.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.infra.cql_values import epoch_ms, from_epoch_ms

if TYPE_CHECKING:  # the driver ships no type hints
    from cassandra.cluster import Session

MAX_PAGE_LIMIT = 500
_TOKEN_PREFIX = "c:"


@dataclass(frozen=True, slots=True)
class PageCursor:
    """The last command of a page: the next page starts after it (newest first)."""

    created_at: int
    command_id: str

    def encode(self) -> str:
        text = f"{_TOKEN_PREFIX}{self.created_at}:{self.command_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> PageCursor | None:
        """None for no token; ValueError for one this module did not issue."""
        if token is None or token == "":
            return None
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("not a command page token") from None
        number, _, command_id = text.removeprefix(_TOKEN_PREFIX).partition(":")
        if not text.startswith(_TOKEN_PREFIX) or not number.isdigit() or len(number) > 15 or not command_id:
            raise ValueError("not a command page token")
        return cls(int(number), command_id)


@dataclass(frozen=True, slots=True)
class Claim:
    """The command an idempotency key stands for, and the hash of the body that created it."""

    command_id: str
    body_hash: str


class CommandReader:
    """Prepared statements over one Cassandra session (prepared on construction)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._one = session.prepare("SELECT command FROM commands WHERE command_id = ?")
        self._first = session.prepare(
            "SELECT command_id, created_at, command FROM commands_by_device WHERE device_id = ? LIMIT ?")
        self._same_ms = session.prepare(
            "SELECT command_id, created_at, command FROM commands_by_device "
            "WHERE device_id = ? AND created_at = ? AND command_id > ? LIMIT ?")
        self._older = session.prepare(
            "SELECT command_id, created_at, command FROM commands_by_device "
            "WHERE device_id = ? AND created_at < ? LIMIT ?")
        self._claim = session.prepare(
            "INSERT INTO command_idempotency (device_id, idempotency_key, command_id, body_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
        self._release = session.prepare(
            "DELETE FROM command_idempotency WHERE device_id = ? AND idempotency_key = ? IF command_id = ?")

    def command(self, command_id: str) -> dict[str, Any] | None:
        """The command as command_json, or None (never submitted, refused, or past its retention)."""
        row = self.session.execute(self._one, (command_id,)).one()
        return json.loads(row.command) if row is not None and row.command else None

    def device_commands(self, device_id: str, *, limit: int,
                        cursor: PageCursor | None = None) -> tuple[list[dict[str, Any]], PageCursor | None]:
        """Up to ``limit`` commands of the device, newest first, after ``cursor``; and the next cursor."""
        want = limit + 1
        if cursor is None:
            rows = list(self.session.execute(self._first, (device_id, want)))
        else:
            at = from_epoch_ms(cursor.created_at)
            rows = list(self.session.execute(self._same_ms, (device_id, at, cursor.command_id, want)))
            if len(rows) < want:
                rows += list(self.session.execute(self._older, (device_id, at, want - len(rows))))
        page = [(r.command_id, epoch_ms(r.created_at) or 0, json.loads(r.command)) for r in rows[:limit] if r.command]
        more = len(rows) > limit and bool(page)
        return [c for _, _, c in page], PageCursor(page[-1][1], page[-1][0]) if more else None

    def claim(self, device_id: str, key: str, command_id: str, body_hash: str, now_ms: int) -> Claim:
        """Bind ``key`` to ``command_id`` unless it is bound already; the binding that holds."""
        result = self.session.execute(self._claim, (device_id, key, command_id, body_hash, from_epoch_ms(now_ms)))
        if result.was_applied:
            return Claim(command_id, body_hash)
        row = result.one()  # the existing binding's columns
        return Claim(row.command_id, row.body_hash)

    def release(self, device_id: str, key: str, command_id: str) -> None:
        """Undo a claim whose command never reached Kafka (a retry may then create it)."""
        self.session.execute(self._release, (device_id, key, command_id))
