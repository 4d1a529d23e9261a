"""/v1/devices: register (optionally with a CSR), list, get, update, disable/revoke, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import Field

from api.deps import OnboardingDep, Operator, Viewer, ensure_device_visible, ensure_groups_allowed, raise_http
from api.models import CertificateOut, CutoffOut, DeviceOut, Strict
from fleet.identity.devices import (
    DeviceFilter,
    DeviceStatus,
    RegistryError,
    check_device_id,
    check_name,
    decode_cursor,
    encode_cursor,
    metadata_filters,
)

router = APIRouter(prefix="/v1/devices", tags=["devices"])


class DeviceCreate(Strict):
    device_id: str | None = Field(None, description="omit to use the CSR's CN, or to have one generated")
    device_type: str | None = None
    metadata: dict[str, str] = {}
    groups: list[str] = []
    csr: str | None = Field(None, description="PEM CSR made on the device (CN = device id); "
                                              "EC P-256/P-384 or RSA >= 2048")


class DeviceCreated(DeviceOut):
    certificate: CertificateOut | None = None
    ca_chain: str | None = Field(None, description="the CA chain the device trusts for the broker")


class DevicePatch(Strict):
    device_type: str | None = None
    metadata: dict[str, str] | None = Field(None, description="replaces the whole map")
    groups: list[str] | None = Field(None, description="replaces the whole set")
    status: Literal["active", "disabled", "revoked"] | None = Field(
        None, description="disabled: certificates on hold and the connection dropped (reversible); "
                          "revoked: certificates revoked for good")


class DeviceChanged(DeviceOut):
    cutoff: CutoffOut | None = None


class DevicePage(Strict):
    items: list[DeviceOut]
    next_cursor: str | None = None


class DeviceDeleted(Strict):
    device_id: str
    revoked_serials: list[str]
    cutoff: CutoffOut


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceCreated,
             summary="Register a device; with a CSR, also issue its certificate")
def create_device(body: DeviceCreate, principal: Operator, onboarding: OnboardingDep, request: Request) -> DeviceCreated:
    ensure_groups_allowed(principal, body.groups)
    try:
        device, cert = onboarding.register(body.device_id, device_type=body.device_type, metadata=body.metadata,
                                           groups=body.groups, csr=body.csr)
    except RegistryError as exc:
        raise_http(exc)
    request.state.audit_target = device.device_id
    return DeviceCreated(**DeviceOut.of(device).model_dump(), certificate=CertificateOut.of(cert) if cert else None,
                         ca_chain=onboarding.ca_chain if cert else None)


@router.get("", response_model=DevicePage, summary="List devices, filtered and paginated")
def list_devices(
    principal: Viewer, onboarding: OnboardingDep, request: Request,
    status_: Annotated[Literal["active", "disabled", "revoked"] | None, Query(alias="status")] = None,
    group: str | None = None,
    type_: Annotated[str | None, Query(alias="type")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> DevicePage:
    """Filter by ``status``, ``group``, ``type`` and any ``metadata.<key>=<value>``."""
    try:
        flt = DeviceFilter(status=DeviceStatus(status_) if status_ else None,
                           group=check_name("group", group) if group is not None else None,
                           device_type=check_name("device type", type_) if type_ is not None else None,
                           metadata=metadata_filters(request.query_params),
                           visible_groups=principal.groups)
        items, last = onboarding.devices.list(flt, limit, decode_cursor(cursor))
    except RegistryError as exc:
        raise_http(exc)
    return DevicePage(items=[DeviceOut.of(d) for d in items], next_cursor=encode_cursor(last) if last else None)


def _visible(onboarding, principal, device_id: str):
    try:
        device = onboarding.devices.require(check_device_id(device_id))
    except RegistryError as exc:
        if exc.code == "bad_request":  # an id that cannot exist is simply not found
            raise_http(RegistryError("not_found", f"device {device_id!r} not found"))
        raise_http(exc)
    ensure_device_visible(principal, device.groups, device_id)
    return device


@router.get("/{device_id}", response_model=DeviceOut, summary="One device")
def get_device(device_id: str, principal: Viewer, onboarding: OnboardingDep) -> DeviceOut:
    return DeviceOut.of(_visible(onboarding, principal, device_id))


@router.patch("/{device_id}", response_model=DeviceChanged,
              summary="Update metadata, groups or type; disable, re-enable or revoke")
def update_device(device_id: str, body: DevicePatch, principal: Operator, onboarding: OnboardingDep,
                  request: Request) -> DeviceChanged:
    _visible(onboarding, principal, device_id)
    if body.groups is not None:
        ensure_groups_allowed(principal, body.groups)
    request.state.audit_target = device_id
    request.state.audit_detail = {"fields": sorted(body.model_dump(exclude_unset=True))}
    if body.status:
        request.state.audit_detail["status"] = body.status
    try:
        device, report = onboarding.update(device_id, device_type=body.device_type, metadata=body.metadata,
                                           groups=body.groups,
                                           status=DeviceStatus(body.status) if body.status else None)
    except RegistryError as exc:
        raise_http(exc)
    return DeviceChanged(**DeviceOut.of(device).model_dump(), cutoff=CutoffOut.of(report))


@router.delete("/{device_id}", response_model=DeviceDeleted,
               summary="Delete a device: its certificates are revoked and its connection dropped")
def delete_device(device_id: str, principal: Operator, onboarding: OnboardingDep, request: Request) -> DeviceDeleted:
    _visible(onboarding, principal, device_id)
    request.state.audit_target = device_id
    try:
        serials, report = onboarding.delete(device_id)
    except RegistryError as exc:
        raise_http(exc)
    return DeviceDeleted(device_id=device_id, revoked_serials=serials, cutoff=CutoffOut.of(report))
