"""Error responses that cannot themselves fail.

FastAPI echoes invalid input in its 422 body; input holding a lone surrogate ("\\ud800" in JSON)
would make that body unencodable and turn a client error into a 500. Same body, ASCII-escaped.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError


async def request_validation_error(request: Request, exc: RequestValidationError) -> Response:
    body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True, default=str)
    return Response(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, request_validation_error)
