"""Audit every mutating call (POST, PUT, PATCH, DELETE): who, what, when, outcome.

A middleware rather than a line in each route, so refused calls (401, 403, 400) are recorded
too. Routes may add ``request.state.audit_target`` and ``request.state.audit_detail`` (ids and
names only - never secrets; request bodies are not recorded).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request

from api.deps import get_audit
from fleet.access.audit import AuditLog
from fleet.infra.cassandra import StoreUnavailable
from fleet.logs import log_fields

log = logging.getLogger(__name__)
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return "success"
    if status_code in (401, 403):
        return "denied"
    if status_code < 500:
        return "rejected"
    return "error"


def _action(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path[:200]
    return f"{request.method} {path}"


def _target(request: Request) -> str | None:
    target = getattr(request.state, "audit_target", None)
    if target is None and request.path_params:
        target = "/".join(str(v)[:100] for v in request.path_params.values())
    return target


def audit_mutations(app):
    """ASGI middleware (not Starlette's BaseHTTPMiddleware, whose task group and streams per request
    showed in the API's profile): records a mutating call as its response starts."""
    async def middleware(scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in MUTATING:
            return await app(scope, receive, send)

        async def recording_send(message):
            if message["type"] == "http.response.start":
                # Written before the client sees the answer, as a route's own write would be;
                # the scope is the one the routes filled (route, path params, state).
                await _record(Request(scope), message["status"])
            await send(message)

        await app(scope, receive, recording_send)

    return middleware


def install(app: FastAPI) -> None:
    app.add_middleware(audit_mutations)


async def _record(request: Request, status_code: int) -> None:
    principal = getattr(request.state, "principal", None)
    actor = f"key:{principal.id} ({principal.name})" if principal else "anonymous"
    detail = {**(getattr(request.state, "audit_detail", None) or {}), "http_status": status_code}
    if principal and principal.via != "api_key":
        detail["via"] = principal.via
    try:
        audit = await _audit_log(request.app)
        future = audit.record_async(actor, _action(request), _target(request), outcome_of(status_code), detail)
        await _wait(future)
    except (StoreUnavailable, Exception) as exc:  # the response is already decided; never fail it here
        log.error("audit record not written", extra=log_fields(action=_action(request), error=str(exc)))


async def _audit_log(app: FastAPI) -> AuditLog:
    """The audit log the routes get; a test's ``app.dependency_overrides[get_audit]`` (no arguments) too."""
    override = app.dependency_overrides.get(get_audit)
    if override is not None:
        return override()
    stores = app.state.stores
    if stores.ready("audit"):
        return stores.audit
    return await asyncio.to_thread(lambda: stores.audit)  # connecting blocks: not on the event loop


async def _wait(response_future) -> None:
    """Await a cassandra-driver ResponseFuture without blocking the event loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def ok(_):
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    def failed(exc):
        loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(exc))

    response_future.add_callbacks(ok, failed)
    await done
