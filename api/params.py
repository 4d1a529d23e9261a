"""Query parameters checked where they are declared.

    limit: Annotated[int, Query(ge=1, le=1000), checked(check_limit)] = 100

``Query(...)`` first, then ``checked(...)``: the Query's bounds and pattern stay in OpenAPI, and
the check runs on the raw value before them. A client error the check raises (``RegistryError``,
``QueryError``, ``api.errors.BadRequest``) answers 400 with its message, as it would from the
route (see api/errors.py); anything else wrong with the value is FastAPI's 422.

Every paginated list takes ``limit`` and ``page_token`` and answers ``items`` and
``next_page_token`` (null on the last page): pass it back as ``page_token`` for the next page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BeforeValidator

from api.errors import BadRequest

PAGE_TOKEN_DOC = "next_page_token of the previous page"
INVALID_PAGE_TOKEN = "'page_token' is not a token this API issued"


def checked(check: Callable[[Any], object]) -> BeforeValidator:
    """Run ``check`` on the raw query value (an absent one is not checked); the value is kept."""
    def validate(value: Any) -> Any:
        if value is not None:
            check(value)
        return value

    return BeforeValidator(validate)


def as_int(check: Callable[[int], object]) -> Callable[[Any], None]:
    """``check`` on a value that parses as an integer; one that does not is left to FastAPI (422)."""
    def run(value: Any) -> None:
        try:
            number = int(value)
        except (TypeError, ValueError):
            return
        check(number)

    return run


def page_token_of(decode: Callable[[str], object]) -> Callable[[str], None]:
    """A page-token check: anything ``decode`` refuses is the one message every list gives."""
    def run(token: str) -> None:
        try:
            decode(token)
        except ValueError:
            raise BadRequest(INVALID_PAGE_TOKEN) from None

    return run
