"""The errors of the firmware store and of OTA deployments; ``code`` maps to an HTTP status (api/errors.py)."""

from __future__ import annotations

from typing import Literal

Code = Literal["bad_request", "not_found", "conflict", "too_large"]


class FirmwareError(ValueError):
    """A firmware rule was broken; the message is for people."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code: Code = code


class DeploymentError(FirmwareError):
    """A deployment rule was broken (fleet/ota/deployments.py): the same codes, answered the same way."""
