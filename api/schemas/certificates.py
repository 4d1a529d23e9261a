"""/v1/devices/{device_id}/certificates bodies."""

from __future__ import annotations

from pydantic import Field

from api.schemas.base import RequestModel, ResponseModel
from api.schemas.common import CertificateOut, CutoffOut, DeviceOut

# -- requests ------------------------------------------------------------------------------


class RotateRequest(RequestModel):
    csr: str = Field(description="PEM CSR for the device's new key (CN = device id)")
    grace_s: int | None = Field(None, ge=0, le=30 * 86400,
                                description="how long the previous certificate keeps working "
                                            "(default: the platform's cert_rotation_grace_s)")


# -- responses -----------------------------------------------------------------------------


class Rotated(ResponseModel):
    device: DeviceOut
    certificate: CertificateOut
    ca_chain: str
    superseded: list[CertificateOut]


class CertificateRevoked(ResponseModel):
    certificate: CertificateOut
    cutoff: CutoffOut
