"""The firmware store: upload a signed image, list and read the catalog (fleet/ota).

``POST /v1/firmware`` streams the raw body (``application/octet-stream``) from the socket into
the blob store in a worker thread, a chunk at a time (never the whole image in memory), up to
``firmware_max_image_bytes``: the route's own body limit, which api/errors.py's body_limit
enforces in place of ``api_max_body_bytes``, and the store again as it writes. The signing rule is
fleet/ota/signing.py's. Devices do not download here (yet): that is the OTA deployments' work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated, Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from api.deps import Firmware, Operator, Viewer
from api.errors import responses
from api.params import PAGE_TOKEN_DOC, checked, page_token_of
from api.schemas.base import ErrorOut
from api.schemas.firmware import FirmwareOut, FirmwarePage
from fleet.ota.catalog import FirmwareRecord, check_device_type, decode_cursor, encode_cursor, firmware_id_of
from fleet.ota.firmware import Upload

router = APIRouter(tags=["firmware"])

UPLOAD_PATH = "/v1/firmware"


def _out(record: FirmwareRecord) -> FirmwareOut:
    return FirmwareOut(**record.to_json())


def _chunks(request: Request) -> Iterator[bytes]:
    """The request body as a blocking iterator, for a worker thread: each chunk is awaited on the event loop."""
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk


UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(403, 503),
    200: {"model": FirmwareOut, "description": "The same image was uploaded for this device_type and version "
                                               "before: the existing record (idempotent)"},
    400: {"model": ErrorOut, "description": "Bad parameters (version, device_type, release_notes) or signature: "
                                            "not base64 of 64 bytes, a signer without a signature, an unknown "
                                            "signer, no vendor keys configured, or a signature that verifies "
                                            "against no configured vendor key"},
    409: {"model": ErrorOut, "description": "This device_type and version exist with another image"},
    413: {"model": ErrorOut, "description": "Image larger than firmware_max_image_bytes (default 1 GiB)"},
}


@router.post(UPLOAD_PATH, status_code=status.HTTP_201_CREATED, response_model=FirmwareOut, responses=UPLOAD_RESPONSES,
             summary="Upload a firmware image (raw body), signed by the platform or carrying a vendor signature",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_firmware(
    request: Request, principal: Operator, store: Firmware,
    version: Annotated[str, Query(description="unique per device_type; 1-64 letters, digits, '.', '_', '+', '~', '-'")],
    device_type: Annotated[str, Query(description="the registry's device type this image is for")],
    release_notes: Annotated[str, Query(description="free text, at most 4000 characters")] = "",
    signature: Annotated[str | None, Header(alias="X-Firmware-Signature",
                                            description="base64 Ed25519 signature of the image's raw 32-byte "
                                                        "SHA-256 digest by a configured vendor key; without it "
                                                        "the platform's firmware key signs")] = None,
    signer: Annotated[str | None, Header(alias="X-Firmware-Signer",
                                         description="the vendor key id that signed (optional: else every "
                                                     "configured vendor key is tried)")] = None,
) -> Any:
    """201 and the record; 200 and the existing record when this image was uploaded for the same
    device_type and version before. The body is the image itself, streamed; parameters and
    signature headers are checked before it is read, the signature once its digest is known, and
    a refused image leaves nothing in the store."""
    upload = Upload(version, device_type, release_notes, signature, signer)
    store.check(upload)  # 400 before a byte of the body is read
    request.state.audit_target = firmware_id_of(device_type, version)
    request.state.audit_detail = {"device_type": device_type, "version": version,
                                  "vendor_signed": signature is not None}
    chunks = _chunks(request)
    record, created = await anyio.to_thread.run_sync(
        lambda: store.upload(upload, chunks, created_by=principal.name))
    request.state.audit_detail.update(sha256=record.sha256, size=record.size, signer=record.signer, created=created)
    return JSONResponse(_out(record).model_dump(), status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
                        headers={"Location": f"{UPLOAD_PATH}/{record.firmware_id}"})


@router.get(UPLOAD_PATH, response_model=FirmwarePage, responses=responses(400, 503),
            summary="List firmware images, of one device type or all")
def list_firmware(principal: Viewer, store: Firmware,
                  device_type: Annotated[str | None, Query(description="only this device type, in version order"),
                                         checked(check_device_type)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  page_token: Annotated[str | None, Query(description=PAGE_TOKEN_DOC),
                                        checked(page_token_of(decode_cursor))] = None) -> FirmwarePage:
    records, after = store.catalog.list(device_type=device_type, limit=limit, after=decode_cursor(page_token))
    return FirmwarePage(items=[_out(r) for r in records], next_page_token=encode_cursor(after) if after else None)


@router.get(UPLOAD_PATH + "/{firmware_id}", response_model=FirmwareOut, responses=responses(404, 503),
            summary="A firmware image's record: version, device type, sha256, size, signature, signer")
async def get_firmware(firmware_id: str, principal: Viewer, store: Firmware) -> FirmwareOut:
    record = await asyncio.to_thread(store.get, firmware_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"firmware {firmware_id!r} not found")
    return _out(record)
