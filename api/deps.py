"""Typed dependencies for every route: settings, the stores, the caller, its role, the device it may see.

    @router.get("/v1/devices/{device_id}/things")
    def list_things(principal: Viewer, device: VisibleDevice, onboarding: OnboardingDep): ...

Credentials: ``Authorization: Bearer <api key or token>`` or ``X-API-Key: <api key>``. Roles
nest (admin > operator > viewer). A key scoped to device groups sees only devices in one of
them: device-level routes take the device as ``VisibleDevice``, declared after the role (so a
caller without the role gets its 403 before the device is looked up).

Tests substitute any of these with ``app.dependency_overrides[get_...]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.command_batches import BatchRunner
from api.command_requests import CommandRequests
from api.ota_requests import OtaRequests
from api.shadow_requests import ShadowRequests
from api.stores import Stores
from fleet.access.apikeys import ApiKeyStore, AuthFailure
from fleet.access.audit import AuditLog
from fleet.access.auth import Principal, Role, parse_secret
from fleet.commands.batch_store import BatchStore
from fleet.commands.query import CommandReader
from fleet.config import Settings
from fleet.identity.ca import CertificateAuthority
from fleet.identity.devices import Device, RegistryError, check_device_id
from fleet.identity.onboarding import Onboarding
from fleet.ota.catalog import Catalog
from fleet.ota.deployment_store import DeploymentStore
from fleet.ota.firmware import FirmwareStore
from fleet.shadow.query import ShadowReader
from fleet.telemetry.store import TelemetryStore

__all__ = [
    "SettingsDep", "StoresDep", "Principal", "Role", "CurrentPrincipal", "Viewer", "Operator", "Admin",
    "UnscopedAdmin", "VisibleDevice", "ensure_device_visible", "ensure_groups_allowed", "require_role",
    "OnboardingDep", "ApiKeys", "Audit", "Telemetry", "Pki", "Shadows", "ShadowRequestsDep",
    "Commands", "CommandRequestsDep", "Batches", "BatchRunnerDep", "Firmware", "FirmwareCatalog", "OtaDeployments",
    "OtaRequestsDep", "UnscopedViewer", "UnscopedOperator",
]

# auto_error=False: we answer missing credentials ourselves with one clear 401.
_bearer = HTTPBearer(auto_error=False, description="an API key (fk_...) or a token (ft_...)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (fk_...)")

MISSING_CREDENTIAL = "missing credential: send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleet"'}
_INVALID = {"WWW-Authenticate": 'Bearer realm="fleet", error="invalid_token"'}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_stores(request: Request) -> Stores:
    """The stores the app's lifespan made (api/main.py)."""
    return request.app.state.stores


StoresDep = Annotated[Stores, Depends(get_stores)]


def get_api_keys(stores: StoresDep) -> ApiKeyStore:
    return stores.api_keys


def get_audit(stores: StoresDep) -> AuditLog:
    return stores.audit


def get_onboarding(stores: StoresDep) -> Onboarding:
    return stores.onboarding


def get_telemetry(stores: StoresDep) -> TelemetryStore:
    return stores.telemetry


def get_pki(stores: StoresDep) -> CertificateAuthority:
    return stores.pki


def get_shadows(stores: StoresDep) -> ShadowReader:
    return stores.shadows


def get_shadow_requests(request: Request) -> ShadowRequests:
    """The Kafka side of shadow changes the app's lifespan made (api/shadow_requests.py)."""
    return request.app.state.shadow_requests


def get_commands(stores: StoresDep) -> CommandReader:
    return stores.commands


def get_command_requests(request: Request) -> CommandRequests:
    """The Kafka side of commands the app's lifespan made (api/command_requests.py)."""
    return request.app.state.command_requests


def get_batches(stores: StoresDep) -> BatchStore:
    return stores.batches


def get_batch_runner(request: Request) -> BatchRunner:
    """The bulk commands' fan-out tasks of this process (api/command_batches.py)."""
    return request.app.state.batch_runner


def get_firmware(stores: StoresDep) -> FirmwareStore:
    return stores.firmware


def get_firmware_catalog(stores: StoresDep) -> Catalog:
    return stores.firmware_catalog


def get_ota_deployments(stores: StoresDep) -> DeploymentStore:
    return stores.ota_deployments


def get_ota_requests(request: Request) -> OtaRequests:
    """The Kafka side of OTA deployments the app's lifespan made (api/ota_requests.py)."""
    return request.app.state.ota_requests


ApiKeys = Annotated[ApiKeyStore, Depends(get_api_keys)]
Audit = Annotated[AuditLog, Depends(get_audit)]
OnboardingDep = Annotated[Onboarding, Depends(get_onboarding)]
Telemetry = Annotated[TelemetryStore, Depends(get_telemetry)]
Pki = Annotated[CertificateAuthority, Depends(get_pki)]
Shadows = Annotated[ShadowReader, Depends(get_shadows)]
ShadowRequestsDep = Annotated[ShadowRequests, Depends(get_shadow_requests)]
Commands = Annotated[CommandReader, Depends(get_commands)]
CommandRequestsDep = Annotated[CommandRequests, Depends(get_command_requests)]
Batches = Annotated[BatchStore, Depends(get_batches)]
BatchRunnerDep = Annotated[BatchRunner, Depends(get_batch_runner)]
Firmware = Annotated[FirmwareStore, Depends(get_firmware)]
FirmwareCatalog = Annotated[Catalog, Depends(get_firmware_catalog)]
OtaDeployments = Annotated[DeploymentStore, Depends(get_ota_deployments)]
OtaRequestsDep = Annotated[OtaRequests, Depends(get_ota_requests)]


def get_credential(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> str:
    """The credential, if it is shaped like ours (401 otherwise, without touching the store)."""
    credential = bearer.credentials if bearer else api_key
    if not credential:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING_CREDENTIAL, headers=_CHALLENGE)
    if parse_secret(credential) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid credential", headers=_INVALID)
    return credential


def get_principal(
    request: Request,
    credential: Annotated[str, Depends(get_credential)],  # first: a 401 before the store is needed
    keys: ApiKeys,
) -> Principal:
    try:
        principal = keys.authenticate(credential)
    except AuthFailure as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers=_INVALID) from None
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


def require_unscoped(role: Role) -> Callable[[Principal], Principal]:
    """The role, from a key not scoped to groups: for what spans groups (OTA deployments)."""
    has_role = require_role(role)

    def guard(principal: CurrentPrincipal) -> Principal:
        has_role(principal)
        if principal.groups is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "deployments span device groups: this needs a key that is not scoped to groups")
        return principal

    guard.__name__ = f"require_unscoped_{role.value}"
    return guard


UnscopedViewer = Annotated[Principal, Depends(require_unscoped(Role.viewer))]
UnscopedOperator = Annotated[Principal, Depends(require_unscoped(Role.operator))]


def ensure_device_visible(principal: Principal, device_groups: Iterable[str] | None,
                          device_id: str | None = None) -> None:
    """404 (same as a missing device, so a scoped key cannot probe ids) outside the key's groups."""
    if not principal.sees_groups(device_groups):
        what = f"device {device_id!r}" if device_id else "device"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def get_visible_device(device_id: str, principal: CurrentPrincipal, onboarding: OnboardingDep) -> Device:
    """The path's device, if the caller may see it; 404 otherwise (missing, ill-formed or outside its groups)."""
    try:
        device = onboarding.devices.require(check_device_id(device_id))
    except RegistryError as exc:
        if exc.code == "bad_request":  # an id that cannot exist is simply not found
            raise RegistryError("not_found", f"device {device_id!r} not found") from None
        raise
    ensure_device_visible(principal, device.groups, device_id)
    return device


VisibleDevice = Annotated[Device, Depends(get_visible_device)]


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
