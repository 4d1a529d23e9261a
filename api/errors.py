"""Error responses that cannot themselves fail, and a cap on request body size.

FastAPI echoes invalid input in its 422 body. That input may be raw bytes (a non-JSON
Content-Type), bytes that are not UTF-8, a lone surrogate, or megabytes long: jsonable_encoder
fails on the first kinds (a 500, and a reset keep-alive connection) and echoes the last whole.
So each error's ``input`` is reduced to a short, always-encodable excerpt.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter

log = logging.getLogger("api.errors")

EXCERPT_CHARS = 200

BODY_TOO_LARGE = Counter("fleet_api_request_body_too_large_total",
                         "Requests refused with 413 because their body exceeded api_max_body_bytes")

# For OpenAPI: the error answers every body-taking route may give.
ERROR_RESPONSES = {
    413: {"description": "Request body larger than the configured maximum (api_max_body_bytes)"},
    422: {"description": "Invalid request (body not JSON, not UTF-8, or not matching the schema)"},
}


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


async def request_validation_error(request: Request, exc: RequestValidationError) -> Response:
    try:
        detail = [_safe_error(e) for e in exc.errors()[:20]]
    except Exception:  # never let the error answer itself fail
        log.exception("could not render a validation error")
        detail = [{"msg": "invalid request"}]
    body = json.dumps({"detail": detail}, ensure_ascii=True, default=repr)
    return Response(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


class _TooLarge(Exception):
    pass


def body_limit(app, max_bytes: int):
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed)."""
    def too_large_response():
        BODY_TOO_LARGE.inc()
        return Response(json.dumps({"detail": f"request body larger than {max_bytes} bytes"}),
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE, media_type="application/json")

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await too_large_response()(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
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
            await too_large_response()(scope, receive, send)

    return middleware


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_middleware(lambda inner: body_limit(inner, max_body_bytes))
