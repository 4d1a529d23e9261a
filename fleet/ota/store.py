"""Firmware images as content-addressed blobs: a ``BlobStore`` protocol and its filesystem form.

An object store (S3, GCS) can implement the protocol the same way: write under a temporary name,
check, then move to the digest's name. The filesystem layout is ``<root>/sha256/ab/abcdef...``
(the first two hex characters fan the directory out); ``<root>/tmp`` holds uploads in progress.
An image is written to a temporary file while its SHA-256 and size are counted, fsynced and renamed
into place atomically, so a reader never sees a partial image under a digest's name. The size limit
is enforced as the chunks arrive (nothing is buffered whole); on any failure the partial file is
removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fleet.infra.durable import fsync_path
from fleet.ota.errors import FirmwareError

READ_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Blob:
    sha256: str  # hex, lower case
    size: int


# Called with the finished blob before it takes its name; raising refuses it (nothing is kept).
Accept = Callable[[Blob], None]


class BlobStore(Protocol):
    def put(self, chunks: Iterable[bytes], *, max_bytes: int, accept: Accept | None = None) -> Blob:
        """Store the bytes of ``chunks``; FirmwareError("too_large") once they exceed ``max_bytes``."""
        ...

    def open_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The blob's bytes ``start`` .. ``end`` (exclusive; None: to the end), in chunks."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool:
        """Remove the blob; whether there was one."""
        ...


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise FirmwareError("bad_request", f"not a SHA-256 hex digest: {sha256[:80]!r}")
    return sha256


class FilesystemBlobStore:
    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, chunks: Iterable[bytes], *, max_bytes: int, accept: Accept | None = None) -> Blob:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"  # unique: identical uploads at once never share one
        try:
            with open(tmp, "wb") as fh:
                blob = _copy(chunks, fh, max_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            if accept is not None:
                accept(blob)
            final = self.path(blob.sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            # Same name, same bytes: an identical upload that got here first is as good as ours.
            os.replace(tmp, final)
            fsync_path(final.parent)
            return blob
        finally:
            tmp.unlink(missing_ok=True)

    def open_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self.path(sha256)
        if not path.exists():
            raise FirmwareError("not_found", f"no blob {sha256}")
        size = path.stat().st_size
        end = size if end is None else min(end, size)
        if start < 0 or start > end:
            raise FirmwareError("bad_request", f"range {start}-{end} outside the blob's {size} bytes")
        return _read(path, start, end)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True


def _copy(chunks: Iterable[bytes], fh: BinaryIO, max_bytes: int) -> Blob:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise FirmwareError("too_large", f"firmware image larger than {max_bytes} bytes")
        digest.update(chunk)
        fh.write(chunk)
    return Blob(digest.hexdigest(), size)


def _read(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


