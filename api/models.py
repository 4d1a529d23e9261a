"""Response and request bodies shared by several routers (converted from fleet's dataclasses)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.identity.certstore import CertRecord
from fleet.identity.cutoff import CutoffReport
from fleet.identity.devices import Device


def _encodable(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_encodable(v) for v in value)
    return True


class Strict(BaseModel):
    """Request bodies: unknown fields refused, and no text the store cannot hold."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self):
        # JSON may carry lone surrogates ("\ud800"); Cassandra's text type cannot store them.
        if not _encodable(self.__dict__):
            raise ValueError("text must be valid Unicode (no lone surrogates)")
        return self


class DeviceOut(BaseModel):
    device_id: str
    status: Literal["active", "disabled", "revoked"]
    device_type: str | None = None
    metadata: dict[str, str] = {}
    groups: list[str] = []
    cert_serial: str | None = None
    cert_fingerprint: str | None = None
    firmware_version: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(device_id=d.device_id, status=d.status.value, device_type=d.device_type, metadata=dict(d.metadata),
                   groups=sorted(d.groups), cert_serial=d.cert_serial, cert_fingerprint=d.cert_fingerprint,
                   firmware_version=d.firmware_version, created_at=d.created_at, updated_at=d.updated_at)


class CertificateOut(BaseModel):
    serial: str
    fingerprint_sha256: str
    status: Literal["active", "superseded", "on_hold", "revoked"]
    issued_at: dt.datetime
    not_before: dt.datetime | None = None
    not_after: dt.datetime
    revoke_at: dt.datetime | None = Field(None, description="superseded: end of the grace period")
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    pem: str | None = None

    @classmethod
    def of(cls, c: CertRecord) -> CertificateOut:
        return cls(serial=c.serial, fingerprint_sha256=c.fingerprint, status=c.status.value, issued_at=c.issued_at,
                   not_before=c.not_before, not_after=c.not_after, revoke_at=c.revoke_at, revoked_at=c.revoked_at,
                   reason=c.reason, pem=c.pem)


class CutoffOut(BaseModel):
    """What the broker did: the new CRL confirmed in force, live sessions dropped, how long it took."""

    crl_in_force_ms: float | None
    disconnected: list[str]
    elapsed_ms: float
    error: str | None = None

    @classmethod
    def of(cls, r: CutoffReport | None) -> CutoffOut | None:
        if r is None:
            return None
        return cls(crl_in_force_ms=r.crl_in_force_ms, disconnected=r.disconnected, elapsed_ms=r.elapsed_ms,
                   error=r.error)
