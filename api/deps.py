"""Typed dependencies for every route: settings, the Cassandra session, the caller and its role.

    @router.get("/v1/things")
    def list_things(principal: Viewer, session: CassandraSession, settings: SettingsDep): ...

Credentials: ``Authorization: Bearer <api key or token>`` or ``X-API-Key: <api key>``. Roles
nest (admin > operator > viewer). A key scoped to device groups sees only devices in one of
them: use ``ensure_device_visible`` on every device-level route.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from fleet.access.apikeys import ApiKeyStore, AuthFailure
from fleet.access.audit import AuditLog
from fleet.access.auth import Principal, Role, parse_secret
from fleet.config import Settings
from fleet.identity.devices import RegistryError
from fleet.identity.onboarding import Onboarding
from fleet.infra.cassandra import CassandraSessions, StoreUnavailable

__all__ = [
    "SettingsDep", "CassandraSession", "Principal", "Role", "CurrentPrincipal", "Viewer", "Operator", "Admin",
    "UnscopedAdmin", "ensure_device_visible", "ensure_groups_allowed", "require_role", "app_store",
    "OnboardingDep", "ApiKeys", "Audit", "raise_http",
]

T = TypeVar("T")

# auto_error=False: we answer missing credentials ourselves with one clear 401.
_bearer = HTTPBearer(auto_error=False, description="an API key (fk_...) or a token (ft_...)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (fk_...)")

MISSING_CREDENTIAL = "missing credential: send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleet"'}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_cassandra(request: Request):
    sessions: CassandraSessions = request.app.state.cassandra
    try:
        return sessions.get()
    except StoreUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the registry store is unavailable: {exc}") from exc


# A cassandra.cluster.Session on settings.cassandra_keyspace, shared by the whole app.
CassandraSession = Annotated[object, Depends(get_cassandra)]

_store_lock = threading.Lock()


def cached(request: Request, key: type, make: Callable[[], T]) -> T:
    """The app's one ``key`` object, made on first use. ``key`` is the class: a key made per
    request (a lambda) would build, and keep, a new object on every request."""
    stores: dict = request.app.state.stores
    if key not in stores:
        with _store_lock:
            if key not in stores:
                stores[key] = make()
    return stores[key]


def app_store(request: Request, factory: Callable[[object], T], session=None) -> T:
    """One repository object per app and class (they prepare statements once)."""
    return cached(request, factory,
                   lambda: factory(session if session is not None else get_cassandra(request)))


def get_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    credential = bearer.credentials if bearer else api_key
    if not credential:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING_CREDENTIAL, headers=_CHALLENGE)
    invalid = {"WWW-Authenticate": 'Bearer realm="fleet", error="invalid_token"'}
    if parse_secret(credential) is None:  # not even shaped like ours: no store round trip
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid credential", headers=invalid)
    try:
        principal = app_store(request, ApiKeyStore).authenticate(credential)
    except AuthFailure as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers=invalid) from None
    request.state.principal = principal  # for the audit log
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Principal], Principal]:
    def guard(principal: CurrentPrincipal) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the {role.value} role; the credential has {principal.role.value}")
        return principal

    guard.__name__ = f"require_{role.value}"
    return guard


Viewer = Annotated[Principal, Depends(require_role(Role.viewer))]
Operator = Annotated[Principal, Depends(require_role(Role.operator))]
Admin = Annotated[Principal, Depends(require_role(Role.admin))]


def require_unscoped_admin(principal: Admin) -> Principal:
    # Platform-wide resources (templates, claims, the audit log) are not divisible by group.
    if principal.groups is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin key that is not scoped to groups")
    return principal


UnscopedAdmin = Annotated[Principal, Depends(require_unscoped_admin)]


def get_api_keys(request: Request) -> ApiKeyStore:
    return app_store(request, ApiKeyStore)


def get_audit(request: Request) -> AuditLog:
    return app_store(request, AuditLog)


def get_onboarding(request: Request) -> Onboarding:
    return cached(request, Onboarding, lambda: Onboarding(request.app.state.settings, get_cassandra(request),
                                                           pki=request.app.state.pki))


ApiKeys = Annotated[ApiKeyStore, Depends(get_api_keys)]
Audit = Annotated[AuditLog, Depends(get_audit)]
OnboardingDep = Annotated[Onboarding, Depends(get_onboarding)]

_HTTP_STATUS = {"bad_request": status.HTTP_400_BAD_REQUEST, "not_found": status.HTTP_404_NOT_FOUND,
                "conflict": status.HTTP_409_CONFLICT, "forbidden": status.HTTP_403_FORBIDDEN}


def raise_http(exc: RegistryError):
    """Registry rule violations as 4xx with the rule's message as ``detail``."""
    raise HTTPException(_HTTP_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST), str(exc)) from None


def ensure_device_visible(principal: Principal, device_groups: Iterable[str] | None,
                          device_id: str | None = None) -> None:
    """404 (same as a missing device, so a scoped key cannot probe ids) outside the key's groups."""
    if not principal.sees_groups(device_groups):
        what = f"device {device_id!r}" if device_id else "device"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def ensure_groups_allowed(principal: Principal, groups: Iterable[str] | None) -> None:
    """403 when a scoped key would create or move a device outside its groups."""
    if principal.groups is None:
        return
    groups = set(groups or ())
    scope = ", ".join(sorted(principal.groups))
    if not groups:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"this key is scoped to groups [{scope}]; the device must be in one of them")
    outside = sorted(groups - principal.groups)
    if outside:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"this key is scoped to groups [{scope}]; it cannot use groups [{', '.join(outside)}]")
