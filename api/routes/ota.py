"""OTA deployments: create one, follow it, pause / resume / cancel it, and a device's OTA history.

``POST /v1/ota/deployments`` is fleet/ota/deployments.py's rules, then Cassandra (the PENDING row,
the target chunks, the per-device index: fleet/ota/deployment_store.py), then Kafka (the
``ota-requests`` records: api/ota_requests.py). The OTA job (jobs/ota/) does the rest and writes the
deployment's state and summary and each device's execution; the GET routes read them. A
deployment spans groups, so these routes need a key not scoped to groups (403 otherwise); a
device's own history (``GET /v1/devices/{id}/ota``) is a device route like any other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from api.deps import (
    FirmwareCatalog,
    OnboardingDep,
    OtaDeployments,
    OtaRequestsDep,
    UnscopedOperator,
    UnscopedViewer,
    Viewer,
    VisibleDevice,
)
from api.errors import responses
from api.ota_requests import KafkaUnavailable
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.base import ErrorOut
from api.schemas.ota import DeploymentIn, DeploymentOut, DeploymentPage, DeviceOtaPage, ExecutionOut, ExecutionPage
from fleet.ota import deployments as dep
from fleet.ota.deployment_store import Deployment, ExecutionRow
from fleet.ota.errors import DeploymentError

router = APIRouter(tags=["ota"])

PATH = "/v1/ota/deployments"
_PageToken = Annotated[str | None, Query(description=PAGE_TOKEN_DOC), checked(page_token_of(dep.decode_cursor))]
_Limit = Annotated[int, Query(ge=1, le=1000)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _out(d: Deployment) -> DeploymentOut:
    p = dep.progress(state=d.state, summary=d.summary, plan=d.plan, target_count=d.target_count)
    return DeploymentOut.model_validate({
        "deployment_id": d.deployment_id, "name": d.name, "firmware_id": d.firmware_id, "device_type": d.device_type,
        "version": d.version, "created_at": d.created_at, "created_by": d.created_by, "updated_at": d.updated_at,
        "target_count": d.target_count, "rollback_of": d.rollback_of, "plan": d.plan, **p})


def _execution_out(e: ExecutionRow) -> ExecutionOut:
    return ExecutionOut(deployment_id=e.deployment_id, device_id=e.device_id, state=e.state,
                        final=e.state in dep.FINAL_EXECUTION, wave=e.wave, attempt=e.attempt,
                        updated_at=e.updated_at, execution=e.execution)


def _unavailable(exc: KafkaUnavailable, what: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; {what}")


CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 413, 422),
    400: {"model": ErrorOut, "description": "A rule was broken, and the message names the field: name, firmware_id "
                                            "(no such firmware), target (not exactly one of group / filter / "
                                            "device_ids; a listed device missing, not active or of another device "
                                            "type; nothing selected; more than 100,000 devices selected, or more "
                                            "than 10,000 listed), plan (a value out of bounds)"},
    409: {"model": ErrorOut, "description": "A target device is still in another deployment that is not final (its "
                                            "execution there is not final either); the message names it"},
    503: {"model": ErrorOut, "description": "Cassandra or Kafka is unavailable. When Kafka did not take the "
                                            "records, the deployment exists but reads CANCELED (never started): "
                                            "create it again"},
}


@router.post(PATH, status_code=status.HTTP_201_CREATED, response_model=DeploymentOut, responses=CREATE_RESPONSES,
             summary="Roll a firmware image out to a group, a registry filter or a list of devices, in waves")
async def create_deployment(body: DeploymentIn, principal: UnscopedOperator, store: OtaDeployments,
                            catalog: FirmwareCatalog, onboarding: OnboardingDep, requests: OtaRequestsDep,
                            request: Request) -> Any:
    """Targets the active devices of the firmware's device type the target selects, at most
    100,000: a group or filter in an order shuffled per deployment (so each wave is a spread of the
    fleet), a list of device ids in its own order. A device takes one active deployment at a time
    (409). The answer is the deployment as PENDING: the OTA job starts it within moments (RUNNING)
    and releases devices wave by wave at the plan's rate; follow it with GET. The target is fixed
    at creation: a device that joins the group later is not added."""
    name = dep.check_name(body.name)
    plan = dep.validate_plan(body.plan.model_dump(exclude_unset=True) if body.plan is not None else None)
    t = body.target
    target = dep.target(group=t.group, device_ids=t.device_ids,
                        filter=t.filter.model_dump(exclude_unset=True) if t.filter is not None else None)
    deployment_id = dep.new_deployment_id()
    request.state.audit_target = deployment_id
    request.state.audit_detail = {"name": name, "firmware_id": body.firmware_id, "target": target.as_json()}
    firmware = await asyncio.to_thread(catalog.get, body.firmware_id)
    if firmware is None:
        raise DeploymentError("bad_request", f"firmware_id {body.firmware_id[:80]!r}: no such firmware")
    request.state.audit_detail["version"] = firmware.version
    devices = await asyncio.to_thread(dep.resolve, target, onboarding.devices, device_type=firmware.device_type,
                                      visible_groups=None)
    devices = dep.rollout_order(deployment_id, target, devices)
    request.state.audit_detail["target_count"] = len(devices)
    held = await asyncio.to_thread(store.holders, devices)
    if held:
        raise dep.conflict_error(held)
    now = _now_ms()
    d = Deployment(deployment_id, name, firmware.firmware_id, firmware.device_type, firmware.version, "PENDING", now,
                   principal.name, now, plan, len(devices))
    chunks = dep.chunked(devices)
    await asyncio.to_thread(store.create, d, chunks)
    images: list[dict[str, Any]] = []
    if plan["rollback_on_abort"]:
        listed, _ = await asyncio.to_thread(catalog.list, device_type=firmware.device_type,
                                            limit=dep.MAX_ROLLBACK_IMAGES + 1)
        images = dep.rollback_images(firmware, listed)
    records = dep.create_records(deployment_id=deployment_id, name=name, firmware=firmware, plan=plan, chunks=chunks,
                                 created_at=now, created_by=principal.name, rollback_firmware=images)
    try:
        await requests.send(records[:1])  # the create first: the job drops targets of a deployment it lacks
        await requests.send(records[1:])
    except KafkaUnavailable as exc:
        # Holds no device: it reads CANCELED, and the job is told in case some records got through.
        await asyncio.to_thread(store.abandon, d, f"not started: Kafka did not take its records ({exc})", _now_ms())
        try:
            await requests.send([dep.op_record("cancel", deployment_id, by=principal.name, ts=_now_ms(),
                                               request_id=uuid.uuid4().hex)], timeout=2.0)
        except KafkaUnavailable:
            pass
        request.state.audit_detail["error"] = str(exc)
        raise _unavailable(exc, f"deployment {deployment_id} was not started (it reads CANCELED); "
                                "create it again") from None
    url = f"{PATH}/{deployment_id}"
    return JSONResponse(_out(d).model_dump(mode="json", by_alias=True), status_code=status.HTTP_201_CREATED,
                        headers={"Location": url})


@router.get(PATH, response_model=DeploymentPage, responses=responses(400, 403),
            summary="List deployments with their progress")
def list_deployments(principal: UnscopedViewer, store: OtaDeployments,
                     state: Annotated[str | None, Query(description="only deployments in this state (applied to each "
                                                                    "page after it is read)")] = None,
                     limit: _Limit = 100, page_token: _PageToken = None) -> DeploymentPage:
    if state is not None and state not in dep.DEPLOYMENT_STATES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"state must be one of {', '.join(dep.DEPLOYMENT_STATES)}")
    page, after = store.list(limit=limit, after=dep.decode_cursor(page_token))
    return DeploymentPage(items=[_out(d) for d in page if state is None or d.state == state],
                          next_page_token=dep.encode_cursor(after) if after else None)


def _deployment(store: OtaDeployments, deployment_id: str) -> Deployment:
    d = store.get(deployment_id)
    if d is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"deployment {deployment_id[:80]!r} not found")
    return d


@router.get(PATH + "/{deployment_id}", response_model=DeploymentOut, responses=responses(403, 404),
            summary="A deployment: its state, and its devices per execution state, in all and per wave")
def get_deployment(deployment_id: str, principal: UnscopedViewer, store: OtaDeployments) -> DeploymentOut:
    """As the OTA job last wrote it (it writes on every change). Before the job started it: PENDING,
    nothing released, the waves' sizes from the plan."""
    return _out(_deployment(store, deployment_id))


@router.get(PATH + "/{deployment_id}/devices", response_model=ExecutionPage, responses=responses(400, 403, 404),
            summary="A deployment's device executions, optionally in one state")
def list_deployment_devices(deployment_id: str, principal: UnscopedViewer, store: OtaDeployments,
                            state: Annotated[str | None, Query(description="only executions in this state")] = None,
                            limit: _Limit = 100, page_token: _PageToken = None) -> ExecutionPage:
    """Released devices only: a device the rollout has not reached yet has no execution (the
    deployment's ``unreleased`` counts them); released ones start QUEUED."""
    if state is not None and state not in dep.EXECUTION_STATES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"state must be one of {', '.join(dep.EXECUTION_STATES)}")
    _deployment(store, deployment_id)
    rows = store.executions(deployment_id, limit=limit, after=dep.decode_cursor(page_token), state=state)
    return ExecutionPage(deployment_id=deployment_id, items=[_execution_out(e) for e in rows],
                         next_page_token=dep.encode_cursor(rows[-1].device_id) if len(rows) == limit else None)


OP_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 404),
    202: {"model": DeploymentOut, "description": "Handed to the OTA job; the deployment as it was when asked (GET "
                                                 "shows the job's answer within moments)"},
    409: {"model": ErrorOut, "description": "The deployment is final (SUCCEEDED, ABORTED, CANCELED)"},
    503: {"model": ErrorOut, "description": "Cassandra or Kafka is unavailable; nothing was asked"},
}


async def _operate(op: str, deployment_id: str, by: str, store: OtaDeployments, requests: OtaRequestsDep,
                   request: Request) -> JSONResponse:
    d = await asyncio.to_thread(_deployment, store, deployment_id)
    request.state.audit_target = deployment_id
    request.state.audit_detail = {"name": d.name, "state": d.state}
    if d.state in dep.FINAL_DEPLOYMENT:
        raise HTTPException(status.HTTP_409_CONFLICT, f"deployment {deployment_id!r} is {d.state}, which is final: "
                                                      f"there is nothing to {op}")
    try:
        await requests.send([dep.op_record(op, deployment_id, by=by, ts=_now_ms(), request_id=uuid.uuid4().hex)])
    except KafkaUnavailable as exc:
        raise _unavailable(exc, f"the {op} was not asked") from None
    return JSONResponse(_out(d).model_dump(mode="json", by_alias=True), status_code=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"{PATH}/{deployment_id}"})


@router.post(PATH + "/{deployment_id}/pause", status_code=status.HTTP_202_ACCEPTED, response_model=DeploymentOut,
             responses=OP_RESPONSES, summary="Pause a deployment: release no more devices")
async def pause_deployment(deployment_id: str, principal: UnscopedOperator, store: OtaDeployments,
                           requests: OtaRequestsDep, request: Request) -> Any:
    """PAUSED: no device is released until resumed. Devices already released go on to their own
    outcome (their executions keep counting, and can still abort the deployment)."""
    return await _operate("pause", deployment_id, principal.name, store, requests, request)


@router.post(PATH + "/{deployment_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=DeploymentOut,
             responses=OP_RESPONSES, summary="Resume a paused deployment, or approve the next wave")
async def resume_deployment(deployment_id: str, principal: UnscopedOperator, store: OtaDeployments,
                            requests: OtaRequestsDep, request: Request) -> Any:
    """PAUSED -> RUNNING; WAITING_APPROVAL -> RUNNING with the next wave. The job ignores it in any
    other state."""
    return await _operate("resume", deployment_id, principal.name, store, requests, request)


@router.post(PATH + "/{deployment_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=DeploymentOut,
             responses=OP_RESPONSES, summary="Cancel a deployment: release no more devices, stop those that can")
async def cancel_deployment(deployment_id: str, principal: UnscopedOperator, store: OtaDeployments,
                            requests: OtaRequestsDep, request: Request) -> Any:
    """CANCELED (final). Devices not released never get it. A released device that has not started
    installing (QUEUED, NOTIFIED, DOWNLOADING, DOWNLOADED) is told to stop and drop the download
    (CANCELED); one INSTALLING, REBOOTING or VERIFYING runs on to its own outcome, since a
    half-written image is worse than a finished one."""
    return await _operate("cancel", deployment_id, principal.name, store, requests, request)


@router.get("/v1/devices/{device_id}/ota", response_model=DeviceOtaPage, responses=responses(400, 404),
            summary="A device's OTA executions, one per deployment that released it")
def list_device_ota(principal: Viewer, device: VisibleDevice, store: OtaDeployments, limit: _Limit = 100,
                    page_token: _PageToken = None) -> DeviceOtaPage:
    rows = store.device_executions(device.device_id, limit=limit, after=dep.decode_cursor(page_token))
    return DeviceOtaPage(device_id=device.device_id, items=[_execution_out(e) for e in rows],
                         next_page_token=dep.encode_cursor(rows[-1].deployment_id) if len(rows) == limit else None)
