"""Error responses: domain errors as 4xx, answers that cannot themselves fail, a cap on body size.

Routes raise the domain's errors (``RegistryError``, ``QueryError``, ``FirmwareError``) and the handlers here turn
them into ``{"detail": "<message>"}`` with the status the error means; a query parameter's
validator may raise them too (or :class:`BadRequest`), and the answer is the same 400 as if the
route had. ``responses()`` documents those answers in OpenAPI.

FastAPI echoes invalid input in its 422 body. That input may be raw bytes (a non-JSON
Content-Type), bytes that are not UTF-8, a lone surrogate, or megabytes long: jsonable_encoder
fails on the first kinds (a 500, and a reset keep-alive connection) and echoes the last whole.
So each error's ``input`` is reduced to a short, always-encodable excerpt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter

from api.schemas.base import ErrorOut
from fleet.identity.devices import RegistryError
from fleet.infra.cassandra import StoreUnavailable
from fleet.ota.errors import FirmwareError
from fleet.ota.signing import KeyFileError
from fleet.telemetry.query import QueryError

log = logging.getLogger("api.errors")

EXCERPT_CHARS = 200

BODY_TOO_LARGE = Counter("fleet_api_request_body_too_large_total",
                         "Requests refused with 413 because their body exceeded api_max_body_bytes "
                         "(or a route's own limit, see body_limit)")


class BadRequest(ValueError):
    """A 400 with this message; for checks in a parameter's validator, where HTTPException cannot be raised."""


_REGISTRY_STATUS = {"bad_request": status.HTTP_400_BAD_REQUEST, "not_found": status.HTTP_404_NOT_FOUND,
                    "conflict": status.HTTP_409_CONFLICT, "forbidden": status.HTTP_403_FORBIDDEN}
_FIRMWARE_STATUS = {"bad_request": status.HTTP_400_BAD_REQUEST, "not_found": status.HTTP_404_NOT_FOUND,
                    "conflict": status.HTTP_409_CONFLICT, "too_large": status.HTTP_413_CONTENT_TOO_LARGE}
# The errors that carry a message for the client (and so may answer a request that raised them).
CLIENT_ERRORS = (RegistryError, QueryError, BadRequest, FirmwareError)

# For OpenAPI (``responses=`` on routes and routers): what each error answer means.
DESCRIPTIONS = {
    400: "Bad request: the message names the rule or the bound",
    401: "Missing or invalid credential",
    403: "The credential's role or group scope does not allow this",
    404: "Not found (a device outside the key's groups is not found either)",
    409: "Conflicts with the current state (exists already, already revoked, ...)",
    413: "Request body larger than the configured maximum (api_max_body_bytes)",
    422: "Invalid request (body not JSON, not UTF-8, or not matching the schema)",
    503: "A store is unavailable (Cassandra, Kafka) or misconfigured (a firmware key file); the message says which",
}


def responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` for these error statuses: ``{"detail": str}`` (422: FastAPI's own model)."""
    return {code: {"description": DESCRIPTIONS[code]} if code == 422 else
            {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


def status_of(exc: Exception) -> int:
    if isinstance(exc, RegistryError):
        return _REGISTRY_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, FirmwareError):
        return _FIRMWARE_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (StoreUnavailable, KeyFileError)):  # KeyFileError: a firmware key file the operator must fix
        return status.HTTP_503_SERVICE_UNAVAILABLE
    return status.HTTP_400_BAD_REQUEST


def detail_of(exc: Exception) -> str:
    if isinstance(exc, StoreUnavailable):
        return f"the registry store is unavailable: {exc}"
    return str(exc)


def _json(detail, status_code: int) -> Response:
    return Response(json.dumps({"detail": detail}, ensure_ascii=True, default=repr), status_code=status_code,
                    media_type="application/json")


async def client_error(request: Request, exc: Exception) -> Response:
    """Domain errors (and a store that is down) as 4xx/503 with the error's message as ``detail``."""
    return _json(detail_of(exc), status_of(exc))


def excerpt(value: object) -> object:
    """A short, JSON-safe stand-in for any input value."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[:EXCERPT_CHARS]))
    elif isinstance(value, str):
        text = value[:EXCERPT_CHARS]
    else:
        text = repr(value)[:EXCERPT_CHARS] if not isinstance(value, (dict, list)) else \
            json.dumps(value, ensure_ascii=True, default=repr)[:EXCERPT_CHARS]
    # Lone surrogates survive ensure_ascii as escapes, so the body always encodes.
    return text


def _safe_error(error: dict) -> dict:
    out = {}
    for key in ("type", "loc", "msg"):
        if key in error:
            out[key] = [excerpt(x) for x in error[key]] if key == "loc" else excerpt(error[key])
    if "input" in error:
        out["input"] = excerpt(error["input"])
    if error.get("type") == "model_attributes_type" and isinstance(error.get("input"), (bytes, bytearray)):
        out["msg"] = "expected a JSON body (Content-Type: application/json) in UTF-8"
    return out


def _raised_by_parameters(errors: list[dict]) -> Exception | None:
    """The first client error raised by a parameter's validator, when that is all that is wrong."""
    raised = [e.get("ctx", {}).get("error") for e in errors]
    if errors and all(isinstance(r, CLIENT_ERRORS) for r in raised) and \
            all(e.get("loc", ("body",))[0] != "body" for e in errors):
        return raised[0]
    return None


async def request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # registered for it alone
    try:
        errors = list(exc.errors())
        raised = _raised_by_parameters(errors)
        if raised is not None:
            return _json(detail_of(raised), status_of(raised))
        detail = [_safe_error(e) for e in errors[:20]]
    except Exception:  # never let the error answer itself fail
        log.exception("could not render a validation error")
        detail = [{"msg": "invalid request"}]
    return _json(detail, status.HTTP_422_UNPROCESSABLE_CONTENT)


class _TooLarge(Exception):
    pass


def body_limit(app, max_bytes: int, route_limits: Mapping[tuple[str, str], int] | None = None):
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed).

    ``route_limits``: ``(method, path) -> bytes`` for the few routes that take a large body (a
    firmware upload streams up to firmware_max_image_bytes); theirs is enforced here the same way.
    """
    route_limits = dict(route_limits or {})

    def too_large_response(limit: int):
        BODY_TOO_LARGE.inc()
        return Response(json.dumps({"detail": f"request body larger than {limit} bytes"}),
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE, media_type="application/json")

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        limit = route_limits.get((scope.get("method"), scope.get("path")), max_bytes)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large_response(limit)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await too_large_response(limit)(scope, receive, send)

    return middleware


def cassandra_outage_errors() -> tuple[type[Exception], ...]:
    """The driver's errors that mean Cassandra is down or overloaded mid-request (not a bad query):
    503, like StoreUnavailable at connect time, never a 500."""
    try:
        from cassandra import CoordinationFailure, OperationTimedOut, Timeout, Unavailable
        from cassandra.cluster import NoHostAvailable
    except ImportError:  # pragma: no cover - the driver is a dependency of the API
        return ()
    return (NoHostAvailable, OperationTimedOut, Unavailable, Timeout, CoordinationFailure)


async def cassandra_outage(request: Request, exc: Exception) -> Response:
    log.warning("Cassandra unavailable during %s %s: %s: %s", request.method, request.url.path, type(exc).__name__,
                exc)
    return _json(f"Cassandra is unavailable: {type(exc).__name__}: {str(exc)[:300]}",
                 status.HTTP_503_SERVICE_UNAVAILABLE)


def install(app: FastAPI, max_body_bytes: int, route_limits: Mapping[tuple[str, str], int] | None = None) -> None:
    app.add_exception_handler(RequestValidationError, request_validation_error)
    for error in (*CLIENT_ERRORS, StoreUnavailable, KeyFileError):
        app.add_exception_handler(error, client_error)
    for outage in cassandra_outage_errors():
        app.add_exception_handler(outage, cassandra_outage)
    app.add_middleware(lambda inner: body_limit(inner, max_body_bytes, route_limits))
