"""What the platform needs from its certificate authorities, and which implementation it gets.

The API, the bridge, onboarding, provisioning and the broker cut-off are typed against
:class:`CertificateAuthority`, never against a storage. :class:`~fleet.identity.pki.LocalPKI`
(keys and CRLs as files under ``pki_dir``) is today's only implementation; a Vault- or
HSM-backed one would implement the same methods and be returned by :func:`pki_from_settings`.

CA names (the ``ca`` arguments), one trust anchor per listener of the broker:
``"issuing"`` (devices, the broker, TLS servers), ``"services"`` (platform services) and
``"claim"`` (claim certificates for zero-touch provisioning). Paths are what TLS libraries and
Mosquitto read: an implementation that keeps keys elsewhere still hands out files (or mounts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from fleet.config import Settings
from fleet.identity.pki import IssuedCertificate, LocalPKI


@runtime_checkable
class CertificateAuthority(Protocol):
    @property
    def ca_chain_path(self) -> Path:
        """The trust bundle (issuing + root) that devices and clients verify the broker with."""
        ...

    def ensure(self, hostnames: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        """Create whatever is missing (idempotent): CAs, trust bundle, broker certificate, CRLs."""
        ...

    # -- issuing ---------------------------------------------------------------------------
    def issue_device_certificate(self, csr_pem: bytes | str, device_id: str,
                                 validity_days: int | None = None) -> IssuedCertificate:
        """Sign a device's CSR (CN must be the device id); raises CSRError for a bad CSR."""
        ...

    def issue_claim_certificate(self, claim_id: str, csr_pem: bytes | str | None = None,
                                validity_days: int | None = None) -> tuple[IssuedCertificate, bytes | None]:
        """A claim certificate from the claim CA: (certificate, key PEM when the CA made the key)."""
        ...

    def service_identity(self, name: str) -> tuple[Path, Path]:
        """(cert, key) of a platform service's client identity (services CA), made on first use."""
        ...

    def server_identity(self, name: str, hostnames: tuple[str, ...] = ("localhost",),
                        ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
        """(cert, key) of a TLS server (e.g. the HTTPS API) from the issuing CA."""
        ...

    # -- revocation ------------------------------------------------------------------------
    def revoke(self, serial: int, *, ca: str = "issuing", hold: bool = False) -> None:
        """Put a serial on ``ca``'s CRL (``hold``: reversible with ``release``)."""
        ...

    def release(self, serial: int, *, ca: str = "issuing") -> bool:
        """Lift a hold; False if the serial was not on hold, ValueError if revoked for good."""
        ...

    def revocation(self, serial: int, *, ca: str = "issuing") -> str | None:
        """"hold", "revoked" or None: what ``ca``'s CRL says about a serial."""
        ...

    def canary_paths(self, ca: str = "issuing") -> tuple[Path, Path]:
        """(cert, key) of a certificate revoked in ``ca``'s newest CRL (proves a reload is in force)."""
        ...


def pki_from_settings(settings: Settings) -> CertificateAuthority:
    """The platform's CA for these settings (the one place that picks an implementation)."""
    return LocalPKI(settings.pki_dir, validity_days=settings.cert_validity_days)
