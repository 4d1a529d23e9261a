"""/v1/audit bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, ResponseModel


class AuditEntry(ResponseModel):
    id: str
    ts: dt.datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: dict


class AuditPage(ResponseModel):
    items: list[AuditEntry]
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)
