"""Reads of what the shadow job stored: current documents, their history, device connectivity.

The shadow job writes the tables (schemas/cql/004_shadow.cql) as changes happen; the API reads
them here. Nothing is written from this side. ``desired``, ``reported``, ``metadata`` and
``patch`` are JSON text in Cassandra and come back as the domain's objects
(:class:`~fleet.shadow.domain.ShadowDocument`, :class:`~fleet.shadow.domain.ShadowChange`).

History pages go newest first; the page token names the last version returned and the next page
holds the versions below it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.infra.cql_values import epoch_ms
from fleet.shadow.domain import DESIRED, REPORTED, ShadowChange, ShadowDocument

if TYPE_CHECKING:  # the driver ships no type hints: Any to mypy, names for the reader
    from cassandra.cluster import Session

MAX_HISTORY_LIMIT = 1000
# Above any version: the first history page starts here.
_TOP_VERSION = 2 ** 63 - 1
_TOKEN_PREFIX = "v:"


def _object(text: str | None) -> dict[str, Any]:
    """A JSON-object column; empty or null is an empty object."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """The last version of a page: the next page holds versions strictly below it."""

    version: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{self.version}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> HistoryCursor | None:
        """None for no token; ValueError for one this module did not issue."""
        if token is None or token == "":
            return None
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("not a history page token") from None
        number = text.removeprefix(_TOKEN_PREFIX)
        if not text.startswith(_TOKEN_PREFIX) or not number.isdigit() or len(number) > 19:
            raise ValueError("not a history page token")
        version = int(number)
        if not 0 < version <= _TOP_VERSION:
            raise ValueError("not a history page token")
        return cls(version)


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """One shadow of a device, for the list of its shadows."""

    name: str
    version: int
    updated_at: int | None


@dataclass(frozen=True, slots=True)
class Connectivity:
    """A device's connection as its status messages (and last will) told it; times in epoch ms."""

    device_id: str
    connected: bool | None
    connected_since: int | None
    last_seen: int | None
    disconnect_reason: str | None
    firmware_version: str | None


class ShadowReader:
    """Prepared reads over one Cassandra session (prepared on construction)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._one = session.prepare(
            "SELECT device_id, name, version, desired, reported, metadata, updated_at FROM shadows "
            "WHERE device_id = ? AND name = ?")
        self._names = session.prepare("SELECT name, version, updated_at FROM shadows WHERE device_id = ?")
        self._history = session.prepare(
            "SELECT version, ts, source_kind, actor, client_token, patch, desired, reported FROM shadow_history "
            "WHERE device_id = ? AND name = ? AND version < ? LIMIT ?")
        self._connectivity = session.prepare(
            "SELECT device_id, connected, connected_since, last_seen, disconnect_reason, firmware_version "
            "FROM device_connectivity WHERE device_id = ?")

    def document(self, device_id: str, name: str) -> ShadowDocument | None:
        """The current document, or None if the shadow was never written."""
        row = self.session.execute(self._one, (device_id, name)).one()
        if row is None or not row.version:
            return None
        metadata = _object(row.metadata)
        return ShadowDocument(device_id, name, _object(row.desired), _object(row.reported),
                              {DESIRED: metadata.get(DESIRED) or {}, REPORTED: metadata.get(REPORTED) or {}},
                              int(row.version), epoch_ms(row.updated_at))

    def shadows(self, device_id: str) -> list[ShadowSummary]:
        """Every shadow of the device ("" = the classic one), by name."""
        rows = self.session.execute(self._names, (device_id,))
        return sorted((ShadowSummary(r.name, int(r.version), epoch_ms(r.updated_at)) for r in rows if r.version),
                      key=lambda s: s.name)

    def history(self, device_id: str, name: str, *, limit: int,
                cursor: HistoryCursor | None = None) -> tuple[list[ShadowChange], HistoryCursor | None]:
        """Up to ``limit`` accepted versions, newest first, below ``cursor``; and the next cursor."""
        below = cursor.version if cursor is not None else _TOP_VERSION
        rows = list(self.session.execute(self._history, (device_id, name, below, limit + 1)))
        changes = [ShadowChange(device_id, name, int(r.version), r.source_kind or "", r.actor or "", epoch_ms(r.ts) or 0,
                                r.client_token, _object(r.patch), _object(r.desired), _object(r.reported))
                   for r in rows[:limit]]
        more = len(rows) > limit and bool(changes)
        return changes, HistoryCursor(changes[-1].version) if more else None

    def connectivity(self, device_ids: Iterable[str]) -> dict[str, Connectivity]:
        """What is known of each device's connection (devices never heard from are absent).

        One single-partition read per device, all in flight at once (a page of a device list).
        """
        futures = [self.session.execute_async(self._connectivity, (device_id,)) for device_id in dict.fromkeys(device_ids)]
        out: dict[str, Connectivity] = {}
        for future in futures:
            row = future.result().one()
            if row is not None:
                out[row.device_id] = Connectivity(row.device_id, row.connected, epoch_ms(row.connected_since),
                                                  epoch_ms(row.last_seen), row.disconnect_reason, row.firmware_version)
        return out
