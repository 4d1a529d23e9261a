"""Why the broker refused a device: a typed reason from what the TLS stack reported.

With TLS 1.3 the client's handshake completes before the broker has checked the client's
certificate, so a refusal shows up on the first read or write after connect(), not in it.
Mosquitto answers a revoked (or held: a disabled device) certificate and a missing one with
a TLS alert; a certificate from a foreign CA or an expired one gets the connection closed
without an alert the client can read (EOF).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

# OpenSSL's reason names (ssl.SSLError.reason) -> the agent's refusal reasons.
ALERT_REASONS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate_revoked",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate_required",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "CERTIFICATE_VERIFY_FAILED": "broker_not_trusted",
}
# Reasons that retrying with the same certificate cannot fix: stop and tell an operator.
PERMANENT = frozenset({"certificate_revoked", "certificate_required", "unknown_ca", "certificate_expired",
                       "bad_certificate", "broker_not_trusted", "handshake_failed"})


@dataclass(frozen=True)
class ConnectionRefused(Exception):
    reason: str
    detail: str

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def refusal_reason(exc: BaseException) -> str:
    """The refusal reason of a connect/first-read failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "broker_not_trusted"
    if isinstance(exc, ssl.SSLEOFError):
        return "handshake_failed"  # closed without an alert: foreign CA or expired certificate
    if isinstance(exc, ssl.SSLError):
        return ALERT_REASONS.get(getattr(exc, "reason", None) or "", "handshake_failed")
    if isinstance(exc, ConnectionRefusedError):
        return "broker_unreachable"
    return "network_error"


def refusal(exc: BaseException) -> ConnectionRefused:
    return ConnectionRefused(refusal_reason(exc), str(exc))
