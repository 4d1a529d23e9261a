"""/v1/devices: register (optionally with a CSR), list, get, update, disable/revoke, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status

from api.deps import OnboardingDep, Operator, Shadows, Viewer, VisibleDevice, ensure_groups_allowed
from api.errors import responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.common import CertificateOut, CutoffOut, DeviceOut
from api.schemas.devices import DeviceChanged, DeviceCreate, DeviceCreated, DeviceDeleted, DevicePage, DevicePatch
from api.schemas.shadow import ConnectivityOut
from fleet.identity.devices import (
    DeviceFilter,
    DeviceStatus,
    check_name,
    decode_cursor,
    encode_cursor,
    metadata_filters,
)
from fleet.shadow.query import Connectivity

router = APIRouter(prefix="/v1/devices", tags=["devices"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceCreated,
             summary="Register a device; with a CSR, also issue its certificate",
             responses=responses(400, 403, 409, 413, 422))
def create_device(body: DeviceCreate, principal: Operator, onboarding: OnboardingDep, request: Request) -> DeviceCreated:
    ensure_groups_allowed(principal, body.groups)
    device, cert = onboarding.register(body.device_id, device_type=body.device_type, metadata=body.metadata,
                                       groups=body.groups, csr=body.csr)
    request.state.audit_target = device.device_id
    return DeviceCreated(**DeviceOut.of(device).model_dump(), certificate=CertificateOut.of(cert) if cert else None,
                         ca_chain=onboarding.ca_chain if cert else None)


@router.get("", response_model=DevicePage, summary="List devices, filtered and paginated", responses=responses(400))
def list_devices(
    principal: Viewer, onboarding: OnboardingDep, shadows: Shadows, request: Request,
    status_: Annotated[Literal["active", "disabled", "revoked"] | None, Query(alias="status")] = None,
    group: Annotated[str | None, Query(), checked(lambda v: check_name("group", v))] = None,
    type_: Annotated[str | None, Query(alias="type"), checked(lambda v: check_name("device type", v))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC), checked(page_token_of(decode_cursor))] = None,
    connected: Annotated[bool | None, Query(description="only devices whose status says they are (not) connected; "
                                                        "applied to each page after it is read")] = None,
) -> DevicePage:
    """Filter by ``status``, ``group``, ``type``, any ``metadata.<key>=<value>`` and ``connected``.

    ``connected`` filters each page of ``limit`` devices after it is read (``connected=false``
    includes devices never heard from), so a page may hold fewer items than ``limit``, even none,
    while ``next_page_token`` still leads on: follow it until it is null.
    """
    flt = DeviceFilter(status=DeviceStatus(status_) if status_ else None, group=group, device_type=type_,
                       metadata=metadata_filters(request.query_params), visible_groups=principal.groups)
    items, last = onboarding.devices.list(flt, limit, decode_cursor(page_token))
    known = shadows.connectivity(d.device_id for d in items)
    if connected is not None:
        items = [d for d in items if bool(known.get(d.device_id) and known[d.device_id].connected) == connected]
    return DevicePage(items=[DeviceOut.of(d, _connectivity(known.get(d.device_id))) for d in items],
                      next_page_token=encode_cursor(last) if last else None)


def _connectivity(c: Connectivity | None) -> ConnectivityOut | None:
    return ConnectivityOut.of(c) if c is not None else None


@router.get("/{device_id}", response_model=DeviceOut, summary="One device", responses=responses(404))
def get_device(principal: Viewer, device: VisibleDevice, shadows: Shadows) -> DeviceOut:
    """The registry's record, with the device's connectivity when it has sent a status."""
    return DeviceOut.of(device, _connectivity(shadows.connectivity([device.device_id]).get(device.device_id)))


@router.patch("/{device_id}", response_model=DeviceChanged,
              summary="Update metadata, groups or type; disable, re-enable or revoke",
              responses=responses(400, 403, 404, 409, 413, 422))
def update_device(device_id: str, body: DevicePatch, principal: Operator, device: VisibleDevice,
                  onboarding: OnboardingDep, request: Request) -> DeviceChanged:
    if body.groups is not None:
        ensure_groups_allowed(principal, body.groups)
    request.state.audit_target = device_id
    request.state.audit_detail = {"fields": sorted(body.model_dump(exclude_unset=True))}
    if body.status:
        request.state.audit_detail["status"] = body.status
    device, report = onboarding.update(device_id, device_type=body.device_type, metadata=body.metadata,
                                       groups=body.groups, status=DeviceStatus(body.status) if body.status else None)
    return DeviceChanged(**DeviceOut.of(device).model_dump(), cutoff=CutoffOut.of(report))


@router.delete("/{device_id}", response_model=DeviceDeleted,
               summary="Delete a device: its certificates are revoked and its connection dropped",
               responses=responses(403, 404))
def delete_device(device_id: str, principal: Operator, device: VisibleDevice, onboarding: OnboardingDep,
                  request: Request) -> DeviceDeleted:
    request.state.audit_target = device_id
    serials, report = onboarding.delete(device_id)
    return DeviceDeleted(device_id=device_id, revoked_serials=serials, cutoff=CutoffOut.of(report))
