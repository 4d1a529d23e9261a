"""Ranged, resumable firmware download over HTTP(S), hashing as the bytes arrive.

``fetch`` brings a partial file up to the image's size: it asks for ``Range: bytes=<what is on
disk>-``, so an interrupted download (a dropped connection, a reboot, a failed attempt the
platform retries) continues where it stopped instead of starting over. The bytes already on disk
are hashed first, then every byte as it arrives, so the SHA-256 of the whole image is ready when
the last byte is. A server that ignores the range (200) starts the file over; a 206 for another
offset than asked is refused. More bytes than the notify's ``size`` means it is not the image we
were told of (``Oversize``: the caller refuses it for good).

No proxy from the environment: a device talks to its platform directly.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError, URLError

CHUNK_BYTES = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(Exception):
    """The download did not complete; ``retryable``: trying again (resuming) may help."""

    def __init__(self, message: str, *, retryable: bool = True, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class Oversize(DownloadError):
    """The server sent more bytes than the image has: not the image the notify described."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class Interrupted(Exception):
    """``stop`` was set (cancel or shutdown); the partial file stays as it is."""


def make_opener(ssl_context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=ssl_context))


def hash_file(path: Path, hasher: hashlib._Hash, limit: int) -> int:
    """Feed up to ``limit`` bytes of ``path`` into ``hasher``; returns how many (0 if no file)."""
    done = 0
    try:
        with open(path, "rb") as fh:
            while done < limit and (block := fh.read(min(CHUNK_BYTES * 16, limit - done))):
                hasher.update(block)
                done += len(block)
    except FileNotFoundError:
        return 0
    return done


def fetch(url: str, part: Path, size: int, *, opener: urllib.request.OpenerDirector | None = None,
          timeout: float = 30.0, stop: threading.Event | None = None,
          progress: Callable[[int], None] | None = None, rate: float | None = None,
          tamper: Callable[[int, bytearray], None] | None = None, fail_at: int | None = None) -> bytes:
    """Complete ``part`` to ``size`` bytes from ``url``; returns the SHA-256 digest of the whole file.

    ``progress(bytes on disk)`` after every chunk; ``rate`` caps bytes per second; ``tamper(offset,
    chunk)`` may change a chunk before it is written and hashed, ``fail_at`` breaks the download off
    (non-retryable) once that many bytes are on disk (both: failure injection). Raises DownloadError,
    Oversize, Interrupted."""
    stop = stop or threading.Event()
    part.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not ours any more (a different image under the same name): start over
        have = 0
        part.write_bytes(b"")
    offset = hash_file(part, hasher, have)
    if offset == size:
        return hasher.digest()
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = (opener or make_opener()).open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            part.write_bytes(b"")  # the server says our partial file does not fit its image: start over
            raise DownloadError("range not satisfiable; starting the file over", status=416) from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", status=exc.code,
                            retryable=exc.code >= 500 or exc.code in (408, 429)) from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot reach {url.split('?', 1)[0]}: {exc}") from None
    with resp:
        if resp.status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(f"206 for another range than bytes={offset}-: "
                                    f"{resp.headers.get('Content-Range')!r}", status=206)
        elif resp.status == 200:
            if offset:  # the server ignored the range: the body is the whole image
                offset, hasher = 0, hashlib.sha256()
        else:
            raise DownloadError(f"unexpected HTTP {resp.status}", status=resp.status)
        return _receive(resp, part, offset, size, hasher, stop=stop, progress=progress, rate=rate,
                        tamper=tamper, fail_at=fail_at)


def _receive(resp, part: Path, offset: int, size: int, hasher: hashlib._Hash, *, stop: threading.Event,
             progress: Callable[[int], None] | None, rate: float | None,
             tamper: Callable[[int, bytearray], None] | None, fail_at: int | None) -> bytes:
    chunk = CHUNK_BYTES if rate is None else max(1024, min(CHUNK_BYTES, int(rate / 4)))
    started, got = time.monotonic(), 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        while True:
            if stop.is_set():
                raise Interrupted()
            try:
                data = resp.read(chunk)
            except (OSError, ValueError, http.client.HTTPException) as exc:  # timeout, reset, truncated body
                raise DownloadError(f"connection broke at {offset} of {size} bytes: {exc}") from None
            if not data:
                break
            if offset + len(data) > size:
                raise Oversize(f"the server sent more than the image's {size} bytes")
            if tamper is not None:
                buf = bytearray(data)
                tamper(offset, buf)
                data = bytes(buf)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            hasher.update(data)
            offset += len(data)
            got += len(data)
            if progress is not None:
                progress(offset)
            if fail_at is not None and offset >= fail_at and offset < size:
                raise DownloadError(f"download broken off at {offset} of {size} bytes (injected)", retryable=False)
            if rate is not None:
                ahead = got / rate - (time.monotonic() - started)
                if ahead > 0 and stop.wait(ahead):
                    raise Interrupted()
    finally:
        os.close(fd)
    if offset < size:
        raise DownloadError(f"connection closed at {offset} of {size} bytes")
    return hasher.digest()
