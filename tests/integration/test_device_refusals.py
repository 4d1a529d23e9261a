"""What a device actually sees when the broker refuses it (TLS 1.3 on the device listener), pinned
so that docs/device-contract.md ("What a refused device sees") stays true.

With TLS 1.3 the client's certificate is checked after the client has finished its side of the
handshake, so ``connect()`` succeeds and the refusal arrives on the first write or read: an alert
(revoked, certificate required, unknown CA, expired) or a bare EOF when the broker's close wins. paho reports every one of them
as "Unspecified error"; ``device.refusal.refusal_reason`` turns the ssl error into a reason.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from device.refusal import refusal_reason
from fleet.identity.pki import LocalPKI
from tests.support.identity import csr_pem, new_key, write_identity
from tests.support.mqtt_packets import connect_packet

pytestmark = pytest.mark.integration


def first_answer(s, cert, key, client_id: str) -> tuple[str, str]:
    """(step, outcome): where a raw TLS client sending CONNECT fails, and the reason it gets."""
    ctx = ssl.create_default_context(cafile=str(s.pki_dir / "ca-chain.crt"))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    step = "tcp"
    try:
        with socket.create_connection((s.mqtt_host, s.mqtt_device_port), timeout=5) as raw:
            step = "handshake"
            with ctx.wrap_socket(raw, server_hostname=s.mqtt_host) as tls:
                step = "first write/read"
                tls.sendall(connect_packet(client_id))
                answer = tls.recv(4)
                if not answer:
                    raise ssl.SSLEOFError("EOF instead of a CONNACK")
                return step, f"connack {answer[:1].hex()} over {tls.version()}"
    except (ssl.SSLError, OSError) as exc:
        return step, refusal_reason(exc)


def refused(outcome: tuple[str, str], alert: str) -> bool:
    """Refused after connect(), with the case's alert or, when the broker closed first, a bare EOF
    (which of the two a client reads is a race between the alert and the close)."""
    return outcome[0] == "first write/read" and outcome[1] in (alert, "handshake_failed")


def enrolled(api, keys, uid, tmp_path, prefix):
    device, key = uid(prefix), new_key()
    r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": csr_pem(device, key)})
    assert r.status_code == 201, r.text
    return (device, *write_identity(tmp_path / device, device, r.json()["certificate"]["pem"], key))


def test_a_valid_device_gets_its_connack_over_tls13(api, keys, api_settings, uid, tmp_path):
    device, cert, key = enrolled(api, keys, uid, tmp_path, "ok")
    assert first_answer(api_settings, cert, key, device) == ("first write/read", "connack 20 over TLSv1.3")


@pytest.mark.parametrize("change, reason", [
    ("disabled", "certificate_revoked"),  # a hold (CRL reason certificateHold) looks like a revocation
    ("revoked", "certificate_revoked"),
    ("deleted", "certificate_revoked"),
])
def test_a_device_the_registry_no_longer_accepts_is_told_revoked(api, keys, api_settings, uid, tmp_path,
                                                                change, reason):
    device, cert, key = enrolled(api, keys, uid, tmp_path, change[:3])
    if change == "deleted":
        assert api.delete(f"/v1/devices/{device}", headers=keys.operator).status_code in (200, 204)
    else:
        r = api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": change})
        assert r.status_code == 200, r.text
    assert refused(first_answer(api_settings, cert, key, device), reason)


def test_no_client_certificate_is_certificate_required(api_settings):
    assert refused(first_answer(api_settings, None, None, "nocert"), "certificate_required")


def test_a_foreign_ca_or_an_expired_certificate_is_refused(api_settings, uid, tmp_path):
    now = dt.datetime.now(dt.UTC)
    foreign_key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(foreign_key.public_key())
               .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1)).sign(foreign_key, hashes.SHA256()))
    cert, key = write_identity(tmp_path / "f", "foreign", foreign.public_bytes(serialization.Encoding.PEM), foreign_key)
    assert refused(first_answer(api_settings, cert, key, "foreign"), "unknown_ca")

    expired_key = new_key()
    expired = LocalPKI(api_settings.pki_dir)._issue(expired_key.public_key(), uid("exp"), hours=-0.01)
    cert, key = write_identity(tmp_path / "e", "exp", expired.public_bytes(serialization.Encoding.PEM), expired_key)
    assert refused(first_answer(api_settings, cert, key, "exp"), "certificate_expired")
