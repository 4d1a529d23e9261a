"""The page token of the lists that page by a key (``{"after": <key>}``, URL-safe base64, no
padding): the registry's devices, the firmware catalog, OTA deployments and executions. Each
caller checks the key it gets back against its own rules."""

from __future__ import annotations

import base64
import json


def encode_after(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_after(cursor: str) -> str:
    """The key a token carries; ValueError for anything ``encode_after`` did not make."""
    try:
        after = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))["after"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a page token") from None
    if not isinstance(after, str):
        raise ValueError("not a page token")
    return after
