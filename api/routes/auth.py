"""/v1/tokens and /v1/whoami: short-lived bearer tokens minted from an API key, and the caller."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import ApiKeys, SettingsDep, Viewer
from api.errors import responses
from api.schemas.auth import Me, Token, TokenRequest
from fleet.access.apikeys import AuthFailure
from fleet.access.auth import Role

router = APIRouter(prefix="/v1", tags=["auth"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=Token, summary="Mint a bearer token",
             responses=responses(400, 403, 413, 422))
def create_token(body: TokenRequest, principal: Viewer, keys: ApiKeys, settings: SettingsDep, request: Request) -> Token:
    ttl = body.ttl_s or settings.api_token_ttl_s
    if ttl > settings.api_token_max_ttl_s:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"ttl_s may be at most {settings.api_token_max_ttl_s}")
    role = Role(body.role) if body.role else principal.role
    try:
        token, expires = keys.mint_token(principal, ttl, role)
    except AuthFailure as exc:  # here a refusal (a role above the caller's), not a bad credential: 403
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    request.state.audit_detail = {"role": role.value, "ttl_s": ttl}
    return Token(token=token, role=role.value, expires_at=expires)


@router.get("/whoami", response_model=Me, summary="The caller's identity and role")
def whoami(principal: Viewer) -> Me:
    return Me(id=principal.id, name=principal.name, role=principal.role.value,
              groups=sorted(principal.groups) if principal.groups is not None else None, via=principal.via)
