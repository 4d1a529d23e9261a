"""Certificate records in Cassandra (``certificates``, ``pending_revocations``; 003_security.cql).

Every certificate the platform issues to a device or a claim is recorded with its fate, so the
registry - not the CA's files - is the source of truth, and the CRL can be rebuilt from it.
"""

from __future__ import annotations

import builtins
import datetime as dt
from dataclasses import dataclass
from enum import Enum

from fleet.identity.pki import IssuedCertificate
from fleet.infra.cql_values import as_utc

_SHARD = 0  # revocations pending a grace period are few; one partition, ordered by time
_COLUMNS = "owner, serial, kind, fingerprint, status, issued_at, not_before, not_after, revoke_at, revoked_at, reason, pem"


class CertStatus(str, Enum):
    active = "active"
    superseded = "superseded"  # rotated; stays valid until revoke_at
    on_hold = "on_hold"        # device disabled
    revoked = "revoked"


@dataclass(frozen=True)
class CertRecord:
    owner: str
    serial: str
    kind: str  # "device" | "claim"
    fingerprint: str
    status: CertStatus
    issued_at: dt.datetime
    not_before: dt.datetime | None
    not_after: dt.datetime
    revoke_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    pem: str | None = None


def _record(row) -> CertRecord:
    return CertRecord(row.owner, row.serial, row.kind, row.fingerprint, CertStatus(row.status), as_utc(row.issued_at),
                      as_utc(row.not_before), as_utc(row.not_after), as_utc(row.revoke_at), as_utc(row.revoked_at),
                      row.reason, row.pem)


class CertificateStore:
    def __init__(self, session):
        self.session = session
        self._insert = session.prepare(f"INSERT INTO certificates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._list = session.prepare(f"SELECT {_COLUMNS} FROM certificates WHERE owner = ?")
        self._get = session.prepare(f"SELECT {_COLUMNS} FROM certificates WHERE owner = ? AND serial = ?")
        self._set_status = session.prepare(
            "UPDATE certificates SET status = ?, revoke_at = ?, revoked_at = ?, reason = ? WHERE owner = ? AND serial = ?")
        self._schedule = session.prepare(
            "INSERT INTO pending_revocations (shard, revoke_at, serial, owner, kind) VALUES (?, ?, ?, ?, ?)")
        self._due = session.prepare(
            "SELECT revoke_at, serial, owner, kind FROM pending_revocations WHERE shard = ? AND revoke_at <= ?")
        self._unschedule = session.prepare(
            "DELETE FROM pending_revocations WHERE shard = ? AND revoke_at = ? AND serial = ?")

    def add(self, owner: str, kind: str, cert: IssuedCertificate) -> CertRecord:
        now = dt.datetime.now(dt.UTC)
        record = CertRecord(owner, str(cert.serial), kind, cert.fingerprint_sha256, CertStatus.active, now,
                            cert.not_before, cert.not_after, pem=cert.pem.decode())
        self.session.execute(self._insert, (owner, record.serial, kind, record.fingerprint, record.status.value, now,
                                            record.not_before, record.not_after, None, None, None, record.pem))
        return record

    def list(self, owner: str) -> list[CertRecord]:
        return sorted((_record(r) for r in self.session.execute(self._list, (owner,))),
                      key=lambda r: r.issued_at, reverse=True)

    def get(self, owner: str, serial: str) -> CertRecord | None:
        row = self.session.execute(self._get, (owner, serial)).one()
        return _record(row) if row else None

    def set_status(self, record: CertRecord, status: CertStatus, *, reason: str | None = None,
                   revoke_at: dt.datetime | None = None) -> None:
        revoked_at = dt.datetime.now(dt.UTC) if status is CertStatus.revoked else None
        self.session.execute(self._set_status, (status.value, revoke_at, revoked_at, reason, record.owner, record.serial))

    def all(self):
        """Every certificate record (a full scan: for repairs such as rebuilding the CRL)."""
        return (_record(r) for r in self.session.execute(f"SELECT {_COLUMNS} FROM certificates"))

    def schedule_revocation(self, record: CertRecord, revoke_at: dt.datetime) -> None:
        self.set_status(record, CertStatus.superseded, reason="rotated", revoke_at=revoke_at)
        self.session.execute(self._schedule, (_SHARD, revoke_at, record.serial, record.owner, record.kind))

    # builtins.list: the method ``list`` above shadows the builtin in this class body.
    def due(self, now: dt.datetime | None = None) -> builtins.list[tuple[dt.datetime, str, str, str]]:
        """(revoke_at, serial, owner, kind) of superseded certificates whose grace period is over."""
        now = now or dt.datetime.now(dt.UTC)
        return [(as_utc(r.revoke_at), r.serial, r.owner, r.kind) for r in self.session.execute(self._due, (_SHARD, now))]

    def unschedule(self, revoke_at: dt.datetime, serial: str) -> None:
        self.session.execute(self._unschedule, (_SHARD, revoke_at, serial))
