"""/v1/provisioning/claims: claim certificates for production batches (unscoped admins)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from api.deps import OnboardingDep, SettingsDep, UnscopedAdmin, raise_http
from api.models import CutoffOut, Strict
from fleet.contract.topics import is_valid_device_id
from fleet.identity.devices import RegistryError
from fleet.identity.provisioning import Claim

router = APIRouter(prefix="/v1/provisioning/claims", tags=["provisioning"])


class ClaimCreate(Strict):
    template: str
    claim_id: str | None = Field(None, description="CN of the claim certificate; default: the CSR's CN or generated")
    csr: str | None = Field(None, description="the factory's CSR; omit to have a key made and returned once")


class ClaimOut(BaseModel):
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


class ClaimRevoked(Strict):
    claim: ClaimOut
    cutoff: CutoffOut


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClaimCreated,
             summary="Issue a claim certificate bound to a template")
def create_claim(body: ClaimCreate, principal: UnscopedAdmin, onboarding: OnboardingDep, settings: SettingsDep,
                 request: Request) -> ClaimCreated:
    try:
        claim, cert, key = onboarding.create_claim(body.template, body.claim_id, body.csr, principal.id)
    except RegistryError as exc:
        raise_http(exc)
    request.state.audit_target = claim.claim_id
    request.state.audit_detail = {"template": body.template, "key_generated": key is not None}
    return ClaimCreated(**ClaimOut.of(claim).model_dump(), certificate=cert,
                        private_key=key.decode() if key else None, ca_chain=onboarding.ca_chain,
                        provisioning_endpoint=f"mqtts://{settings.mqtt_host}:{settings.mqtt_provisioning_port}")


@router.get("", response_model=list[ClaimOut], summary="List claims")
def list_claims(principal: UnscopedAdmin, onboarding: OnboardingDep) -> list[ClaimOut]:
    return [ClaimOut.of(c) for c in onboarding.claims.list()]


@router.get("/{claim_id}", response_model=ClaimOut, summary="One claim")
def get_claim(claim_id: str, principal: UnscopedAdmin, onboarding: OnboardingDep) -> ClaimOut:
    claim = onboarding.claims.get(claim_id) if is_valid_device_id(claim_id) else None
    if claim is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"claim {claim_id!r} not found")
    return ClaimOut.of(claim)


@router.post("/{claim_id}/revoke", response_model=ClaimRevoked,
             summary="Revoke a claim certificate; devices already provisioned keep their own certificates")
def revoke_claim(claim_id: str, principal: UnscopedAdmin, onboarding: OnboardingDep, request: Request) -> ClaimRevoked:
    request.state.audit_target = claim_id
    try:
        report = onboarding.revoke_claim(claim_id)
    except RegistryError as exc:
        raise_http(exc)
    return ClaimRevoked(claim=ClaimOut.of(onboarding.claims.get(claim_id)), cutoff=CutoffOut.of(report))
