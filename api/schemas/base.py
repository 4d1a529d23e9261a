"""The two kinds of model, the error body, and what every paginated list has in common."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _encodable(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_encodable(v) for v in value)
    return True


class RequestModel(BaseModel):
    """Request bodies: unknown fields refused, and no text the store cannot hold."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self):
        # JSON may carry lone surrogates ("\ud800"); Cassandra's text type cannot store them.
        if not _encodable(self.__dict__):
            raise ValueError("text must be valid Unicode (no lone surrogates)")
        return self


class ResponseModel(BaseModel):
    """Response bodies."""


class ErrorOut(ResponseModel):
    """Every 4xx and 5xx except 422 (whose ``detail`` lists the invalid fields)."""

    detail: str = Field(description="what was wrong, for people")


# Every paginated list: ``limit`` and ``page_token`` in, ``items`` and ``next_page_token`` out.
NEXT_PAGE_TOKEN = "pass as page_token for the next page; null on the last page"
