"""/v1/keys bodies. The secret is in the creation response only."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from api.schemas.base import RequestModel, ResponseModel
from fleet.access.apikeys import ApiKey

# -- requests ------------------------------------------------------------------------------


class KeyCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "operator", "admin"]
    groups: list[str] | None = Field(None, description="scope the key to devices in these groups; omit for all")
    expires_in_days: int | None = Field(None, ge=1, le=3650)


# -- responses -----------------------------------------------------------------------------


class KeyOut(ResponseModel):
    id: str
    name: str
    role: str
    groups: list[str] | None
    created_at: dt.datetime
    created_by: str | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> KeyOut:
        return cls(id=k.id, name=k.name, role=k.role.value, groups=sorted(k.groups) if k.groups is not None else None,
                   created_at=k.created_at, created_by=k.created_by, expires_at=k.expires_at, revoked_at=k.revoked_at)


class KeyCreated(KeyOut):
    key: str = Field(description="the secret: shown only now; send it as 'X-API-Key' or 'Authorization: Bearer'")
