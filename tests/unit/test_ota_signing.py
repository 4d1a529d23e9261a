"""Firmware signatures (fleet/ota/signing.py): what is signed, the platform key, vendor keys and rotation."""

from __future__ import annotations

import base64
import hashlib
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.ota import signing
from fleet.ota.errors import FirmwareError
from fleet.ota.signing import FirmwareKeys, KeyFileError

IMAGE = b"firmware image bytes" * 100
DIGEST = hashlib.sha256(IMAGE).digest()


def pem_file(tmp_path, key: Ed25519PrivateKey, name: str):
    path = tmp_path / f"{name}.pem"
    path.write_bytes(signing.public_pem(key.public_key()))
    return path


def test_the_signature_is_plain_ed25519_over_the_raw_digest():
    key = Ed25519PrivateKey.generate()
    sig = signing.sign(key, DIGEST)
    key.public_key().verify(sig, hashlib.sha256(IMAGE).digest())  # what a device does; raises if not
    assert signing.verify(key.public_key(), DIGEST, sig)
    assert not signing.verify(key.public_key(), hashlib.sha256(IMAGE + b"x").digest(), sig)  # tampered image
    with pytest.raises(ValueError, match="32 bytes"):
        signing.sign(key, hashlib.sha256(IMAGE).hexdigest().encode())  # the hex text is not what is signed


def test_the_platform_key_is_made_once_0600_with_its_public_half_beside_it(tmp_path):
    path = tmp_path / "pki" / "firmware-signing.key"
    keys = FirmwareKeys(path)
    signed = keys.sign_or_verify(DIGEST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert signed.signer == keys.platform_key_id == signing.key_id(keys.platform.public_key())
    public = signing.load_public_key(path.with_name(path.name + ".pub"))
    assert signing.verify(public, DIGEST, signed.signature)
    again = FirmwareKeys(path)  # another process: the same key, not a new one
    assert again.platform_key_id == keys.platform_key_id
    assert not list(path.parent.glob("*.tmp"))


def test_a_key_file_that_is_not_ed25519_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "vendor.pem"
    bad.write_text("not a key")
    with pytest.raises(KeyFileError, match="vendor.pem"):
        FirmwareKeys.from_files(tmp_path / "k", [bad])


def test_vendor_signatures_verify_against_any_configured_key_so_keys_can_rotate(tmp_path):
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = FirmwareKeys.from_files(tmp_path / "k", [pem_file(tmp_path, old, "old"), pem_file(tmp_path, new, "new")])
    for key in (old, new):
        sig = signing.sign(key, DIGEST)
        assert keys.sign_or_verify(DIGEST, sig) == signing.Signed(sig, signing.key_id(key.public_key()))
        assert keys.sign_or_verify(DIGEST, sig, signing.key_id(key.public_key())).signer == \
            signing.key_id(key.public_key())
    assert not (tmp_path / "k").exists()  # vendor-signed images never need the platform key
    # The old key is removed from the configuration: what it signs is refused from then on.
    rotated = FirmwareKeys.from_files(tmp_path / "k", [pem_file(tmp_path, new, "new")])
    with pytest.raises(FirmwareError, match="does not verify against any configured vendor key"):
        rotated.sign_or_verify(DIGEST, signing.sign(old, DIGEST))


def test_a_wrong_key_a_tampered_digest_or_the_wrong_signer_is_refused(tmp_path):
    vendor, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    keys = FirmwareKeys.from_files(tmp_path / "k", [pem_file(tmp_path, vendor, "v"), pem_file(tmp_path, other, "o")])
    cases = [
        (signing.sign(stranger, DIGEST), None, "any configured vendor key"),
        (signing.sign(vendor, hashlib.sha256(b"tampered").digest()), None, "any configured vendor key"),
        (signing.sign(vendor, DIGEST), signing.key_id(other.public_key()), f"vendor key {signing.key_id(other.public_key())}"),
        (signing.sign(vendor, DIGEST), "0123456789abcdef", "unknown vendor key id"),
    ]
    for sig, signer, message in cases:
        with pytest.raises(FirmwareError, match=message) as err:
            keys.sign_or_verify(DIGEST, sig, signer)
        assert err.value.code == "bad_request"
    assert not (tmp_path / "k").exists()  # a refused vendor signature is not signed by the platform instead


def test_a_signature_without_vendor_keys_or_a_signer_without_a_signature_is_refused(tmp_path):
    keys = FirmwareKeys(tmp_path / "k")
    with pytest.raises(FirmwareError, match="no vendor keys are configured"):
        keys.sign_or_verify(DIGEST, signing.sign(Ed25519PrivateKey.generate(), DIGEST))
    with pytest.raises(FirmwareError, match="without X-Firmware-Signature"):
        keys.sign_or_verify(DIGEST, None, "0123456789abcdef")


def test_the_signature_header_is_base64_of_64_bytes():
    raw = bytes(range(64))
    assert signing.decode_signature(base64.b64encode(raw).decode()) == raw
    for bad, message in (("***", "not base64"), (base64.b64encode(b"short").decode(), "64-byte")):
        with pytest.raises(FirmwareError, match=message):
            signing.decode_signature(bad)
