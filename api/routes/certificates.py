"""/v1/devices/{device_id}/certificates: history, rotation from a new CSR, revocation of one."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import Field

from api.deps import OnboardingDep, Operator, Viewer, raise_http
from api.models import CertificateOut, CutoffOut, DeviceOut, Strict
from api.routes.devices import _visible
from fleet.identity.devices import RegistryError

router = APIRouter(prefix="/v1/devices/{device_id}/certificates", tags=["certificates"])


class RotateRequest(Strict):
    csr: str = Field(description="PEM CSR for the device's new key (CN = device id)")
    grace_s: int | None = Field(None, ge=0, le=30 * 86400,
                                description="how long the previous certificate keeps working "
                                            "(default: the platform's cert_rotation_grace_s)")


class Rotated(Strict):
    device: DeviceOut
    certificate: CertificateOut
    ca_chain: str
    superseded: list[CertificateOut]


class CertificateRevoked(Strict):
    certificate: CertificateOut
    cutoff: CutoffOut


@router.get("", response_model=list[CertificateOut], summary="Every certificate the device was issued, newest first")
def list_certificates(device_id: str, principal: Viewer, onboarding: OnboardingDep) -> list[CertificateOut]:
    _visible(onboarding, principal, device_id)
    return [CertificateOut.of(c) for c in onboarding.certificates(device_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Rotated,
             summary="Rotate: issue a new certificate; the previous ones are revoked after the grace period")
def rotate_certificate(device_id: str, body: RotateRequest, principal: Operator, onboarding: OnboardingDep,
                       request: Request) -> Rotated:
    _visible(onboarding, principal, device_id)
    request.state.audit_target = device_id
    try:
        device, record = onboarding.rotate(device_id, body.csr, body.grace_s)
    except RegistryError as exc:
        raise_http(exc)
    request.state.audit_detail = {"serial": record.serial}
    superseded = [CertificateOut.of(c) for c in onboarding.certificates(device_id)
                  if c.serial != record.serial and c.status.value == "superseded"]
    return Rotated(device=DeviceOut.of(device), certificate=CertificateOut.of(record), ca_chain=onboarding.ca_chain,
                   superseded=superseded)


@router.post("/{serial}/revoke", response_model=CertificateRevoked,
             summary="Revoke one certificate now and drop the device's connection")
def revoke_certificate(device_id: str, serial: str, principal: Operator, onboarding: OnboardingDep,
                       request: Request) -> CertificateRevoked:
    _visible(onboarding, principal, device_id)
    request.state.audit_target = f"{device_id}/{serial}"
    try:
        record, report = onboarding.revoke_certificate(device_id, serial)
    except RegistryError as exc:
        raise_http(exc)
    return CertificateRevoked(certificate=CertificateOut.of(record), cutoff=CutoffOut.of(report))
