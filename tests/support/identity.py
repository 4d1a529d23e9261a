"""Keys and CSRs made the way a device makes them, for tests of the onboarding flows."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(cn: str | None, key=None) -> str:
    key = key or new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return (x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM).decode())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_identity(directory: Path, name: str, cert_pem: str | bytes, key) -> tuple[Path, Path]:
    """(cert path, key path) with the key 0600, as a device stores them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    key_path.write_bytes(key if isinstance(key, bytes) else key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path
