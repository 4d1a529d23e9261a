import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.identity.pki import CSRError, LocalPKI


def make_csr(cn: str, key=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = LocalPKI(tmp_path_factory.mktemp("pki"))
    p.ensure()
    return p


def test_private_keys_are_owner_only(pki):
    for name in ("root-ca.key", "issuing-ca.key", "broker.key"):
        assert stat.S_IMODE((pki.dir / name).stat().st_mode) == 0o600


def test_ensure_is_idempotent(pki):
    before = pki.issuing_cert_path.read_bytes()
    pki.ensure()
    assert pki.issuing_cert_path.read_bytes() == before


def test_device_certificate_chains_to_the_issuing_ca(pki):
    cert = x509.load_pem_x509_certificate(pki.sign_device_csr(make_csr("dev-1"), "dev-1"))
    issuing = x509.load_pem_x509_certificate(pki.issuing_cert_path.read_bytes())
    cert.verify_directly_issued_by(issuing)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_serials_are_unique(pki):
    a = pki.sign_csr(make_csr("dev-2"), "dev-2")
    b = pki.sign_csr(make_csr("dev-2"), "dev-2")
    assert a.serial != b.serial and a.fingerprint_sha256 != b.fingerprint_sha256


@pytest.mark.parametrize("csr, device_id, message", [
    (lambda: b"not a csr", "d1", "not a PEM-encoded certificate signing request"),
    (lambda: make_csr("other"), "d1", "does not match"),
    (lambda: make_csr("d1", rsa.generate_private_key(65537, 1024)), "d1", "too weak"),
    (lambda: make_csr("d1", ec.generate_private_key(ec.SECP256K1())), "d1", "unsupported elliptic curve"),
    (lambda: make_csr("a/b"), "a/b", "not well-formed"),
])
def test_bad_csrs_are_refused_with_the_reason(pki, csr, device_id, message):
    with pytest.raises(CSRError, match=message):
        pki.sign_device_csr(csr(), device_id)


def test_revocation_lands_in_the_crl(pki):
    issued = pki.sign_csr(make_csr("dev-3"), "dev-3")
    pki.revoke(issued.serial)
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert pki.is_revoked(issued.serial)


def test_service_identity_is_reused(pki):
    first = pki.service_identity("fleet-bridge")
    assert pki.service_identity("fleet-bridge") == first
    cert = x509.load_pem_x509_certificate(first[0].read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fleet-bridge"


# -- trust anchors, holds and canaries -----------------------------------------------------------
def _verifies(cert_pem: bytes, ca_path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, Exception):
        return False


def test_claim_certificates_come_from_their_own_self_signed_ca(pki):
    cert, key = pki.issue_claim_certificate("claim-batch-1")
    assert key is not None and b"PRIVATE KEY" in key
    assert _verifies(cert.pem, pki.claim_ca_path)
    assert not _verifies(cert.pem, pki.issuing_cert_path) and not _verifies(cert.pem, pki.root_cert_path)
    claim_ca = x509.load_pem_x509_certificate(pki.claim_ca_path.read_bytes())
    assert claim_ca.issuer == claim_ca.subject  # a separate trust anchor, not under the platform root


def test_a_claim_certificate_from_a_factory_csr_keeps_the_factory_key(pki):
    cert, key = pki.issue_claim_certificate("claim-batch-2", make_csr("claim-batch-2"))
    assert key is None and _verifies(cert.pem, pki.claim_ca_path)


def test_service_identities_come_from_the_services_ca(pki):
    cert_path, _ = pki.service_identity("fleet-api")
    assert _verifies(cert_path.read_bytes(), pki.services_ca_path)
    assert not _verifies(cert_path.read_bytes(), pki.issuing_cert_path)


def test_a_service_identity_from_the_old_layout_is_reissued(pki):
    cert_path = pki.dir / "services" / "legacy.crt"
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path.parent.mkdir(exist_ok=True)
    cert_path.write_bytes(pki.sign_csr(make_csr("legacy", key), "legacy").pem)  # issuing CA, as before
    (pki.dir / "services" / "legacy.key").write_bytes(b"old")
    pki.service_identity("legacy")
    assert _verifies(cert_path.read_bytes(), pki.services_ca_path)


def _crl_entry(pki, serial, ca="issuing"):
    crl = x509.load_pem_x509_crl(pki.ca(ca).crl_path.read_bytes())
    return crl.get_revoked_certificate_by_serial_number(serial)


def test_a_hold_is_reversible_and_marked_as_such(pki):
    issued = pki.sign_csr(make_csr("dev-hold"), "dev-hold")
    pki.revoke(issued.serial, hold=True)
    entry = _crl_entry(pki, issued.serial)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.certificate_hold
    assert pki.release(issued.serial) is True
    assert _crl_entry(pki, issued.serial) is None and not pki.is_revoked(issued.serial)
    assert pki.release(issued.serial) is False


def test_a_permanent_revocation_cannot_be_released_and_overrides_a_hold(pki):
    issued = pki.sign_csr(make_csr("dev-perm"), "dev-perm")
    pki.revoke(issued.serial, hold=True)
    pki.revoke(issued.serial)
    with pytest.raises(ValueError, match="revoked permanently"):
        pki.release(issued.serial)
    pki.revoke(issued.serial, hold=True)  # a later hold does not soften it
    with pytest.raises(ValueError, match="revoked permanently"):
        pki.release(issued.serial)


@pytest.mark.parametrize("ca", ["issuing", "claim", "services"])
def test_every_crl_revokes_a_fresh_canary_that_the_ca_signed(pki, ca):
    pki.revoke(x509.random_serial_number(), ca=ca)
    first = x509.load_pem_x509_certificate(pki.canary_paths(ca)[0].read_bytes())
    pki.revoke(x509.random_serial_number(), ca=ca)
    second = x509.load_pem_x509_certificate(pki.canary_paths(ca)[0].read_bytes())
    assert first.serial_number != second.serial_number
    assert _crl_entry(pki, second.serial_number, ca) is not None
    assert _verifies(pki.canary_paths(ca)[0].read_bytes(), pki.ca(ca).cert_path)
    assert stat.S_IMODE(pki.canary_paths(ca)[1].stat().st_mode) == 0o600


def test_revocations_are_per_ca(pki):
    serial = x509.random_serial_number()
    pki.revoke(serial, ca="claim")
    assert pki.is_revoked(serial, ca="claim") and not pki.is_revoked(serial)


def test_the_first_revoked_json_layout_is_still_read(tmp_path):
    p = LocalPKI(tmp_path / "pki")
    p.ensure()
    (p.dir / "revoked.json").write_text('{"123": "2024-01-01T00:00:00+00:00"}')
    assert p.is_revoked(123)
    p.revoke(456)
    assert _crl_entry(p, 123) is not None and _crl_entry(p, 456) is not None


def test_revocation_says_hold_or_revoked(pki):
    a, b = (pki.sign_csr(make_csr(f"dev-r{i}"), f"dev-r{i}").serial for i in range(2))
    pki.revoke(a, hold=True)
    pki.revoke(b)
    assert (pki.revocation(a), pki.revocation(b), pki.revocation(12345)) == ("hold", "revoked", None)


def test_a_csr_that_is_not_encodable_text_is_a_csr_error():
    # JSON's "\udcff" escape decodes to a lone surrogate, which no encoding accepts.
    import pytest

    from fleet.identity.pki import load_csr

    with pytest.raises(CSRError, match="not valid text"):
        load_csr("\x00\udcff")
