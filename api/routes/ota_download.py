"""A device downloads its deployment's firmware image: ``GET /v1/ota/download/{deployment_id}?device=&exp=&sig=``.

No API key (a device has none): the signed query is the credential (fleet/ota/download_urls.py),
and fleet/ota/download.py's gate decides: 404 for an unknown deployment, 403 for a bad or expired
signature, or when the deployment has no running execution for the device ("not assigned").
The image is streamed from the blob store a chunk at a time (READ_CHUNK, never whole in memory).

Ranges, so an interrupted download resumes: one range is a 206 with Content-Range; a range past
the end a 416 with ``Content-Range: bytes */<size>``; several ranges, another unit, or a malformed
header are ignored (200, the whole image). ``ETag`` is the image's quoted sha256; ``If-Range``
with another value (or a date) also means the whole image.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from prometheus_client import Counter

from api.deps import SettingsDep, StoresDep
from api.schemas.base import ErrorOut
from api.stores import Stores
from fleet.infra.cassandra import StoreUnavailable
from fleet.ota import download_urls
from fleet.ota.download import (
    CassandraAssignments,
    DownloadGate,
    DownloadRefused,
    RangeNotSatisfiable,
    byte_range,
    etag_of,
    if_range_allows,
)
from fleet.ota.errors import FirmwareError
from fleet.ota.store import BlobStore, FilesystemBlobStore

router = APIRouter(tags=["ota"])

DOWNLOAD_PATH = download_urls.DOWNLOAD_PREFIX + "{deployment_id}"

DOWNLOADS = Counter("fleet_api_ota_downloads_total",
                    "Firmware download requests by HTTP status (200 whole, 206 range, 403 refused, 416, ...)",
                    ["status"])
DOWNLOAD_BYTES = Counter("fleet_api_ota_download_bytes_total", "Firmware image bytes sent to devices")
DOWNLOADS_COMPLETED = Counter("fleet_api_ota_downloads_completed_total",
                              "Firmware download responses whose body was sent to the end (not cut off)")

_REFUSED_STATUS = {"not_found": status.HTTP_404_NOT_FOUND, "expired": status.HTTP_403_FORBIDDEN,
                   "bad_signature": status.HTTP_403_FORBIDDEN, "not_assigned": status.HTTP_403_FORBIDDEN}

# --- dependencies (tests replace them with app.dependency_overrides) -------------------------------

_gates: weakref.WeakKeyDictionary[Stores, DownloadGate] = weakref.WeakKeyDictionary()
_gates_lock = threading.Lock()


def get_download_gate(stores: StoresDep, settings: SettingsDep) -> DownloadGate:
    """One gate per app's stores: the URL key (made on first use) and the OTA tables. Nothing is kept
    when making it fails (Cassandra down: 503, retried by the next request)."""
    gate = _gates.get(stores)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(stores)
            if gate is None:
                try:
                    key = download_urls.load_or_create_key(settings.ota_url_key_path)
                except download_urls.UrlKeyError as exc:
                    raise _refused(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
                try:
                    assignments = CassandraAssignments(stores.session())
                except StoreUnavailable as exc:
                    raise _refused(status.HTTP_503_SERVICE_UNAVAILABLE, f"the OTA store is unavailable: {exc}") from None
                gate = _gates[stores] = DownloadGate(key, assignments, assignments.record)
    return gate


def get_download_blobs(settings: SettingsDep) -> BlobStore:
    return FilesystemBlobStore(settings.firmware_path)


Gate = Annotated[DownloadGate, Depends(get_download_gate)]
Blobs = Annotated[BlobStore, Depends(get_download_blobs)]

# --- the route -------------------------------------------------------------------------------------


def _refused(code: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    DOWNLOADS.labels(str(code)).inc()
    return HTTPException(code, detail, headers=headers)


def _counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        for chunk in chunks:
            DOWNLOAD_BYTES.inc(len(chunk))
            yield chunk
        DOWNLOADS_COMPLETED.inc()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the file, at once, when the device hangs up


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": _BINARY, "description": "The whole image (no Range, or one not served: several ranges, "
                                             "another unit, malformed, or an If-Range that does not match)"},
    206: {"content": _BINARY, "description": "The one range asked for, with Content-Range"},
    403: {"model": ErrorOut, "description": "The signature does not match (deployment, device, firmware, exp), "
                                            "the URL expired, or the device has no running execution in this "
                                            "deployment (not assigned: never released, finished or canceled)"},
    404: {"model": ErrorOut, "description": "No such deployment (or its firmware record is gone)"},
    416: {"model": ErrorOut, "description": "The range starts past the end of the image; Content-Range: bytes */<size>"},
    503: {"model": ErrorOut, "description": "Cassandra, the firmware store or the URL key file is unavailable; "
                                            "the message says which (retry later)"},
}


@router.get(DOWNLOAD_PATH, response_class=StreamingResponse, responses=DOWNLOAD_RESPONSES,
            summary="A device downloads its deployment's firmware image (signed URL from its notification; Range)")
def download_firmware(
    deployment_id: str, gate: Gate, blobs: Blobs,
    device: Annotated[str, Query(description="the device id the URL was signed for")],
    exp: Annotated[int, Query(description="expiry, epoch seconds")],
    sig: Annotated[str, Query(description="the URL's signature (fleet/ota/download_urls.py)")],
    range_header: Annotated[str | None, Header(alias="Range", description="bytes=a-b, bytes=a- or bytes=-n")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range", description="the ETag the device has part of")] = None,
) -> StreamingResponse:
    """The image of the deployment's firmware, whole (200) or one range (206). The URL comes in the
    device's ``ota/notify`` message, relative to the API's base URL; its signature binds deployment,
    device and firmware and expires after ota_url_ttl_s."""
    try:
        record = gate.authorise(deployment_id, device, exp, sig)
    except DownloadRefused as exc:
        raise _refused(_REFUSED_STATUS[exc.code], str(exc)) from None
    except StoreUnavailable as exc:
        raise _refused(status.HTTP_503_SERVICE_UNAVAILABLE, f"the OTA store is unavailable: {exc}") from None
    size, etag = record.size, etag_of(record.sha256)
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    try:
        wanted = byte_range(range_header, size) if if_range_allows(if_range, etag) else None
    except RangeNotSatisfiable as exc:
        raise _refused(status.HTTP_416_RANGE_NOT_SATISFIABLE, str(exc),
                       {**headers, "Content-Range": f"bytes */{size}"}) from None
    start, end = (wanted.start, wanted.end) if wanted is not None else (0, size)
    try:
        chunks = blobs.open_range(record.sha256, start, end)
    except (FirmwareError, OSError) as exc:  # the record is there but its image is not: the operator's to fix
        raise _refused(status.HTTP_503_SERVICE_UNAVAILABLE,
                       f"the firmware store cannot read image {record.sha256}: {exc}") from None
    headers["Content-Length"] = str(end - start)
    code = status.HTTP_200_OK
    if wanted is not None:
        headers["Content-Range"] = wanted.content_range(size)
        code = status.HTTP_206_PARTIAL_CONTENT
    DOWNLOADS.labels(str(code)).inc()
    return StreamingResponse(_counted(chunks), status_code=code, headers=headers, media_type="application/octet-stream")
