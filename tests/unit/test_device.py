"""Device agent pieces that need no broker: identity, seq persistence, metric generators."""

from __future__ import annotations

import os
import random
import ssl as _ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from device.identity import DeviceIdentity, enroll_locally, load_or_create_key, make_csr, prepare_csr
from device.refusal import refusal, refusal_reason
from device.seqstore import SeqStore
from devtools.simulator import GENERATORS, MetricSource, device_ids
from fleet.identity.pki import LocalPKI


def test_key_is_created_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "dev" / "device.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path).private_numbers() == key.private_numbers()


def test_csr_names_the_device_and_is_self_signed(tmp_path):
    key = load_or_create_key(tmp_path / "k")
    csr = x509.load_pem_x509_csr(make_csr(key, "d-1"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "d-1"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "-x", "x" * 65])
def test_csr_refuses_malformed_ids(tmp_path, bad):
    with pytest.raises(ValueError):
        make_csr(load_or_create_key(tmp_path / "k"), bad)


def test_enroll_locally_keeps_the_key_on_the_device_and_is_idempotent(tmp_path):
    pki = LocalPKI(tmp_path / "pki")
    pki.ensure()
    ident = enroll_locally(pki, "dev-7", tmp_path / "dev-7")
    assert ident.is_enrolled()
    cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-7"
    assert ident.ca_path.read_bytes() == pki.ca_chain_path.read_bytes()
    # The CA never saw the private key: nothing under the PKI dir matches it.
    key_pem = ident.key_path.read_bytes()
    assert not any(p.is_file() and p.read_bytes() == key_pem for p in (tmp_path / "pki").rglob("*"))
    before = ident.cert_path.read_bytes()
    assert enroll_locally(pki, "dev-7", tmp_path / "dev-7").cert_path.read_bytes() == before


def test_enrollment_for_another_key_is_not_current(tmp_path):
    pki = LocalPKI(tmp_path / "pki")
    pki.ensure()
    ident = enroll_locally(pki, "dev-8", tmp_path / "dev-8")
    ident.key_path.unlink()  # e.g. the device was wiped: a new key needs a new certificate
    load_or_create_key(ident.key_path)
    assert not ident.is_enrolled()
    assert enroll_locally(pki, "dev-8", tmp_path / "dev-8").is_enrolled()


def test_prepare_csr_writes_the_csr(tmp_path):
    ident, csr = prepare_csr("d-2", tmp_path / "d-2")
    assert isinstance(ident, DeviceIdentity) and ident.csr_path.read_bytes() == csr


def test_seq_continues_after_restart(tmp_path):
    store = SeqStore(tmp_path / "seq")
    assert [store.take() for _ in range(3)] == [0, 1, 2]
    # No close(): a killed process leaves the page cache, which is what a restart reads.
    again = SeqStore(tmp_path / "seq")
    assert again.take() == 3
    again.close()
    assert SeqStore(tmp_path / "seq").next_value == 4


def test_seq_in_memory_only():
    store = SeqStore(None)
    assert (store.take(), store.take(), store.next_value) == (0, 1, 2)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_metric_generators_stay_in_bounds_and_move(name):
    source = MetricSource([name], random.Random(1))
    values = [source()[name] for _ in range(2000)]
    assert all(isinstance(v, float) for v in values)
    assert len(set(values)) > 10


def test_device_ids_are_well_formed_and_sorted():
    ids = device_ids(3, "sim")
    assert ids == ["sim-00000", "sim-00001", "sim-00002"]


@pytest.mark.parametrize("topic,payload,size", [
    ("a", 0, 1 + 1 + 2 + 1 + 2 + 1),            # remaining length 6 fits one byte
    ("a", 121, 1 + 1 + 127),                    # 127: still one byte
    ("a", 122, 1 + 2 + 128),                    # 128: two bytes
    ("a", 16_378, 1 + 3 + 16_384),              # 16,384: three bytes
])
def test_publish_packet_size_counts_the_variable_length_header(topic, payload, size):
    from device.agent import publish_packet_size

    assert publish_packet_size(topic, payload) == size


# -- refusal reasons (device/refusal.py) ------------------------------------------------------

def _ssl_error(reason: str) -> _ssl.SSLError:
    exc = _ssl.SSLError(1, f"[SSL: {reason}] alert")
    exc.reason = reason
    return exc


@pytest.mark.parametrize("alert, reason", [
    ("SSLV3_ALERT_CERTIFICATE_REVOKED", "certificate_revoked"),
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
    ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate_expired"),
    ("SOMETHING_NEW", "handshake_failed"),
])
def test_a_tls_alert_maps_to_its_refusal_reason(alert, reason):
    assert refusal_reason(_ssl_error(alert)) == reason
    assert refusal(_ssl_error(alert)).permanent


def test_an_eof_in_the_handshake_is_a_handshake_failure_and_the_broker_unreachable_is_not_permanent():
    assert refusal_reason(_ssl.SSLEOFError(8, "EOF occurred in violation of protocol")) == "handshake_failed"
    refused = refusal(ConnectionRefusedError(111, "Connection refused"))
    assert (refused.reason, refused.permanent) == ("broker_unreachable", False)
    assert refusal_reason(_ssl.SSLCertVerificationError(1, "certificate verify failed")) == "broker_not_trusted"
