"""/v1/provisioning/claims bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from api.schemas.base import RequestModel, ResponseModel
from api.schemas.common import CutoffOut
from fleet.identity.provisioning import Claim

# -- requests ------------------------------------------------------------------------------


class ClaimCreate(RequestModel):
    template: str
    claim_id: str | None = Field(None, description="CN of the claim certificate; default: the CSR's CN or generated")
    csr: str | None = Field(None, description="the factory's CSR; omit to have a key made and returned once")


# -- responses -----------------------------------------------------------------------------


class ClaimOut(ResponseModel):
    claim_id: str
    template: str
    status: str
    cert_serial: str
    cert_fingerprint: str
    not_after: dt.datetime
    created_at: dt.datetime
    created_by: str | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, c: Claim) -> ClaimOut:
        return cls(**c.__dict__)


class ClaimCreated(ClaimOut):
    certificate: str
    private_key: str | None = Field(None, description="only when no CSR was given; shown only now")
    ca_chain: str = Field(description="the CA chain for verifying the broker")
    provisioning_endpoint: str


class ClaimRevoked(ResponseModel):
    claim: ClaimOut
    cutoff: CutoffOut
