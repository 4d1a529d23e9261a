"""/v1/audit: the audit log of mutating calls (unscoped admins)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from api.deps import Audit, UnscopedAdmin

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AuditEntry(BaseModel):
    id: str
    ts: dt.datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: dict


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_before: str | None = None


@router.get("", response_model=AuditPage, summary="Audit records of one UTC day, newest first")
def list_audit(
    principal: UnscopedAdmin, audit: Audit,
    day: Annotated[str | None, Query(description="YYYY-MM-DD (UTC); default today")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(description="next_before of the previous page")] = None,
) -> AuditPage:
    day = day or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    try:
        if not _DAY.match(day):
            raise ValueError
        dt.date.fromisoformat(day)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"day {day!r} is not a date like 2024-05-31") from None
    if before is not None:
        try:
            if uuid.UUID(before).version != 1:
                raise ValueError
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid 'before': pass back next_before") from None
    records = audit.list(day, limit, before)
    return AuditPage(items=[AuditEntry(**r.__dict__) for r in records],
                     next_before=records[-1].id if len(records) == limit else None)
