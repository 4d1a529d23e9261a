"""Firmware signatures: Ed25519 over the image's SHA-256 digest.

**What is signed**: the 32 raw bytes of ``SHA-256(image)`` (the binary digest, not its hex
text), as a plain Ed25519 message (RFC 8032, no pre-hash mode, no context). A device verifies
with any Ed25519 library: ``verify(public_key, signature=64 bytes, message=sha256(image).digest())``.
A vendor signs the same way, e.g. with OpenSSL 3::

    openssl dgst -sha256 -binary image.bin > image.sha256
    openssl pkeyutl -sign -rawin -inkey vendor.key -in image.sha256 -out image.sig

**Key ids**: the first 16 hex characters of SHA-256 of the key's 32 raw public bytes, the same
for the platform key and vendor keys, so a device can match a record's ``signer`` to a key it holds.

**The rule** (``FirmwareKeys.sign_or_verify``):

- no vendor signature supplied: the platform's firmware key signs the digest; signer = its id;
- a vendor signature supplied: it must verify against one of the configured vendor public keys
  (against that key alone when the signer's key id is given too); signer = that key's id. One that
  verifies against none is refused (the platform does not sign it instead), and so is a signature
  when no vendor key is configured, or a signer id without a signature.

Vendor keys are a list of PEM files, so a vendor rotates by adding the new key, uploading with it,
and removing the old one once nothing signed by it is still rolled out. The platform key is made
on first use (PKCS#8 PEM, file 0600, directory 0700, as the CA keys); its public half is written
beside it (``<key>.pub``) for devices to carry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet.identity.pki import write_private
from fleet.ota.errors import FirmwareError

SIGNATURE_BYTES = 64
DIGEST_BYTES = 32


class KeyFileError(ValueError):
    """A configured key file that cannot be used; the message names the file."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(private_key: Ed25519PrivateKey, digest: bytes) -> bytes:
    """The Ed25519 signature of the 32-byte SHA-256 digest of an image."""
    _check_digest(digest)
    return private_key.sign(digest)


def verify(public_key: Ed25519PublicKey, digest: bytes, signature: bytes) -> bool:
    _check_digest(digest)
    try:
        public_key.verify(signature, digest)
    except InvalidSignature:
        return False
    return True


def _check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a SHA-256 digest is {DIGEST_BYTES} bytes, got {len(digest)}")


def decode_signature(text: str) -> bytes:
    """The signature of an ``X-Firmware-Signature`` header (standard base64 of 64 bytes)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise FirmwareError("bad_request", "X-Firmware-Signature is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise FirmwareError("bad_request",
                            f"X-Firmware-Signature must be a {SIGNATURE_BYTES}-byte Ed25519 signature, got {len(raw)} bytes")
    return raw


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"firmware vendor key {path}: cannot read a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"firmware vendor key {path}: not an Ed25519 public key")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, made first if absent. Two processes making it at once agree on one:
    each writes its own temporary file and links it into place, and the loser reads the winner's."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        write_private(tmp, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"platform firmware key {path}: cannot read a PEM private key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"platform firmware key {path}: not an Ed25519 private key")
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():
        pub.write_bytes(public_pem(loaded.public_key()))
    return loaded


@dataclass(frozen=True)
class Signed:
    signature: bytes
    signer: str  # the key id that signed (platform or vendor)


class FirmwareKeys:
    """The platform's firmware key (loaded, or made, on first use) and the vendors' public keys."""

    def __init__(self, platform_key_path: Path, vendor_keys: Iterable[Ed25519PublicKey] = ()):
        self.platform_key_path = platform_key_path
        self.vendors: dict[str, Ed25519PublicKey] = {key_id(k): k for k in vendor_keys}
        self._platform: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, platform_key_path: Path, vendor_key_paths: Iterable[Path]) -> FirmwareKeys:
        return cls(platform_key_path, [load_public_key(p) for p in vendor_key_paths])

    @property
    def platform(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._platform is None:
                self._platform = load_or_create_private_key(self.platform_key_path)
            return self._platform

    @property
    def platform_key_id(self) -> str:
        return key_id(self.platform.public_key())

    def sign_or_verify(self, digest: bytes, signature: bytes | None = None, signer: str | None = None) -> Signed:
        """The image's signature under the rule in the module's docstring; FirmwareError (400) if refused."""
        if signature is None:
            if signer is not None:
                raise FirmwareError("bad_request", "X-Firmware-Signer given without X-Firmware-Signature")
            return Signed(sign(self.platform, digest), self.platform_key_id)
        if not self.vendors:
            raise FirmwareError("bad_request", "a vendor signature was supplied but no vendor keys are configured "
                                               "(firmware_vendor_keys); upload without one to have the platform sign")
        if signer is not None and signer not in self.vendors:
            raise FirmwareError("bad_request", f"unknown vendor key id {signer!r}; configured: "
                                               f"{', '.join(sorted(self.vendors))}")
        candidates = [signer] if signer is not None else sorted(self.vendors)
        for kid in candidates:
            if verify(self.vendors[kid], digest, signature):
                return Signed(signature, kid)
        which = f"vendor key {signer}" if signer is not None else "any configured vendor key"
        raise FirmwareError("bad_request", f"the vendor signature does not verify against {which} "
                                           "(it must sign the image's raw 32-byte SHA-256 digest)")
