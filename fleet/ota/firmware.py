"""An upload: check the parameters, stream the image into the blob store, sign or verify its
digest, record it in the catalog.

Order matters. The parameters and an existing record of the same (device_type, version) are read
before the body; the signature is decided once the digest is known but before the blob takes its
name (``BlobStore.put``'s ``accept``), so a refused image leaves nothing behind. A re-upload of
the same image answers the existing record (``created`` False) and signs nothing again.

Left behind on purpose: a blob whose catalog write failed (Cassandra down, or a concurrent upload
of the same pair with another image won): blobs are content-addressed, so a retry reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fleet.ota.catalog import (
    Catalog,
    FirmwareRecord,
    check_device_type,
    check_release_notes,
    check_version,
    firmware_id_of,
    now_ms,
    settle,
)
from fleet.ota.signing import FirmwareKeys, Signed, decode_signature
from fleet.ota.store import Blob, BlobStore


@dataclass(frozen=True)
class Upload:
    version: str
    device_type: str
    release_notes: str = ""
    signature: str | None = None  # X-Firmware-Signature: base64 Ed25519 over the raw SHA-256 digest
    signer: str | None = None  # X-Firmware-Signer: a vendor key id


class FirmwareStore:
    def __init__(self, blobs: BlobStore, catalog: Catalog, keys: FirmwareKeys, *, max_bytes: int,
                 clock: Callable[[], int] = now_ms):
        self.blobs = blobs
        self.catalog = catalog
        self.keys = keys
        self.max_bytes = max_bytes
        self.clock = clock

    def check(self, upload: Upload) -> bytes | None:
        """FirmwareError (400) for bad parameters, before any byte of the body is read; the signature's bytes."""
        check_device_type(upload.device_type)
        check_version(upload.version)
        check_release_notes(upload.release_notes)
        return decode_signature(upload.signature) if upload.signature is not None else None

    def upload(self, upload: Upload, chunks: Iterable[bytes], *, created_by: str) -> tuple[FirmwareRecord, bool]:
        """The record and whether it is new. FirmwareError: bad_request (parameters, signature),
        conflict (the pair exists with another image), too_large (over ``max_bytes``)."""
        signature = self.check(upload)
        firmware_id = firmware_id_of(upload.device_type, upload.version)
        existing = self.catalog.get(firmware_id)
        signed: list[Signed] = []

        def accept(blob: Blob) -> None:
            if existing is not None:
                settle(existing, blob.sha256)
                if signature is None:
                    return  # the same image: nothing to sign again
            signed.append(self.keys.sign_or_verify(bytes.fromhex(blob.sha256), signature, upload.signer))

        blob = self.blobs.put(chunks, max_bytes=self.max_bytes, accept=accept)
        if existing is not None:
            return existing, False
        record = FirmwareRecord(firmware_id, upload.device_type, upload.version, blob.sha256, blob.size,
                                signed[0].signature, signed[0].signer, upload.release_notes, self.clock(), created_by)
        return self.catalog.create(record)

    def get(self, firmware_id: str) -> FirmwareRecord | None:
        return self.catalog.get(firmware_id)
