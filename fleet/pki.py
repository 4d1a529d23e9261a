"""The platform's certificate authority: a root CA, an issuing CA, and what they sign.

Layout under ``pki_dir`` (private keys 0600, directory 0700)::

    root-ca.key / root-ca.crt       offline-grade root; signs only the issuing CA
    issuing-ca.key / issuing-ca.crt signs broker, service and device certificates
    ca-chain.crt                    issuing + root, what brokers and clients trust
    crl.pem                         the issuing CA's CRL (Mosquitto ``crlfile``)
    revoked.json                    serials revoked so far, the CRL's source
    broker.key / broker.crt         Mosquitto's server certificate (127.0.0.1, localhost)
    services/<name>.key|.crt        client identities of platform services (bridge, ...)

Device private keys are never created here: devices send CSRs (see ``sign_device_csr``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.topics import is_valid_device_id

ORG = "Fleet Platform"
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


class CSRError(ValueError):
    """A certificate signing request the CA refuses; the message says why."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: int
    fingerprint_sha256: str
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def check_public_key(key) -> None:
    """Refuse weak or unsupported keys: EC P-256/P-384 or RSA of at least 2048 bits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CSRError(f"unsupported elliptic curve {key.curve.name}; use secp256r1 or secp384r1")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CSRError(f"RSA key of {key.key_size} bits is too weak; at least {MIN_RSA_BITS} required")
    else:
        raise CSRError(f"unsupported key type {type(key).__name__}; use EC P-256/P-384 or RSA >= {MIN_RSA_BITS}")


def load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRError(f"not a PEM-encoded certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not verify (was it altered?)")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str | None:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class LocalPKI:
    """File-backed CA for the local stack and small installations.

    Thread-safe for signing and revocation (one lock); create once per process.
    """

    def __init__(self, pki_dir: Path, *, validity_days: int = 365):
        self.dir = Path(pki_dir)
        self.validity_days = validity_days
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------
    @property
    def root_cert_path(self) -> Path:
        return self.dir / "root-ca.crt"

    @property
    def issuing_cert_path(self) -> Path:
        return self.dir / "issuing-ca.crt"

    @property
    def ca_chain_path(self) -> Path:
        return self.dir / "ca-chain.crt"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def broker_cert_path(self) -> Path:
        return self.dir / "broker.crt"

    @property
    def broker_key_path(self) -> Path:
        return self.dir / "broker.key"

    # -- set-up ------------------------------------------------------------------------------
    def ensure(self, hostnames: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        """Create whatever is missing (idempotent): CAs, chain, broker certificate, CRL."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.root_cert_path.exists():
                self._create_cas()
            if not self.broker_cert_path.exists():
                key = ec.generate_private_key(ec.SECP256R1())
                sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                cert = self._issue(key.public_key(), "fleet-broker", server=True, sans=sans,
                                   days=self.validity_days)
                _write_private(self.broker_key_path, _key_pem(key))
                self.broker_cert_path.write_bytes(_cert_pem(cert))
            if not self.crl_path.exists():
                self._write_crl()

    def _create_cas(self) -> None:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                               x509.NameAttribute(NameOID.COMMON_NAME, "Fleet Root CA")])
        root = self._ca_cert(root_name, root_name, root_key.public_key(), root_key, days=3650, path_len=1)
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                                  x509.NameAttribute(NameOID.COMMON_NAME, "Fleet Issuing CA")])
        issuing = self._ca_cert(issuing_name, root_name, issuing_key.public_key(), root_key, days=1825,
                                path_len=0, issuer_key_id=root_key.public_key())
        _write_private(self.dir / "root-ca.key", _key_pem(root_key))
        _write_private(self.dir / "issuing-ca.key", _key_pem(issuing_key))
        self.root_cert_path.write_bytes(_cert_pem(root))
        self.issuing_cert_path.write_bytes(_cert_pem(issuing))
        self.ca_chain_path.write_bytes(_cert_pem(issuing) + _cert_pem(root))

    @staticmethod
    def _ca_cert(subject, issuer, public_key, signing_key, *, days: int, path_len: int, issuer_key_id=None):
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if issuer_key_id is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key_id), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    # -- issuing -----------------------------------------------------------------------------
    def _issuing(self):
        key = serialization.load_pem_private_key((self.dir / "issuing-ca.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate(self.issuing_cert_path.read_bytes())
        return key, cert

    def _issue(self, public_key, common_name: str, *, server: bool = False, sans=None,
               days: int | None = None) -> x509.Certificate:
        ca_key, ca_cert = self._issuing()
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days or self.validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def sign_csr(self, csr_pem: bytes | str, common_name: str, *, validity_days: int | None = None) -> IssuedCertificate:
        """Sign a client CSR whose CN must equal ``common_name``; the key must be strong enough."""
        csr = load_csr(csr_pem)
        cn = csr_common_name(csr)
        if cn != common_name:
            raise CSRError(f"the CSR's common name {cn!r} does not match {common_name!r}")
        check_public_key(csr.public_key())
        with self._lock:
            cert = self._issue(csr.public_key(), common_name, days=validity_days)
        return IssuedCertificate(_cert_pem(cert), cert.serial_number, fingerprint(cert),
                                 cert.not_valid_after_utc)

    def sign_device_csr(self, csr_pem: bytes | str, device_id: str, validity_days: int | None = None) -> bytes:
        """Device certificate PEM (CN = device id, client auth) from the device's own CSR."""
        if not is_valid_device_id(device_id):
            raise CSRError(f"device id {device_id!r} is not well-formed")
        return self.sign_csr(csr_pem, device_id, validity_days=validity_days).pem

    def service_identity(self, name: str) -> tuple[Path, Path]:
        """(cert, key) paths of a platform service's client identity, created on first use.

        Services run inside the platform's trust boundary, so their keys are made here.
        """
        cert_path = self.dir / "services" / f"{name}.crt"
        key_path = self.dir / "services" / f"{name}.key"
        with self._lock:
            if not cert_path.exists() or not key_path.exists():
                key = ec.generate_private_key(ec.SECP256R1())
                cert = self._issue(key.public_key(), name)
                _write_private(key_path, _key_pem(key))
                cert_path.write_bytes(_cert_pem(cert))
        return cert_path, key_path

    # -- revocation --------------------------------------------------------------------------
    def _revoked(self) -> dict[str, str]:
        path = self.dir / "revoked.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def revoke(self, serial: int) -> None:
        """Add a serial to the CRL and rewrite crl.pem (the broker must then reload it)."""
        with self._lock:
            revoked = self._revoked()
            revoked.setdefault(str(serial), _now().isoformat())
            tmp = self.dir / "revoked.json.tmp"
            tmp.write_text(json.dumps(revoked, indent=1))
            tmp.replace(self.dir / "revoked.json")
            self._write_crl()

    def is_revoked(self, serial: int) -> bool:
        return str(serial) in self._revoked()

    def _write_crl(self) -> None:
        ca_key, ca_cert = self._issuing()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=30)))
        for serial, when in self._revoked().items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial))
                .revocation_date(dt.datetime.fromisoformat(when)).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        tmp.replace(self.crl_path)
