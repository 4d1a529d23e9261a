"""/v1/audit: the audit log of mutating calls (unscoped admins)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Audit, UnscopedAdmin
from api.errors import BadRequest, responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.audit import AuditEntry, AuditPage

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _check_day(day: str) -> None:
    if not day:  # empty: today, like no day at all
        return
    try:
        if not _DAY.match(day):
            raise ValueError
        dt.date.fromisoformat(day)
    except ValueError:
        raise BadRequest(f"day {day!r} is not a date like 2024-05-31") from None


def _record_id(token: str) -> uuid.UUID:
    # The page token is the last record's id: a time-based UUID.
    record_id = uuid.UUID(token)
    if record_id.version != 1:
        raise ValueError(token)
    return record_id


@router.get("", response_model=AuditPage, summary="Audit records of one UTC day, newest first",
            responses=responses(400, 403))
def list_audit(
    principal: UnscopedAdmin, audit: Audit,
    day: Annotated[str | None, Query(description="YYYY-MM-DD (UTC); default today", json_schema_extra={"format": "date"}),
                   checked(_check_day)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC), checked(page_token_of(_record_id))] = None,
) -> AuditPage:
    day = day or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    records = audit.list(day, limit, page_token)
    return AuditPage(items=[AuditEntry(**r.__dict__) for r in records],
                     next_page_token=records[-1].id if len(records) == limit else None)
