"""The platform's certificate authorities and what they sign.

Three trust anchors, so a certificate of one kind can never pass as another on the broker:

- the platform root + issuing CA: devices (CN = device id) and the broker's server certificate;
  trusted by the broker's device listener and by every client verifying the broker;
- the services CA (self-signed): platform services (bridge, API, provisioning); trusted only by
  the service listener, so a device certificate cannot log in there and pick a client id;
- the claim CA (self-signed): shared claim certificates for zero-touch provisioning; trusted only
  by the provisioning listener, whose ACL allows nothing but ``provisioning/<claim id>/...``.

Layout under ``pki_dir`` (private keys 0600, directory 0700)::

    root-ca.key / root-ca.crt       offline-grade root; signs only the issuing CA
    issuing-ca.key / issuing-ca.crt signs the broker and device certificates
    ca-chain.crt                    issuing + root, what devices and clients trust for the broker
    crl.pem, revoked.json           the issuing CA's CRL (Mosquitto ``crlfile``) and its source
    services-ca.*, services-crl.pem, services-revoked.json
    claim-ca.*, claim-crl.pem, claim-revoked.json
    canary/<ca>.crt|.key            a certificate revoked in the newest CRL of <ca> (see below)
    broker.key / broker.crt         Mosquitto's server certificate (127.0.0.1, localhost)
    services/<name>.key|.crt        client identities of platform services (bridge, ...)

Every CRL written revokes a fresh *canary* certificate. Whoever reloads the broker can then prove
the new CRL is in force by checking that the canary is refused (fleet.identity.cutoff), instead of guessing
how long a SIGHUP takes. Device private keys are never created here: devices send CSRs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.contract.topics import is_valid_device_id

ORG = "Fleet Platform"
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048
CA_NAMES = ("issuing", "services", "claim")
CANARY_DAYS = 1


class CSRError(ValueError):
    """A certificate signing request the CA refuses; the message says why."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: int
    fingerprint_sha256: str
    not_after: dt.datetime
    not_before: dt.datetime | None = None


@dataclass(frozen=True)
class CAFiles:
    name: str
    key_path: Path
    cert_path: Path
    crl_path: Path
    state_path: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a private key): the file 0600, a directory made for it 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    """Atomic replace, so a broker reloading at that moment never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def issued(cert: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(_cert_pem(cert), cert.serial_number, fingerprint(cert), cert.not_valid_after_utc,
                             cert.not_valid_before_utc)


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
    try:
        # JSON can carry text that is not encodable (a lone surrogate such as "\udcff")
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    except UnicodeEncodeError:
        raise CSRError("not a PEM-encoded certificate signing request: not valid text") from None
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRError(f"not a PEM-encoded certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # unsupported key types surface here in some cryptography versions
        valid = False
        check_public_key(csr.public_key())
    if not valid:
        raise CSRError("the CSR's signature does not verify (was it altered?)")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str | None:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def check_csr(csr_pem: bytes | str, common_name: str) -> x509.CertificateSigningRequest:
    """The CSR, if it is well-formed, names ``common_name`` and carries a strong enough key."""
    csr = load_csr(csr_pem)
    cn = csr_common_name(csr)
    if cn is None:
        raise CSRError(f"the CSR has no common name; it must be {common_name!r}")
    if cn != common_name:
        raise CSRError(f"the CSR's common name {cn!r} does not match {common_name!r}")
    check_public_key(csr.public_key())
    return csr


class LocalPKI:
    """File-backed CAs for the local stack and small installations (a fleet.identity.ca.CertificateAuthority).

    Safe for concurrent use by threads (one lock) and processes (a lock file around every
    read-modify-write of CA state), e.g. the API and a CLI command revoking at the same time.
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
    def services_ca_path(self) -> Path:
        return self.ca("services").cert_path

    @property
    def services_crl_path(self) -> Path:
        return self.ca("services").crl_path

    @property
    def claim_ca_path(self) -> Path:
        return self.ca("claim").cert_path

    @property
    def claim_crl_path(self) -> Path:
        return self.ca("claim").crl_path

    @property
    def broker_cert_path(self) -> Path:
        return self.dir / "broker.crt"

    @property
    def broker_key_path(self) -> Path:
        return self.dir / "broker.key"

    def ca(self, name: str) -> CAFiles:
        if name == "issuing":
            return CAFiles("issuing", self.dir / "issuing-ca.key", self.issuing_cert_path, self.crl_path,
                           self.dir / "revoked.json")
        if name in CA_NAMES:
            return CAFiles(name, self.dir / f"{name}-ca.key", self.dir / f"{name}-ca.crt",
                           self.dir / f"{name}-crl.pem", self.dir / f"{name}-revoked.json")
        raise ValueError(f"unknown CA {name!r}; known: {', '.join(CA_NAMES)}")

    def canary_paths(self, ca: str = "issuing") -> tuple[Path, Path]:
        """(cert, key) of the certificate revoked in ``ca``'s newest CRL."""
        return self.dir / "canary" / f"{ca}.crt", self.dir / "canary" / f"{ca}.key"

    @contextmanager
    def _locked(self):
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.dir / ".lock", "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    # -- set-up ------------------------------------------------------------------------------
    def ensure(self, hostnames: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        """Create whatever is missing (idempotent): CAs, chain, broker certificate, CRLs."""
        with self._locked():
            if not self.root_cert_path.exists():
                self._create_platform_cas()
            for name, cn in (("services", "Fleet Services CA"), ("claim", "Fleet Claim CA")):
                if not self.ca(name).cert_path.exists():
                    self._create_standalone_ca(name, cn)
            if not self.broker_cert_path.exists():
                key = ec.generate_private_key(ec.SECP256R1())
                sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                cert = self._issue(key.public_key(), "fleet-broker", server=True, sans=sans,
                                   days=self.validity_days)
                write_private(self.broker_key_path, _key_pem(key))
                self.broker_cert_path.write_bytes(_cert_pem(cert))
            for name in CA_NAMES:
                if not self.ca(name).crl_path.exists() or not self.canary_paths(name)[0].exists():
                    self._write_crl(name)

    def _create_platform_cas(self) -> None:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                               x509.NameAttribute(NameOID.COMMON_NAME, "Fleet Root CA")])
        root = self._ca_cert(root_name, root_name, root_key.public_key(), root_key, days=3650, path_len=1)
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                                  x509.NameAttribute(NameOID.COMMON_NAME, "Fleet Issuing CA")])
        issuing = self._ca_cert(issuing_name, root_name, issuing_key.public_key(), root_key, days=1825,
                                path_len=0, issuer_key_id=root_key.public_key())
        write_private(self.dir / "root-ca.key", _key_pem(root_key))
        write_private(self.dir / "issuing-ca.key", _key_pem(issuing_key))
        self.root_cert_path.write_bytes(_cert_pem(root))
        self.issuing_cert_path.write_bytes(_cert_pem(issuing))
        self.ca_chain_path.write_bytes(_cert_pem(issuing) + _cert_pem(root))

    def _create_standalone_ca(self, name: str, common_name: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = self._ca_cert(subject, subject, key.public_key(), key, days=3650, path_len=0)
        files = self.ca(name)
        write_private(files.key_path, _key_pem(key))
        files.cert_path.write_bytes(_cert_pem(cert))

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
    def _ca_material(self, ca: str = "issuing"):
        files = self.ca(ca)
        key = serialization.load_pem_private_key(files.key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        return key, cert

    def _issue(self, public_key, common_name: str, *, server: bool = False, sans=None,
               days: int | None = None, ca: str = "issuing", hours: float | None = None) -> x509.Certificate:
        ca_key, ca_cert = self._ca_material(ca)
        now = _now()
        lifetime = dt.timedelta(hours=hours) if hours is not None else dt.timedelta(days=days or self.validity_days)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
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

    def sign_csr(self, csr_pem: bytes | str, common_name: str, *, validity_days: int | None = None,
                 ca: str = "issuing") -> IssuedCertificate:
        """Sign a client CSR whose CN must equal ``common_name``; the key must be strong enough."""
        csr = check_csr(csr_pem, common_name)
        with self._lock:
            cert = self._issue(csr.public_key(), common_name, days=validity_days, ca=ca)
        return issued(cert)

    def sign_device_csr(self, csr_pem: bytes | str, device_id: str, validity_days: int | None = None) -> bytes:
        """Device certificate PEM (CN = device id, client auth) from the device's own CSR."""
        return self.issue_device_certificate(csr_pem, device_id, validity_days).pem

    def issue_device_certificate(self, csr_pem: bytes | str, device_id: str,
                                 validity_days: int | None = None) -> IssuedCertificate:
        if not is_valid_device_id(device_id):
            raise CSRError(f"device id {device_id!r} is not well-formed")
        return self.sign_csr(csr_pem, device_id, validity_days=validity_days)

    def issue_claim_certificate(self, claim_id: str, csr_pem: bytes | str | None = None,
                                validity_days: int | None = None) -> tuple[IssuedCertificate, bytes | None]:
        """A claim certificate (CN = claim id) from the claim CA: (certificate, key PEM or None).

        With a CSR the manufacturer keeps its own key; without one a key is made here and
        returned once (it is shared by a production batch anyway, unlike a device key).
        """
        if not is_valid_device_id(claim_id):
            raise CSRError(f"claim id {claim_id!r} is not well-formed")
        if csr_pem is not None:
            return self.sign_csr(csr_pem, claim_id, validity_days=validity_days, ca="claim"), None
        key = ec.generate_private_key(ec.SECP256R1())
        with self._lock:
            cert = self._issue(key.public_key(), claim_id, days=validity_days, ca="claim")
        return issued(cert), _key_pem(key)

    def service_identity(self, name: str) -> tuple[Path, Path]:
        """(cert, key) paths of a platform service's client identity (services CA), made on first use.

        Services run inside the platform's trust boundary, so their keys are made here. An
        identity from an older layout (signed by the issuing CA) is re-issued.
        """
        cert_path = self.dir / "services" / f"{name}.crt"
        key_path = self.dir / "services" / f"{name}.key"
        with self._lock:
            if not self.services_ca_path.exists():
                self._create_standalone_ca("services", "Fleet Services CA")
            if not (cert_path.exists() and key_path.exists() and self._issued_by(cert_path, "services")):
                key = ec.generate_private_key(ec.SECP256R1())
                cert = self._issue(key.public_key(), name, ca="services")
                write_private(key_path, _key_pem(key))
                cert_path.write_bytes(_cert_pem(cert))
        return cert_path, key_path

    def _issued_by(self, cert_path: Path, ca: str) -> bool:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(self.ca(ca).cert_path.read_bytes())
        return cert.issuer == ca_cert.subject

    def server_identity(self, name: str, hostnames: tuple[str, ...] = ("localhost",),
                        ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
        """(cert, key) of a TLS server (e.g. the HTTPS API) signed by the issuing CA; made once."""
        cert_path = self.dir / "servers" / f"{name}.crt"
        key_path = self.dir / "servers" / f"{name}.key"
        with self._lock:
            if not (cert_path.exists() and key_path.exists()):
                key = ec.generate_private_key(ec.SECP256R1())
                sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                cert = self._issue(key.public_key(), name, server=True, sans=sans)
                write_private(key_path, _key_pem(key))
                cert_path.write_bytes(_cert_pem(cert) + self.ca_chain_path.read_bytes())
        return cert_path, key_path

    # -- revocation --------------------------------------------------------------------------
    def _state(self, ca: str) -> dict:
        path = self.ca(ca).state_path
        data = json.loads(path.read_text()) if path.exists() else {}
        if data and "revoked" not in data:  # first layout: {serial: revoked_at}
            data = {"revoked": {s: {"at": at} for s, at in data.items()}}
        data.setdefault("revoked", {})
        return data

    def _save_state(self, ca: str, data: dict) -> None:
        _write_public(self.ca(ca).state_path, json.dumps(data, indent=1).encode())

    def revoke(self, serial: int, *, ca: str = "issuing", hold: bool = False) -> None:
        """Put a serial on ``ca``'s CRL and rewrite it (the broker must then reload it).

        ``hold=True`` (a disabled device) is reversible with ``release``; a plain revocation is
        permanent, and turns an earlier hold into a revocation.
        """
        with self._locked():
            data = self._state(ca)
            entry = data["revoked"].setdefault(str(serial), {"at": _now().isoformat()})
            entry["hold"] = bool(hold) and entry.get("hold", True)
            self._save_state(ca, data)
            self._write_crl(ca)

    def release(self, serial: int, *, ca: str = "issuing") -> bool:
        """Lift a hold (re-enabling a device); False if the serial was not on hold.

        Raises ValueError for a permanent revocation, which cannot be undone.
        """
        with self._locked():
            data = self._state(ca)
            entry = data["revoked"].get(str(serial))
            if entry is None:
                return False
            if not entry.get("hold"):
                raise ValueError(f"certificate {serial} is revoked permanently")
            del data["revoked"][str(serial)]
            self._save_state(ca, data)
            self._write_crl(ca)
            return True

    def is_revoked(self, serial: int, *, ca: str = "issuing") -> bool:
        return str(serial) in self._state(ca)["revoked"]

    def revocation(self, serial: int, *, ca: str = "issuing") -> str | None:
        """"hold", "revoked" or None: what ``ca``'s CRL says about a serial."""
        entry = self._state(ca)["revoked"].get(str(serial))
        if entry is None:
            return None
        return "hold" if entry.get("hold") else "revoked"

    def _write_crl(self, ca: str = "issuing") -> None:
        """Caller holds the lock. Revokes a fresh canary, drops expired ones, signs, replaces."""
        ca_key, ca_cert = self._ca_material(ca)
        now = _now()
        data = self._state(ca)
        canaries = {s: c for s, c in data.get("canaries", {}).items()
                    if dt.datetime.fromisoformat(c) > now}
        canary_key = ec.generate_private_key(ec.SECP256R1())
        canary = self._issue(canary_key.public_key(), f"crl-canary-{ca}", ca=ca, days=CANARY_DAYS)
        canaries[str(canary.serial_number)] = canary.not_valid_after_utc.isoformat()
        data["canaries"] = canaries
        self._save_state(ca, data)
        cert_path, key_path = self.canary_paths(ca)
        write_private(key_path, _key_pem(canary_key))
        _write_public(cert_path, _cert_pem(canary))

        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=30)))
        entries = [(int(s), dt.datetime.fromisoformat(e["at"]), e.get("hold", False))
                   for s, e in data["revoked"].items()]
        entries += [(int(s), now, False) for s in canaries]
        for serial, when, hold in entries:
            reason = x509.ReasonFlags.certificate_hold if hold else x509.ReasonFlags.unspecified
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
                .add_extension(x509.CRLReason(reason), critical=False).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_public(self.ca(ca).crl_path, crl.public_bytes(serialization.Encoding.PEM))
