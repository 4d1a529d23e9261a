"""/v1/devices/{device_id}/certificates: history, rotation from a new CSR, revocation of one."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from api.deps import OnboardingDep, Operator, Viewer, VisibleDevice
from api.errors import responses
from api.schemas.certificates import CertificateRevoked, Rotated, RotateRequest
from api.schemas.common import CertificateOut, CutoffOut, DeviceOut

router = APIRouter(prefix="/v1/devices/{device_id}/certificates", tags=["certificates"])


@router.get("", response_model=list[CertificateOut], summary="Every certificate the device was issued, newest first",
            responses=responses(404))
def list_certificates(device_id: str, principal: Viewer, device: VisibleDevice,
                      onboarding: OnboardingDep) -> list[CertificateOut]:
    return [CertificateOut.of(c) for c in onboarding.certificates(device_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Rotated,
             summary="Rotate: issue a new certificate; the previous ones are revoked after the grace period",
             responses=responses(400, 403, 404, 409, 413, 422))
def rotate_certificate(device_id: str, body: RotateRequest, principal: Operator, device: VisibleDevice,
                       onboarding: OnboardingDep, request: Request) -> Rotated:
    request.state.audit_target = device_id
    device, record = onboarding.rotate(device_id, body.csr, body.grace_s)
    request.state.audit_detail = {"serial": record.serial}
    superseded = [CertificateOut.of(c) for c in onboarding.certificates(device_id)
                  if c.serial != record.serial and c.status.value == "superseded"]
    return Rotated(device=DeviceOut.of(device), certificate=CertificateOut.of(record), ca_chain=onboarding.ca_chain,
                   superseded=superseded)


@router.post("/{serial}/revoke", response_model=CertificateRevoked,
             summary="Revoke one certificate now and drop the device's connection",
             responses=responses(403, 404, 409))
def revoke_certificate(device_id: str, serial: str, principal: Operator, device: VisibleDevice,
                       onboarding: OnboardingDep, request: Request) -> CertificateRevoked:
    request.state.audit_target = f"{device_id}/{serial}"
    record, report = onboarding.revoke_certificate(device_id, serial)
    return CertificateRevoked(certificate=CertificateOut.of(record), cutoff=CutoffOut.of(report))
