"""Bulk commands: one command to every device of a list or a registry filter, and its progress.

``POST /v1/command-batches`` checks the command with the domain's rules and the target
(fleet.commands.batches), writes the batch and answers 202; the fan-out (api/command_batches.py)
runs on in this process. ``GET /v1/command-batches/{id}`` counts the members' states the commands
job wrote; ``.../commands`` lists them. ``POST .../cancel`` stops the fan-out and cancels every
member not final (api/command_batches.py). A scoped API key targets only its groups' devices and
sees (and cancels) only batches made by keys whose groups it covers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from api.command_batches import cancel_members, fan_out
from api.command_requests import KafkaUnavailable
from api.deps import Batches, BatchRunnerDep, CommandRequestsDep, OnboardingDep, Operator, Viewer
from api.errors import responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.commands import (
    BatchMemberOut,
    BatchMemberPage,
    CommandBatchAccepted,
    CommandBatchIn,
    CommandBatchOut,
    CommandRejected,
)
from fleet.access.auth import Principal
from fleet.commands import batches
from fleet.commands.batch_store import Batch
from fleet.commands.domain import CommandRequest, validate
from fleet.identity.devices import RegistryError, check_device_id, check_name, decode_cursor, encode_cursor

router = APIRouter(tags=["commands"])

_PLACEHOLDER_DEVICE = "batch-member"  # validate() checks one device's command; the ids are checked apart


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _rejected(code: str, message: str, http_status: int) -> JSONResponse:
    return JSONResponse(CommandRejected(detail=message, code=code).model_dump(), status_code=http_status)


def _target(body: CommandBatchIn) -> batches.Target:
    t = body.target
    try:
        for device_id in t.device_ids or ():
            check_device_id(device_id)
        for kind, value in (("group", t.group), ("device type", t.type)):
            if value is not None:
                check_name(kind, value)
        for key in t.metadata or {}:
            check_name("metadata key", key)
    except RegistryError as exc:
        raise batches.TargetError(str(exc)) from None
    return batches.target(device_ids=t.device_ids, group=t.group, device_type=t.type, status=t.status,
                          metadata=t.metadata)


POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 422),
    202: {"model": CommandBatchAccepted, "description": "Accepted; poll status_url (GET /v1/command-batches/{id})"},
    400: {"model": CommandRejected, "description": "invalid_command (name, params, timeout, TTL) or invalid_target "
                                                   "(no device_ids and no filter, both, or too many ids)"},
    413: {"model": CommandRejected, "description": "params_too_large: params over 8 KiB"},
    503: {"description": "Cassandra is unavailable; nothing was submitted"},
}


@router.post("/v1/command-batches", status_code=status.HTTP_202_ACCEPTED, response_model=CommandBatchAccepted,
             responses=POST_RESPONSES, summary="Send one command to many devices (a list or a registry filter)")
async def create_batch(body: CommandBatchIn, principal: Operator, store: Batches, onboarding: OnboardingDep,
                       requests: CommandRequestsDep, runner: BatchRunnerDep, request: Request) -> Any:
    """Every selected device gets its own command (its own lifecycle, visible in
    ``GET /v1/commands/{id}`` and the device's list, with this ``batch_id``). A filter selects at
    most 100,000 devices; more fails the batch before anything is sent. The TTL counts from the
    batch's creation."""
    created_at = _now_ms()
    batch_id = uuid.uuid4().hex
    req = CommandRequest("batch", _PLACEHOLDER_DEVICE, body.name, body.params, _ms(body.timeout_s), _ms(body.ttl_s),
                         principal.name, created_at, batch_id)
    refused = validate(req)
    if refused is not None:
        return _rejected(refused.code, refused.message, refused.http_status)
    try:
        target = _target(body)
    except batches.TargetError as exc:
        return _rejected("invalid_target", str(exc), status.HTTP_400_BAD_REQUEST)
    batch = Batch(batch_id, body.name, body.params, req.timeout_ms, req.ttl_ms, target.as_json(), principal.groups,
                  principal.name, created_at, heartbeat_at=created_at)
    await asyncio.to_thread(store.create, batch)
    request.state.audit_target = batch_id
    request.state.audit_detail = {"name": body.name, "target": target.as_json() if target.device_ids is None
                                  else {"device_ids": len(target.device_ids)}}
    runner.start(fan_out(batch, target, registry=onboarding.devices, store=store, requests=requests,
                         visible_groups=principal.groups))
    url = f"/v1/command-batches/{batch_id}"
    return JSONResponse(CommandBatchAccepted(batch_id=batch_id, status_url=url).model_dump(),
                        status_code=status.HTTP_202_ACCEPTED, headers={"Location": url})


def _visible_batch(batch_id: str, principal: Principal, store: Batches) -> Batch:
    batch = store.get(batch_id)
    # A scoped key sees a batch only if it covers every group of the key that made it.
    if batch is None or (principal.groups is not None
                         and (batch.scope is None or not batch.scope <= principal.groups)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"command batch {batch_id!r} not found")
    return batch


def _view(batch: Batch, store: Batches) -> CommandBatchOut:
    p = batches.progress(state=batch.state, targeted=batch.targeted, submitted=batch.submitted,
                         skipped=batch.skipped, member_states=store.member_states(batch.batch_id),
                         heartbeat_at=batch.heartbeat_at, now=_now_ms(), canceled_at=batch.canceled_at)
    return CommandBatchOut(batch_id=batch.batch_id, name=batch.name, params=batch.params, timeout_ms=batch.timeout_ms,
                           ttl_ms=batch.ttl_ms, target=batch.target, created_by=batch.created_by,
                           created_at=batch.created_at, state=p.state, error=batch.error, targeted=p.targeted,
                           submitted=p.submitted, skipped=p.skipped, skipped_sample=list(batch.skipped_sample),
                           counts=p.counts, final=p.final, pending=p.pending, done=p.done,
                           canceled_at=batch.canceled_at, canceled_by=batch.canceled_by)


@router.get("/v1/command-batches/{batch_id}", response_model=CommandBatchOut, responses=responses(404),
            summary="A bulk command's progress: devices per command state")
def get_batch(batch_id: str, principal: Viewer, store: Batches) -> CommandBatchOut:
    """Counted from the members' states the commands job wrote (about 10 ms per thousand devices)."""
    return _view(_visible_batch(batch_id, principal, store), store)


CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 404),
    503: {"model": CommandRejected, "description": "kafka_unavailable: some members' cancellations did not reach "
                                                   "Kafka (the batch stays canceled; cancel again to finish)"},
}


@router.post("/v1/command-batches/{batch_id}/cancel", response_model=CommandBatchOut, responses=CANCEL_RESPONSES,
             summary="Cancel a bulk command: submit no more of it, cancel every member not final")
async def cancel_batch(batch_id: str, principal: Operator, store: Batches, requests: CommandRequestsDep,
                       request: Request) -> Any:
    """Marks the batch canceled (``canceled_at``, ``canceled_by``; its ``state`` reads canceled from
    then on). The fan-out stops before its next chunk of 500: devices not submitted yet never get
    the command. Every member whose command is not final is canceled as
    ``POST /v1/commands/{id}/cancel`` would (CANCELED, reason "canceled by <key name>"); members
    already final keep their state, and a device already running its command is not interrupted.
    The call sweeps the members until the fan-out has stopped and the commands job has written
    every submitted member (at most 10 s), then answers 200 with the batch as GET shows it; the
    job's CANCELED states follow within moments (poll GET until ``done``). Idempotent: cancelling
    again answers 200 with the same batch (the first call's ``canceled_at`` and ``canceled_by``)
    and cancels any member still not final."""
    batch = await asyncio.to_thread(_visible_batch, batch_id, principal, store)
    request.state.audit_target = batch_id
    marked = batch.canceled_at is None and await asyncio.to_thread(store.cancel, batch_id, by=principal.name,
                                                                  now=_now_ms())
    request.state.audit_detail = {"name": batch.name, "first_cancel": marked}
    try:
        sent = await cancel_members(batch_id, store=store, requests=requests, by=principal.name)
    except KafkaUnavailable as exc:
        return _rejected("kafka_unavailable", str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
    request.state.audit_detail["cancellations_sent"] = sent
    fresh = await asyncio.to_thread(store.get, batch_id)
    return await asyncio.to_thread(_view, fresh or batch, store)


@router.get("/v1/command-batches/{batch_id}/commands", response_model=BatchMemberPage,
            responses=responses(400, 404), summary="A bulk command's devices and their command states")
def list_batch_members(batch_id: str, principal: Viewer, store: Batches,
                       state: Annotated[str | None, Query(description="only members in this state (applied to each "
                                                                      "page after it is read)")] = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC),
                                             checked(page_token_of(decode_cursor))] = None) -> BatchMemberPage:
    if state is not None and state not in batches.MEMBER_STATES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"state must be one of {', '.join(batches.MEMBER_STATES)}")
    _visible_batch(batch_id, principal, store)
    members = store.members(batch_id, limit=limit, after=decode_cursor(page_token))
    nxt = encode_cursor(members[-1].device_id) if len(members) == limit else None
    return BatchMemberPage(batch_id=batch_id, next_page_token=nxt,
                           items=[BatchMemberOut(device_id=m.device_id, command_id=m.command_id, state=m.state,
                                                 reason=m.reason, updated_at=m.updated_at)
                                  for m in members if state is None or m.state == state])
