"""Signed download URLs: how a device, which has no API key, proves a deployment assigned it an image.

``sig`` = urlsafe base64 (no padding) of HMAC-SHA256(key, "{deployment_id}\\n{device_id}\\n{firmware_id}\\n{exp}"),
``exp`` = expiry in epoch seconds. The OTA job signs (in the notify it sends a device) and the API
verifies (``GET /v1/ota/download/{deployment_id}``), so both read one key: 32 random bytes in
``Settings.ota_url_key_path``, file 0600, made by whichever process needs it first. Pure Python
(hmac, secrets): the job imports it too.

An id holding a newline could make two different triples sign the same text, so ids with one are
refused (``sign``: ValueError; ``verify``: bad_signature).
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import threading
from hashlib import sha256
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode

KEY_BYTES = 32
DOWNLOAD_PREFIX = "/v1/ota/download/"

Code = Literal["expired", "bad_signature"]


class DownloadUrlError(ValueError):
    """A download URL that does not authorise the download; ``code`` is stable, the message is for people."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code: Code = code


class UrlKeyError(ValueError):
    """The key file cannot be used (wrong size, unreadable); the message names the file and what to do."""


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``, made first (32 random bytes, 0600, directory 0700) if absent.

    Made exclusively: a temporary file of our own (O_EXCL) is written whole, then linked into place,
    which fails if another process got there first; that loser reads the winner's key. So no reader
    ever sees a half-written key, and a crash leaves no empty key file behind.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # a racing creator won: use its key
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise UrlKeyError(f"OTA download URL key {path}: cannot read it ({exc})") from None
    if len(key) != KEY_BYTES:
        raise UrlKeyError(f"OTA download URL key {path}: {len(key)} bytes, expected {KEY_BYTES} raw random bytes; "
                          "remove it to have a new one made (outstanding download URLs then stop working)")
    return key


def _message(deployment_id: str, device_id: str, firmware_id: str, exp: int) -> bytes:
    return f"{deployment_id}\n{device_id}\n{firmware_id}\n{exp}".encode()


def _has_newline(*ids: str) -> bool:
    return any("\n" in i for i in ids)


def sign(key: bytes, deployment_id: str, device_id: str, firmware_id: str, exp: int) -> str:
    if _has_newline(deployment_id, device_id, firmware_id):
        raise ValueError("an id in a download URL must not contain a newline")
    mac = hmac.new(key, _message(deployment_id, device_id, firmware_id, exp), sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def download_path(key: bytes, deployment_id: str, device_id: str, firmware_id: str, now_s: float, ttl_s: int) -> str:
    """The path and query a device joins to its API base URL; valid ``ttl_s`` seconds from ``now_s``."""
    exp = int(now_s) + ttl_s
    query = urlencode({"device": device_id, "exp": exp, "sig": sign(key, deployment_id, device_id, firmware_id, exp)})
    return f"{DOWNLOAD_PREFIX}{quote(deployment_id, safe='')}?{query}"


def verify(key: bytes, deployment_id: str, device_id: str, firmware_id: str, exp: int, sig: str, now_s: float) -> None:
    """None when ``sig`` signs these and ``exp`` has not passed; DownloadUrlError otherwise.
    The signature is checked first: only a genuine URL is told it expired."""
    if _has_newline(deployment_id, device_id, firmware_id):
        raise DownloadUrlError("bad_signature", "the download URL's signature does not match")
    expected = sign(key, deployment_id, device_id, firmware_id, exp).encode()
    if not hmac.compare_digest(expected, sig.encode("utf-8", "replace")):
        raise DownloadUrlError("bad_signature", "the download URL's signature does not match "
                                                "(not for this deployment, device and firmware)")
    if now_s >= exp:
        raise DownloadUrlError("expired", f"the download URL expired at {exp} (epoch seconds); "
                                          "a new notification carries a fresh one")
