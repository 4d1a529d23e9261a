import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.pki import CSRError, LocalPKI


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
