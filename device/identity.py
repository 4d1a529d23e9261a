"""A device's own identity: an EC P-256 key made on the device, a CSR, the issued certificate.

The private key is generated here and written only to the device's own directory (mode 0600);
only the CSR (public key + CN = device id) leaves the device. Firmware does the same with its
secure element or crypto library; the file layout below is just this agent's choice:

    <dir>/device.key   private key, PKCS#8 PEM, 0600
    <dir>/device.csr   certificate signing request (CN = device id)
    <dir>/device.crt   certificate issued by the platform CA
    <dir>/ca.crt       the CA chain the device trusts for the broker's certificate
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.contract.topics import is_valid_device_id


class CsrSigner(Protocol):
    """What enrollment needs from a CA (fleet.identity.pki.LocalPKI satisfies it)."""

    ca_chain_path: Path

    def sign_device_csr(self, csr_pem: bytes, device_id: str, validity_days: int | None = None) -> bytes: ...


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    directory: Path

    @property
    def key_path(self) -> Path:
        return self.directory / "device.key"

    @property
    def csr_path(self) -> Path:
        return self.directory / "device.csr"

    @property
    def cert_path(self) -> Path:
        return self.directory / "device.crt"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    def is_enrolled(self, min_remaining: dt.timedelta = dt.timedelta(days=1)) -> bool:
        """Key, certificate (for this key and id, valid for a while yet) and CA chain present."""
        if not (self.key_path.exists() and self.cert_path.exists() and self.ca_path.exists()):
            return False
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = load_or_create_key(self.key_path)
        same_key = _certifies(cert, key)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > min_remaining
        return same_key and fresh and bool(cn) and cn[0].value == self.device_id


def _certifies(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether the certificate is for this (EC) key; a certificate for another key type never is."""
    public = cert.public_key()
    return isinstance(public, ec.EllipticCurvePublicKey) and public.public_numbers() == key.public_key().public_numbers()


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start: a chmod after writing would leave a window.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's private key, generated on first use (EC P-256)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """PEM CSR with CN = device id, signed by the device key (proves possession)."""
    if not is_valid_device_id(device_id):
        raise ValueError(f"device id {device_id!r} is not well-formed")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def prepare_csr(device_id: str, directory: Path) -> tuple[DeviceIdentity, bytes]:
    """Make (or reuse) the key and write a CSR; returns the identity and the CSR to send."""
    identity = DeviceIdentity(device_id, Path(directory))
    csr = make_csr(load_or_create_key(identity.key_path), device_id)
    identity.csr_path.write_bytes(csr)
    return identity, csr


def install_certificate(identity: DeviceIdentity, cert_pem: bytes, ca_chain_pem: bytes) -> None:
    """Store what the CA sent back, after checking it certifies this device's own key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = load_or_create_key(identity.key_path)
    if not _certifies(cert, key):
        raise ValueError("the certificate is not for this device's key")
    identity.cert_path.write_bytes(cert_pem)
    identity.ca_path.write_bytes(ca_chain_pem)


def enroll_locally(pki: CsrSigner, device_id: str, directory: Path, validity_days: int = 365) -> DeviceIdentity:
    """Enrollment against the local development CA (idempotent: reuses a valid enrollment).

    In production the CSR travels over the provisioning topics or the API instead; the key
    stays in ``directory`` either way.
    """
    identity = DeviceIdentity(device_id, Path(directory))
    if identity.is_enrolled():
        return identity
    identity, csr = prepare_csr(device_id, directory)
    cert_pem = pki.sign_device_csr(csr, device_id, validity_days=validity_days)
    install_certificate(identity, cert_pem, Path(pki.ca_chain_path).read_bytes())
    return identity

