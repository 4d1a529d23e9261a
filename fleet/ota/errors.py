"""The one error of the firmware store; ``code`` maps to an HTTP status (api/errors.py)."""

from __future__ import annotations

from typing import Literal

Code = Literal["bad_request", "not_found", "conflict", "too_large"]


class FirmwareError(ValueError):
    """A firmware rule was broken; the message is for people."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code: Code = code
