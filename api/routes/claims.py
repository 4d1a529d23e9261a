"""/v1/provisioning/claims: claim certificates for production batches (unscoped admins)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import OnboardingDep, SettingsDep, UnscopedAdmin
from api.errors import responses
from api.schemas.claims import ClaimCreate, ClaimCreated, ClaimOut, ClaimRevoked
from api.schemas.common import CutoffOut
from fleet.contract.topics import is_valid_device_id

router = APIRouter(prefix="/v1/provisioning/claims", tags=["provisioning"], responses=responses(403))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClaimCreated,
             summary="Issue a claim certificate bound to a template", responses=responses(400, 404, 409, 413, 422))
def create_claim(body: ClaimCreate, principal: UnscopedAdmin, onboarding: OnboardingDep, settings: SettingsDep,
                 request: Request) -> ClaimCreated:
    claim, cert, key = onboarding.create_claim(body.template, body.claim_id, body.csr, principal.id)
    request.state.audit_target = claim.claim_id
    request.state.audit_detail = {"template": body.template, "key_generated": key is not None}
    return ClaimCreated(**ClaimOut.of(claim).model_dump(), certificate=cert,
                        private_key=key.decode() if key else None, ca_chain=onboarding.ca_chain,
                        provisioning_endpoint=f"mqtts://{settings.mqtt_host}:{settings.mqtt_provisioning_port}")


@router.get("", response_model=list[ClaimOut], summary="List claims")
def list_claims(principal: UnscopedAdmin, onboarding: OnboardingDep) -> list[ClaimOut]:
    return [ClaimOut.of(c) for c in onboarding.claims.list()]


@router.get("/{claim_id}", response_model=ClaimOut, summary="One claim", responses=responses(404))
def get_claim(claim_id: str, principal: UnscopedAdmin, onboarding: OnboardingDep) -> ClaimOut:
    claim = onboarding.claims.get(claim_id) if is_valid_device_id(claim_id) else None
    if claim is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"claim {claim_id!r} not found")
    return ClaimOut.of(claim)


@router.post("/{claim_id}/revoke", response_model=ClaimRevoked,
             summary="Revoke a claim certificate; devices already provisioned keep their own certificates",
             responses=responses(404, 409))
def revoke_claim(claim_id: str, principal: UnscopedAdmin, onboarding: OnboardingDep, request: Request) -> ClaimRevoked:
    request.state.audit_target = claim_id
    report = onboarding.revoke_claim(claim_id)
    claim = onboarding.claims.get(claim_id)  # re-read: now revoked
    if claim is None:  # claims are never deleted; only a store emptied meanwhile gets here
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"claim {claim_id!r} not found")
    return ClaimRevoked(claim=ClaimOut.of(claim), cutoff=CutoffOut.of(report))
