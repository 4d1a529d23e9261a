"""/v1/devices bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, RequestModel, ResponseModel
from api.schemas.common import CertificateOut, CutoffOut, DeviceOut

# -- requests ------------------------------------------------------------------------------


class DeviceCreate(RequestModel):
    device_id: str | None = Field(None, description="omit to use the CSR's CN, or to have one generated")
    device_type: str | None = None
    metadata: dict[str, str] = {}
    groups: list[str] = []
    csr: str | None = Field(None, description="PEM CSR made on the device (CN = device id); "
                                              "EC P-256/P-384 or RSA >= 2048")


class DevicePatch(RequestModel):
    device_type: str | None = None
    metadata: dict[str, str] | None = Field(None, description="replaces the whole map")
    groups: list[str] | None = Field(None, description="replaces the whole set")
    status: Literal["active", "disabled", "revoked"] | None = Field(
        None, description="disabled: certificates on hold and the connection dropped (reversible); "
                          "revoked: certificates revoked for good")


# -- responses -----------------------------------------------------------------------------


class DeviceCreated(DeviceOut):
    certificate: CertificateOut | None = None
    ca_chain: str | None = Field(None, description="the CA chain the device trusts for the broker")


class DeviceChanged(DeviceOut):
    cutoff: CutoffOut | None = None


class DevicePage(ResponseModel):
    items: list[DeviceOut]
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)


class DeviceDeleted(ResponseModel):
    device_id: str
    revoked_serials: list[str]
    cutoff: CutoffOut
