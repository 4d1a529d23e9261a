"""Remote commands: submit to a device, read one or a device's list, cancel.

The commands job is the one writer of a command (api/command_requests.py): ``POST`` checks the
command with the domain's own rules (400/413 without a round trip), produces it to Kafka and
answers 202 with its ``command_id`` once the job took it (or refused it: 409/429), or, with
``?wait=<s>``, 200 with the final command when the device's result (or a timeout, an expiry, a
cancellation) comes in time. Reads come from Cassandra, where the job writes every transition.

Idempotency: an ``idempotency_key`` is bound to the command id it created in Cassandra with a
lightweight transaction (fleet.commands.query.CommandReader.claim), with a hash of the body. The
same key and body again is the same command and is not submitted again; another body is 409.
Not a command id derived from the key: the job's duplicate check compares the whole request
including its creation time (a retry is another request), and would forget the key when it prunes
the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from api.command_requests import KafkaUnavailable, Watch, cancel_record, is_final_event, submit_record
from api.deps import CommandRequestsDep, Commands, OnboardingDep, Operator, Viewer, VisibleDevice, ensure_device_visible
from api.errors import responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.commands import CommandAccepted, CommandIn, CommandOut, CommandPage, CommandRejected
from fleet.access.auth import Principal
from fleet.commands.domain import CommandRequest, State, validate
from fleet.commands.query import MAX_PAGE_LIMIT, PageCursor
from fleet.identity.devices import RegistryError

router = APIRouter(tags=["commands"])

MAX_WAIT_S = 30.0
# How long POST waits for the job to take (or refuse) a command before answering 202 anyway.
ACCEPT_WAIT_S = 2.0
IDEMPOTENCY_CONFLICT = "idempotency_conflict"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rejected(code: str, message: str, http_status: int) -> JSONResponse:
    return JSONResponse(CommandRejected(detail=message, code=code).model_dump(), status_code=http_status)


def _accepted(command_id: str, state: str | None) -> JSONResponse:
    url = f"/v1/commands/{command_id}"
    return JSONResponse(CommandAccepted(command_id=command_id, status_url=url, state=state).model_dump(),
                        status_code=status.HTTP_202_ACCEPTED, headers={"Location": url})


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def body_hash(body: CommandIn) -> str:
    canonical = json.dumps({"name": body.name, "params": body.params, "timeout_ms": _ms(body.timeout_s),
                            "ttl_ms": _ms(body.ttl_s)}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _error(description: str) -> dict[str, Any]:
    return {"model": CommandRejected, "description": description}


WaitParam = Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="wait up to this many seconds for the final "
                                                                     "state (200 with the command), else 202")]

POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 404, 422),
    202: {"model": CommandAccepted, "description": "Accepted; poll status_url (GET /v1/commands/{command_id})"},
    400: _error("invalid_command: the name, params, timeout or TTL break a rule; the message says which"),
    409: _error("idempotency_conflict: the key was used with another body"),
    413: _error("params_too_large: params over 8 KiB (or the body over api_max_body_bytes)"),
    429: _error("queue_full: the device has 50 pending commands"),
    503: _error("Kafka (or the store) is unavailable; nothing was submitted"),
}


@router.post("/v1/devices/{device_id}/command", response_model=CommandOut, responses=POST_RESPONSES,
             summary="Send a command to a device (answered 202, or with its final result with ?wait=)")
async def submit_command(body: CommandIn, principal: Operator, device: VisibleDevice, commands: Commands,
                         requests: CommandRequestsDep, request: Request, wait: WaitParam = 0) -> Any:
    """The command is queued while the device is offline (up to ``ttl_s``), sent in order when it is
    online, and must be answered within ``timeout_s`` of being sent. Its lifecycle: QUEUED, SENT,
    IN_PROGRESS, then SUCCEEDED, FAILED, REJECTED, TIMED_OUT, EXPIRED or CANCELED."""
    device_id = device.device_id
    started = time.monotonic()
    created_at = _now_ms()
    command_id = uuid.uuid4().hex
    req = CommandRequest(command_id, device_id, body.name, body.params, _ms(body.timeout_s), _ms(body.ttl_s),
                         principal.name, created_at)
    refused = validate(req)
    if refused is not None:
        return _rejected(refused.code, refused.message, refused.http_status)
    request.state.audit_target = device_id
    request.state.audit_detail = {"name": body.name}
    key = body.idempotency_key
    if key is not None:
        claim = await asyncio.to_thread(commands.claim, device_id, key, command_id, body_hash(body), created_at)
        if claim.body_hash != body_hash(body):
            return _rejected(IDEMPOTENCY_CONFLICT, f"idempotency key {key!r} was used for another command body",
                             status.HTTP_409_CONFLICT)
        if claim.command_id != command_id:  # a retry: the same command, not submitted again
            request.state.audit_detail["command_id"] = claim.command_id
            return await _existing(claim.command_id, commands, requests, started + wait)
    request.state.audit_detail["command_id"] = command_id
    record = submit_record(command_id=command_id, device_id=device_id, name=body.name, params=body.params,
                           timeout_ms=req.timeout_ms, ttl_ms=req.ttl_ms, created_by=principal.name,
                           created_at=created_at)
    with requests.watch(command_id) as watch:
        try:
            await requests.send(record, watch)
        except KafkaUnavailable as exc:
            if key is not None:
                await asyncio.to_thread(commands.release, device_id, key, command_id)
            return _rejected("kafka_unavailable", str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        first = await watch.next(time.monotonic() + ACCEPT_WAIT_S if not wait else started + wait)
        if first is not None and first.get("type") == "rejected":
            if key is not None:
                await asyncio.to_thread(commands.release, device_id, key, command_id)
            r = first["rejection"]
            return _rejected(r["code"], r["message"], int(r["status"]))
        return await _until_final(command_id, watch, first, started + wait)


async def _until_final(command_id: str, watch: Watch, first: dict[str, Any] | None, deadline: float) -> Any:
    if first is not None and not is_final_event(first) and time.monotonic() < deadline:
        await watch.final(deadline)
    last = watch.last
    if last is not None and is_final_event(last) and last.get("command"):
        return CommandOut.of(last["command"])
    return _accepted(command_id, last["to"] if last is not None else None)


async def _existing(command_id: str, commands: Commands, requests: CommandRequestsDep, deadline: float) -> Any:
    """A retried submission: the command it made, final (200) or as far as it got (202)."""
    with requests.watch(command_id) as watch:
        command = await asyncio.to_thread(commands.command, command_id)
        if command is not None and State(command["state"]).final:
            return CommandOut.of(command)
        if time.monotonic() < deadline:
            event = await watch.final(deadline)
            if event is not None and event.get("command"):
                return CommandOut.of(event["command"])
    return _accepted(command_id, command["state"] if command is not None else None)


def _not_found(command_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"command {command_id!r} not found")


async def _visible_command(command_id: str, principal: Principal, commands: Commands,
                           onboarding: OnboardingDep) -> dict[str, Any]:
    """The command, if the caller may see its device (404 otherwise, like a missing one)."""
    command = await asyncio.to_thread(commands.command, command_id)
    if command is None:
        raise _not_found(command_id)
    if principal.groups is not None:
        try:
            groups = (await asyncio.to_thread(onboarding.devices.require, command["device_id"])).groups
        except RegistryError:  # the device is gone: only an unscoped key still sees its commands
            groups = None
        try:
            ensure_device_visible(principal, groups)
        except HTTPException:
            raise _not_found(command_id) from None
    return command


@router.get("/v1/commands/{command_id}", response_model=CommandOut, summary="One command, with its history",
            responses=responses(404))
async def get_command(command_id: str, principal: Viewer, commands: Commands, onboarding: OnboardingDep) -> CommandOut:
    """Its state, result and every transition with its time and reason. Kept 30 days."""
    return CommandOut.of(await _visible_command(command_id, principal, commands, onboarding))


@router.get("/v1/devices/{device_id}/commands", response_model=CommandPage,
            summary="A device's commands, newest first, paginated", responses=responses(400, 404))
def list_commands(principal: Viewer, device: VisibleDevice, commands: Commands,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 50,
                  page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC),
                                        checked(page_token_of(PageCursor.decode))] = None) -> CommandPage:
    items, nxt = commands.device_commands(device.device_id, limit=limit, cursor=PageCursor.decode(page_token))
    return CommandPage(device_id=device.device_id, items=[CommandOut.of(c) for c in items],
                       next_page_token=nxt.encode() if nxt else None)


CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 404),
    202: {"model": CommandAccepted, "description": "The cancellation is on its way; poll status_url"},
    409: _error("not_cancelable: the command is already final"),
    503: _error("Kafka (or the store) is unavailable; nothing changed"),
}


@router.post("/v1/commands/{command_id}/cancel", response_model=CommandOut, responses=CANCEL_RESPONSES,
             summary="Cancel a command that is not final yet")
async def cancel_command(command_id: str, principal: Operator, commands: Commands, onboarding: OnboardingDep,
                         requests: CommandRequestsDep, request: Request) -> Any:
    """200 with the CANCELED command; 409 if it is final already (also when it ended meanwhile). A
    device already running it is not interrupted: its result, if it comes, is kept as late_result."""
    command = await _visible_command(command_id, principal, commands, onboarding)
    request.state.audit_target = command_id
    if State(command["state"]).final:
        return _rejected("not_cancelable", f"command {command_id} is already {command['state']}",
                         status.HTTP_409_CONFLICT)
    record = cancel_record(command_id=command_id, device_id=command["device_id"], by=principal.name, ts=_now_ms())
    with requests.watch(command_id) as watch:
        try:
            await requests.send(record, watch)
        except KafkaUnavailable as exc:
            return _rejected("kafka_unavailable", str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        event = await watch.final(time.monotonic() + ACCEPT_WAIT_S)
    if event is None:
        return _accepted(command_id, command["state"])
    if event.get("type") == "rejected" and event.get("op") == "cancel":
        r = event["rejection"]
        return _rejected(r["code"], r["message"], int(r["status"]))
    if event.get("to") != State.CANCELED.value:  # it ended otherwise first
        return _rejected("not_cancelable", f"command {command_id} is already {event.get('to')}",
                         status.HTTP_409_CONFLICT)
    return CommandOut.of(event["command"])
