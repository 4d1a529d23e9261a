"""/v1/keys: API keys (admin). The secret is in the creation response only; stored as a hash."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import Admin, ApiKeys
from api.errors import responses
from api.schemas.keys import KeyCreate, KeyCreated, KeyOut
from fleet.access.apikeys import ApiKey
from fleet.access.auth import Principal, Role
from fleet.identity.devices import check_groups

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=responses(403))


def _check_delegation(principal: Principal, role: Role, groups: frozenset[str] | None) -> None:
    """No key can create a key with more power than itself (role or group scope)."""
    if not principal.role.allows(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"the {principal.role.value} role cannot create {role.value} keys")
    if principal.groups is not None and (groups is None or not groups <= principal.groups):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"this key is scoped to groups [{', '.join(sorted(principal.groups))}]; "
                            "a key it creates must be scoped within them")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, summary="Create an API key",
             responses=responses(400, 413, 422))
def create_key(body: KeyCreate, principal: Admin, keys: ApiKeys, request: Request) -> KeyCreated:
    if body.groups is not None and not body.groups:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "groups must not be empty; omit it for an unscoped key")
    groups = check_groups(body.groups) if body.groups is not None else None
    role = Role(body.role)
    _check_delegation(principal, role, groups)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=body.expires_in_days)
               if body.expires_in_days else None)
    key, secret = keys.create(body.name, role, groups, expires, created_by=principal.id)
    request.state.audit_target = key.id
    request.state.audit_detail = {"role": role.value, "name": body.name}
    return KeyCreated(**KeyOut.of(key).model_dump(), key=secret)


@router.get("", response_model=list[KeyOut], summary="List API keys (never their secrets)")
def list_keys(principal: Admin, keys: ApiKeys) -> list[KeyOut]:
    return [KeyOut.of(k) for k in keys.list()
            if principal.groups is None or (k.groups is not None and k.groups <= principal.groups)]


def _get(keys, principal: Principal, key_id: str) -> ApiKey:
    key = keys.get(key_id) if len(key_id) == 12 else None
    if key is None or (principal.groups is not None and (key.groups is None or not key.groups <= principal.groups)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key {key_id!r} not found")
    return key


@router.get("/{key_id}", response_model=KeyOut, summary="One API key", responses=responses(404))
def get_key(key_id: str, principal: Admin, keys: ApiKeys) -> KeyOut:
    return KeyOut.of(_get(keys, principal, key_id))


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke an API key (and the tokens minted from it)",
               responses=responses(404, 409))
def revoke_key(key_id: str, principal: Admin, keys: ApiKeys, request: Request) -> KeyOut:
    key = _get(keys, principal, key_id)
    request.state.audit_target = key_id
    if key.revoked_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"API key {key_id!r} is already revoked")
    if key.role is Role.admin and key.groups is None and keys.count_active_admins() <= 1:
        raise HTTPException(status.HTTP_409_CONFLICT, "cannot revoke the last active admin key; create another first")
    keys.revoke(key_id)
    return KeyOut.of(_get(keys, principal, key_id))  # re-read: now with its revoked_at
