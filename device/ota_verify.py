"""The checks a device makes before it installs an image (docs/device-contract.md, "Firmware images").

1. SHA-256 of the whole file (hashed as it arrived) equals the notify's ``sha256``, its length ``size``;
2. Ed25519 over the **32 raw bytes** of that digest verifies with the trusted key whose id is
   ``signer`` (key id: fleet/ota/signing.py ``key_id``; all trusted keys when no signer is named).

The trusted keys are PEM files shipped with the firmware (the platform's ``firmware-signing.key.pub``
and vendor keys); they are read when an image is checked, so a key file that appears later (the
platform makes its key on the first upload) is picked up.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet.ota.signing import SIGNATURE_BYTES, key_id, verify

log = logging.getLogger(__name__)

# REJECTED errors (the device refuses the image for good).
TAMPERED = "tampered"                # sha256 or size differ from the notify's
BAD_SIGNATURE = "bad_signature"      # no valid Ed25519 signature over the digest
UNKNOWN_SIGNER = "unknown_signer"    # signed by a key the device does not trust


class NoTrustedKeys(Exception):
    """No trusted key file could be read: a device configuration problem, not the image's."""


def load_trusted_keys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key for every readable Ed25519 PEM among ``paths`` (others are logged)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("trusted firmware key %s: cannot read a PEM public key (%s)", path, exc)
            continue
        if not isinstance(key, Ed25519PublicKey):
            log.warning("trusted firmware key %s: not an Ed25519 public key", path)
            continue
        keys[key_id(key)] = key
    return keys


def check_image(digest: bytes, size_on_disk: int, *, sha256: str, size: int, signature: str, signer: str | None,
                keys: dict[str, Ed25519PublicKey], flip_signature: bool = False) -> str | None:
    """None if the image may be installed, else the REJECTED error. Raises NoTrustedKeys."""
    if size_on_disk != size or digest.hex() != sha256.lower():
        return TAMPERED
    if not keys:
        raise NoTrustedKeys("no trusted firmware key could be read")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return BAD_SIGNATURE
    if len(raw) != SIGNATURE_BYTES:
        return BAD_SIGNATURE
    if flip_signature:  # failure injection: what a corrupted signature would look like
        raw = bytes([raw[0] ^ 0x01]) + raw[1:]
    if signer is not None:
        key = keys.get(signer)
        if key is None:
            return UNKNOWN_SIGNER
        candidates = [key]
    else:
        candidates = list(keys.values())
    return None if any(verify(k, digest, raw) for k in candidates) else BAD_SIGNATURE
