"""The firmware catalog: one immutable record per (device_type, version), in Cassandra
(schemas/cql/008_firmware.cql).

``firmware_id`` is derived from the pair (a UUIDv5), so the pair's uniqueness is that of one
row, created by a lightweight transaction. A second upload of the pair is the existing record
when its image is the same (same SHA-256: idempotent) and a conflict otherwise (``settle``).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fleet.identity.devices import NAME_PATTERN
from fleet.infra.cql_values import epoch_ms, from_epoch_ms
from fleet.infra.page_cursor import decode_after, encode_after
from fleet.ota.errors import FirmwareError

if TYPE_CHECKING:  # the driver ships no type hints
    from cassandra.cluster import Session

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
MAX_RELEASE_NOTES = 4000
_ID_NAMESPACE = uuid.UUID("6c3f8e4a-2d0b-5f7e-9a41-0f1e7a5b9c2d")
_COLUMNS = "firmware_id, device_type, version, sha256, size, signature, signer, release_notes, created_at, created_by"


@dataclass(frozen=True, slots=True)
class FirmwareRecord:
    firmware_id: str
    device_type: str
    version: str
    sha256: str
    size: int
    signature: bytes
    signer: str  # the key id that signed: the platform's or a vendor's (fleet/ota/signing.py)
    release_notes: str
    created_at: int  # epoch ms
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {"firmware_id": self.firmware_id, "device_type": self.device_type, "version": self.version,
                "sha256": self.sha256, "size": self.size, "signature": base64.b64encode(self.signature).decode(),
                "signer": self.signer, "release_notes": self.release_notes, "created_at": self.created_at,
                "created_by": self.created_by}


def firmware_id_of(device_type: str, version: str) -> str:
    return uuid.uuid5(_ID_NAMESPACE, f"{device_type}\n{version}").hex


def check_device_type(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise FirmwareError("bad_request", f"device_type {value[:80]!r} is not well-formed: 1-64 letters, digits, "
                                           "'_', '.', ':' or '-', starting with a letter or digit")
    return value


def check_version(value: str) -> str:
    if not VERSION_PATTERN.match(value):
        raise FirmwareError("bad_request", f"version {value[:80]!r} is not well-formed: 1-64 letters, digits, "
                                           "'.', '_', '+', '~' or '-', starting with a letter or digit")
    return value


def check_release_notes(value: str) -> str:
    if len(value) > MAX_RELEASE_NOTES:
        raise FirmwareError("bad_request", f"release_notes longer than {MAX_RELEASE_NOTES} characters")
    return value


def settle(existing: FirmwareRecord, sha256: str) -> FirmwareRecord:
    """The answer to a second upload of ``existing``'s (device_type, version) with image ``sha256``."""
    if existing.sha256 != sha256:
        raise FirmwareError("conflict", f"firmware {existing.version!r} for device type {existing.device_type!r} "
                                        f"exists with another image (sha256 {existing.sha256}); "
                                        "upload a new version instead")
    return existing


def encode_cursor(after: str) -> str:
    return encode_after(after)


def decode_cursor(cursor: str | None) -> str | None:
    """The firmware id (or version, by device type) to continue after; ValueError if not ours."""
    if not cursor:
        return None
    try:
        after = decode_after(cursor)
    except ValueError:
        raise ValueError("not a firmware page token") from None
    if not (VERSION_PATTERN.match(after) or re.fullmatch(r"[0-9a-f]{32}", after)):
        raise ValueError("not a firmware page token")
    return after


class Catalog(Protocol):
    def get(self, firmware_id: str) -> FirmwareRecord | None: ...

    def create(self, record: FirmwareRecord) -> tuple[FirmwareRecord, bool]: ...

    def list(self, *, device_type: str | None, limit: int,
             after: str | None = None) -> tuple[list[FirmwareRecord], str | None]: ...


def _record(row: Any) -> FirmwareRecord:
    return FirmwareRecord(row.firmware_id, row.device_type, row.version, row.sha256, row.size or 0,
                          bytes(row.signature or b""), row.signer or "", row.release_notes or "",
                          epoch_ms(row.created_at) if row.created_at is not None else 0, row.created_by or "")


class CassandraCatalog:
    """Prepared statements over one Cassandra session (prepared on construction)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._create = session.prepare(
            f"INSERT INTO firmware ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self._by_type = session.prepare(
            f"INSERT INTO firmware_by_device_type ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._get = session.prepare(f"SELECT {_COLUMNS} FROM firmware WHERE firmware_id = ?")
        self._first = session.prepare(f"SELECT {_COLUMNS} FROM firmware LIMIT ?")
        self._next = session.prepare(f"SELECT {_COLUMNS} FROM firmware WHERE token(firmware_id) > token(?) LIMIT ?")
        self._of_type = session.prepare(
            f"SELECT {_COLUMNS} FROM firmware_by_device_type WHERE device_type = ? AND version > ? LIMIT ?")

    @staticmethod
    def _values(r: FirmwareRecord) -> tuple[Any, ...]:
        return (r.firmware_id, r.device_type, r.version, r.sha256, r.size, r.signature, r.signer, r.release_notes,
                from_epoch_ms(r.created_at), r.created_by)

    def get(self, firmware_id: str) -> FirmwareRecord | None:
        row = self.session.execute(self._get, (firmware_id,)).one()
        return _record(row) if row is not None else None

    def create(self, record: FirmwareRecord) -> tuple[FirmwareRecord, bool]:
        """The record as stored and whether this call stored it (False: the same image was there)."""
        created = bool(self.session.execute(self._create, self._values(record)).was_applied)
        stored = record if created else self.get(record.firmware_id)
        if stored is None:  # cannot be: the transaction saw the row
            raise FirmwareError("conflict", f"firmware {record.firmware_id} is being written; retry")
        stored = settle(stored, record.sha256) if not created else stored
        # Also on the idempotent path: repairs a copy a crash right after the insert left unwritten.
        self.session.execute(self._by_type, self._values(stored))
        return stored, created

    def list(self, *, device_type: str | None, limit: int,
             after: str | None = None) -> tuple[list[FirmwareRecord], str | None]:
        """A page: by device type in version order, else every record in token order; the next ``after``."""
        if device_type is not None:
            rows = self.session.execute(self._of_type, (device_type, after or "", limit))
        elif after is None:
            rows = self.session.execute(self._first, (limit,))
        else:
            rows = self.session.execute(self._next, (after, limit))
        records = [_record(r) for r in rows]
        if len(records) < limit:
            return records, None
        last = records[-1]
        return records, last.version if device_type is not None else last.firmware_id


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
