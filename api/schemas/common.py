"""Response models several resources return (converted from fleet's dataclasses)."""

from __future__ import annotations

import datetime as dt
from typing import Literal, overload

from pydantic import Field

from api.schemas.base import ResponseModel
from api.schemas.shadow import ConnectivityOut
from fleet.identity.certstore import CertRecord
from fleet.identity.cutoff import CutoffReport
from fleet.identity.devices import Device


class DeviceOut(ResponseModel):
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
    connectivity: ConnectivityOut | None = Field(None, description="from the device's status messages, when known "
                                                                   "(device reads only)")

    @classmethod
    def of(cls, d: Device, connectivity: ConnectivityOut | None = None) -> DeviceOut:
        return cls(device_id=d.device_id, status=d.status.value, device_type=d.device_type, metadata=dict(d.metadata),
                   groups=sorted(d.groups), cert_serial=d.cert_serial, cert_fingerprint=d.cert_fingerprint,
                   firmware_version=d.firmware_version, created_at=d.created_at, updated_at=d.updated_at,
                   connectivity=connectivity)


class CertificateOut(ResponseModel):
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


class CutoffOut(ResponseModel):
    """What the broker did: the new CRL confirmed in force, live sessions dropped, how long it took."""

    crl_in_force_ms: float | None
    disconnected: list[str]
    elapsed_ms: float
    error: str | None = None

    @overload
    @classmethod
    def of(cls, r: CutoffReport) -> CutoffOut: ...

    @overload
    @classmethod
    def of(cls, r: None) -> None: ...

    @classmethod
    def of(cls, r: CutoffReport | None) -> CutoffOut | None:
        if r is None:
            return None
        return cls(crl_in_force_ms=r.crl_in_force_ms, disconnected=r.disconnected, elapsed_ms=r.elapsed_ms,
                   error=r.error)
