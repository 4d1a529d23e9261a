"""/v1/firmware bodies: a firmware image's catalog record (fleet/ota/catalog.py)."""

from __future__ import annotations

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, ResponseModel


class FirmwareOut(ResponseModel):
    firmware_id: str = Field(description="derived from (device_type, version), which are unique together")
    device_type: str
    version: str
    sha256: str = Field(description="hex SHA-256 of the image; the blob's name in the store")
    size: int = Field(description="bytes")
    signature: str = Field(description="base64 Ed25519 signature of the image's raw 32-byte SHA-256 digest")
    signer: str = Field(description="id of the key that signed: the platform's firmware key or a vendor key "
                                    "(first 16 hex of SHA-256 of its raw public key)")
    release_notes: str
    created_at: int = Field(description="epoch ms")
    created_by: str = Field(description="the API key's name that uploaded it")


class FirmwarePage(ResponseModel):
    items: list[FirmwareOut] = Field(description="by device type: in version (text) order; else in storage order")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)
