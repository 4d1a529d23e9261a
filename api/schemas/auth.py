"""/v1/tokens and /v1/whoami bodies."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from api.schemas.base import RequestModel, ResponseModel

# -- requests ------------------------------------------------------------------------------


class TokenRequest(RequestModel):
    ttl_s: int | None = Field(None, ge=60, description="lifetime; default api_token_ttl_s, at most api_token_max_ttl_s")
    role: Literal["viewer", "operator", "admin"] | None = Field(None, description="a lower role than the key's")


# -- responses -----------------------------------------------------------------------------


class Token(ResponseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'; shown only now")
    token_type: Literal["bearer"] = "bearer"
    role: str
    expires_at: dt.datetime


class Me(ResponseModel):
    id: str
    name: str
    role: str
    groups: list[str] | None
    via: str
