"""Device shadows: read the document, its names and history; change desired through the shadow job.

Reads come from Cassandra, where the shadow job writes every accepted version as it happens.
A change is never written here: ``PATCH`` produces an operator request to Kafka and answers with
the job's verdict (api/shadow_requests.py), so the job is the one writer of a shadow and two
concurrent PATCHes on one version cannot both win. Versions are ETags: ``GET`` answers
``ETag: "<version>"`` and ``PATCH`` with ``If-Match: "<version>"`` applies only on that version
(409 naming the current one otherwise).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from api.deps import (
    OnboardingDep,
    Operator,
    SettingsDep,
    ShadowRequestsDep,
    Shadows,
    Viewer,
    VisibleDevice,
    ensure_device_visible,
)
from api.errors import BadRequest, responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.shadow import (
    DesiredPatch,
    ShadowHistoryPage,
    ShadowList,
    ShadowName,
    ShadowOut,
    ShadowPending,
    ShadowRejected,
    ShadowRequestOut,
    ShadowVersion,
)
from api.shadow_requests import KafkaUnavailable, Outcome, Pending, desired_record
from fleet.identity.devices import RegistryError
from fleet.shadow.domain import (
    CLASSIC,
    INVALID_REQUEST,
    OPERATOR,
    Rejection,
    ShadowDocument,
    Source,
    apply_update,
    parse_update,
    validate_shadow_name,
)
from fleet.shadow.query import MAX_HISTORY_LIMIT, HistoryCursor

router = APIRouter(tags=["shadow"])

# While GET waits for min_version, it reads this often.
MIN_VERSION_POLL_S = 0.05
UNKNOWN_REQUEST = "unknown or expired request"


def _check_name(name: str) -> None:
    rejection = validate_shadow_name(name)
    if rejection is not None:
        raise BadRequest(rejection.message)


NameParam = Annotated[str, Query(description='the shadow\'s name; "" (default) is the classic shadow'),
                      checked(_check_name)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version an ``If-Match`` names ("5", 5, W/"5"); None when absent or ``*`` (no check)."""
    if value is None or value.strip() in ("", "*"):
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise ValueError(f"If-Match must be one shadow version, e.g. '\"5\"' (got {value[:40]!r})")
    return int(text)


def _rejected(code: str, message: str, http_status: int, version: int | None = None) -> JSONResponse:
    return JSONResponse(ShadowRejected(detail=message, code=code, version=version).model_dump(), status_code=http_status)


def _document(response: Response, doc: ShadowOut) -> ShadowOut:
    response.headers["ETag"] = _etag(doc.version)
    return doc


# -- reads ---------------------------------------------------------------------------------

@router.get("/v1/devices/{device_id}/shadow", response_model=ShadowOut, summary="The shadow document",
            responses=responses(400, 404))
def get_shadow(principal: Viewer, device: VisibleDevice, shadows: Shadows, settings: SettingsDep, response: Response,
               name: NameParam = CLASSIC,
               min_version: Annotated[int | None, Query(ge=0, description="wait briefly (up to shadow_verdict_timeout_s) "
                                                        "until this version is visible; read-your-writes after a "
                                                        "PATCH")] = None) -> ShadowOut:
    """Desired, reported and delta, per-field metadata, version (also the ``ETag``) and update time.

    With ``min_version`` the answer waits until that version is visible, at most a few seconds;
    then it is the document as it is (its version tells whether it caught up). 404 for a shadow
    that was never written.
    """
    deadline = time.monotonic() + settings.shadow_verdict_timeout_s
    doc = shadows.document(device.device_id, name)
    while min_version is not None and (doc is None or doc.version < min_version) and time.monotonic() < deadline:
        time.sleep(MIN_VERSION_POLL_S)
        doc = shadows.document(device.device_id, name)
    if doc is None:
        raise _not_found(device.device_id, name)
    return _document(response, ShadowOut.of(doc, shadows.connectivity([device.device_id]).get(device.device_id)))


def _not_found(device_id: str, name: str) -> HTTPException:
    what = f"shadow {name!r}" if name else "classic shadow"
    return HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} has no {what} yet")


@router.get("/v1/devices/{device_id}/shadows", response_model=ShadowList,
            summary="The device's shadows, with their versions", responses=responses(404))
def list_shadows(principal: Viewer, device: VisibleDevice, shadows: Shadows) -> ShadowList:
    """Every shadow the device has (``""`` is the classic one), by name."""
    return ShadowList(device_id=device.device_id, items=[ShadowName.of(s) for s in shadows.shadows(device.device_id)])


@router.get("/v1/devices/{device_id}/shadow/history", response_model=ShadowHistoryPage,
            summary="Every accepted version of a shadow, newest first, paginated", responses=responses(400, 404))
def shadow_history(principal: Viewer, device: VisibleDevice, shadows: Shadows, name: NameParam = CLASSIC,
                   limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 100,
                   page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC),
                                         checked(page_token_of(HistoryCursor.decode))] = None) -> ShadowHistoryPage:
    """Who changed what and when: the change's effective patch and the state after it."""
    changes, nxt = shadows.history(device.device_id, name, limit=limit, cursor=HistoryCursor.decode(page_token))
    return ShadowHistoryPage(device_id=device.device_id, name=name, items=[ShadowVersion.of(c) for c in changes],
                             next_page_token=nxt.encode() if nxt else None)


# -- the change ------------------------------------------------------------------------------

def _shadow_error(description: str) -> dict[str, Any]:
    return {"model": ShadowRejected, "description": description}


PATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 404, 422),
    202: {"model": ShadowPending, "description": "The verdict did not come in time; poll status_url "
                                                 "(GET /v1/shadow-requests/{request_id})"},
    400: _shadow_error("The change breaks a rule (shadow name, key names, depth, values, If-Match); code "
                       "and message say which"),
    409: _shadow_error("version_conflict: If-Match is not the current version, which the body names; "
                       "nothing changed"),
    413: _shadow_error("The patch, or the state it would make, is over a limit (state_too_large, "
                       "too_many_keys), or the body is over api_max_body_bytes"),
    429: _shadow_error("rate_limited: too many changes to this shadow; retry shortly"),
    503: _shadow_error("Kafka (or the registry store) is unavailable; nothing changed"),
}


@router.patch("/v1/devices/{device_id}/shadow", response_model=ShadowOut, responses=PATCH_RESPONSES,
              summary="Change the desired state (a JSON merge patch), answered with the shadow job's verdict")
async def patch_shadow(
    body: DesiredPatch, principal: Operator, device: VisibleDevice, shadows: Shadows, requests: ShadowRequestsDep,
    settings: SettingsDep, request: Request, response: Response,
    name: Annotated[str, Query(description='the shadow\'s name; "" (default) is the classic shadow')] = CLASSIC,
    if_match: Annotated[str | None, Header(alias="If-Match", description='apply only on this version (the ETag), e.g. "5"; '
                                                       'absent: on whatever version is current')] = None,
) -> Any:
    """``{"desired": {...}}`` merges into desired: ``null`` deletes a field, arrays replace whole.

    200 with the new document and its ``ETag`` when the shadow job accepted it (a change that
    changes nothing is accepted without a new version), 409 when ``If-Match`` is not the current
    version, 400/413/429 for the job's other rejections. When the job does not answer within
    ``shadow_verdict_timeout_s``: 202 with a ``status_url`` to poll.
    """
    device_id = device.device_id
    request.state.audit_target = device_id if not name else f"{device_id}/{name}"
    request.state.audit_detail = {"shadow": name}
    try:
        version = parse_if_match(if_match)
    except ValueError as exc:
        return _rejected(INVALID_REQUEST, str(exc), status.HTTP_400_BAD_REQUEST)
    # Cheap checks first, with the domain's own rules and messages: a change that cannot pass the
    # job is refused here, without a round trip (the job checks again, against the real document).
    ts = _now_ms()
    payload: dict[str, Any] = {"state": {"desired": body.desired}}
    if body.client_token is not None:
        payload["client_token"] = body.client_token
    update = parse_update(payload, Source(OPERATOR, principal.name), ts)
    refused = update if isinstance(update, Rejection) else apply_update(ShadowDocument.empty(device_id, name), update)
    if isinstance(refused, Rejection):
        return _rejected(refused.code, refused.message, refused.http_status)

    record = desired_record(device_id=device_id, shadow=name, desired=body.desired, version=version,
                            actor=principal.name, client_token=body.client_token, ts=ts)
    request.state.audit_detail["request_id"] = record["request_id"]
    try:
        outcome = await requests.submit(record, settings.shadow_verdict_timeout_s)
    except KafkaUnavailable as exc:
        return _rejected("kafka_unavailable", str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
    if outcome is None:
        url = f"/v1/shadow-requests/{record['request_id']}"
        return JSONResponse(ShadowPending(request_id=record["request_id"], status_url=url).model_dump(),
                            status_code=status.HTTP_202_ACCEPTED, headers={"Location": url})
    if outcome.status != status.HTTP_200_OK:
        request.state.audit_detail["code"] = outcome.code
        return _rejected(outcome.code or "rejected", outcome.message or "rejected by the shadow job", outcome.status,
                         outcome.version)
    if outcome.document is not None:
        return _document(response, ShadowOut.of_json(outcome.document))
    # A verdict without its document: what Cassandra has (it may lag the verdict by a moment).
    doc = await asyncio.to_thread(shadows.document, device_id, name)
    if doc is None:
        raise _not_found(device_id, name)
    return _document(response, ShadowOut.of(doc))


@router.get("/v1/shadow-requests/{request_id}", response_model=ShadowRequestOut, tags=["shadow"],
            summary="The outcome of a shadow change that answered 202", responses=responses(404))
async def get_shadow_request(request_id: str, principal: Viewer, requests: ShadowRequestsDep,
                             onboarding: OnboardingDep) -> ShadowRequestOut:
    """Kept in the memory of the API instance for a few minutes: ask the instance that answered
    the PATCH (other instances know the request only once its verdict is out). Unknown or expired:
    404."""
    found = requests.lookup(request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, UNKNOWN_REQUEST)
    if principal.groups is not None:
        try:
            groups = (await asyncio.to_thread(onboarding.devices.require, found.device_id)).groups
        except RegistryError:  # the device is gone: only an unscoped key still sees the request
            groups = None
        try:
            ensure_device_visible(principal, groups)
        except HTTPException:
            raise HTTPException(status.HTTP_404_NOT_FOUND, UNKNOWN_REQUEST) from None
    return request_out(found)


def request_out(found: Outcome | Pending) -> ShadowRequestOut:
    if isinstance(found, Pending):
        return ShadowRequestOut(request_id=found.request_id, device_id=found.device_id, name=found.shadow,
                                state="pending")
    state: Literal["accepted", "rejected", "failed"] = (
        "accepted" if found.status == 200 else "failed" if found.status >= 500 else "rejected")
    return ShadowRequestOut(request_id=found.request_id, device_id=found.device_id, name=found.shadow, state=state,
                            status=found.status, code=found.code, message=found.message, version=found.version,
                            document=ShadowOut.of_json(found.document) if found.document is not None else None)
