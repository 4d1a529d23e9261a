"""Hostile requests to the provisioning service (claim provisioning and certificate rotation, the
two consumers of device input besides the bridge): each gets its own final "rejected" answer, never
the "failed; retry later" that tells a device to send the same bytes again, and the service keeps
answering good requests. Driven through ``ProvisioningService.handle`` on the real registry/PKI.
"""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.identity.provisioning import RESPONSE_SUFFIX, provisioning_topic
from tests.integration.test_claim_provisioning import claim, provisioning  # noqa: F401 - pytest fixtures used by name
from tests.support.identity import csr_pem, new_key

pytestmark = pytest.mark.integration


def _csr(cn: str, key, algorithm: hashes.HashAlgorithm | None = None) -> str:
    algorithm = algorithm or hashes.SHA256()
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode())


def _tampered(pem: str) -> str:
    lines = pem.splitlines()
    body = lines[len(lines) // 2]
    lines[len(lines) // 2] = body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB")
    return "\n".join(lines)


BAD_CSRS = [
    "", "   ", "not a csr", "-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n",
    "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 9000 + "\n-----END CERTIFICATE REQUEST-----\n",
    _tampered(csr_pem("whatever")),  # signature no longer matches
    _csr("whatever", rsa.generate_private_key(65537, 1024)),  # too weak a key
    _csr("whatever", ec.generate_private_key(ec.SECP256R1()), hashes.SHA224()),
    csr_pem(None),  # no CN
    csr_pem("x" * 60 + ".../"),  # CN not a device id
    csr_pem("other-device"),  # a CN that is not the device's
    "\x00\udcff",
]

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=10)


def payloads(serials):
    documents = st.fixed_dictionaries(
        {"serial": st.one_of(st.sampled_from(serials), JSON_VALUES)},
        optional={"csr": st.one_of(st.sampled_from(BAD_CSRS), JSON_VALUES),
                  "metadata": st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=300), st.text(max_size=300),
                                                                     max_size=70))})
    encoded = documents.map(lambda d: json.dumps(d, allow_nan=True).encode("utf-8", "surrogatepass"))
    return st.one_of(encoded, st.binary(max_size=300), st.just(b"{" * 5000), st.just(b'{"csr": "' + b"a" * 20000 + b'"}'))


# JSON escapes that decode to lone surrogates: text no encoder (PEM, Cassandra) accepts.
SURROGATES = [b'{"serial": "SN-1", "csr": "\\udcff"}', b'{"serial": "SN-1", "csr": "x", "metadata": {"k": "\\ud800"}}',
              b'{"serial": "\\udcff", "csr": "x"}', b'{"csr": "-----BEGIN\\ud800"}']
SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def assert_final_rejection(answer) -> None:
    assert answer is not None, "no answer: the device would wait for its timeout"
    _, body = answer
    assert body["status"] == "rejected" and not body.get("retry"), body
    assert isinstance(body["reason"], str) and 0 < len(body["reason"]) <= 500, body


def test_hostile_claim_requests_are_rejected_for_good(provisioning, claim):  # noqa: F811 - pytest fixtures imported above
    claim_id, _, _, prefix = claim(allowed_serials=["SN-1"])
    topic = provisioning_topic(claim_id, "c-hostile", "request")

    @SETTINGS
    @given(payload=payloads(["SN-1", "SN-2", "bad serial"]))
    @example(payload=SURROGATES[0])
    @example(payload=SURROGATES[1])
    @example(payload=SURROGATES[2])
    @example(payload=SURROGATES[3])
    def run(payload):
        assert_final_rejection(provisioning.handle(topic, payload))

    run()
    # ...and a good request after all that is still served.
    answer = provisioning.handle(topic, json.dumps({"serial": "SN-1", "csr": csr_pem(f"{prefix}SN-1")}).encode())
    assert answer[0] == provisioning_topic(claim_id, "c-hostile", RESPONSE_SUFFIX)
    assert answer[1]["status"] == "accepted", answer


def test_hostile_rotation_requests_are_rejected_for_good(provisioning, api, keys, uid):  # noqa: F811 - pytest fixtures imported above
    device = uid("rot")
    r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": csr_pem(device, new_key())})
    assert r.status_code == 201, r.text
    topic = f"devices/{device}/certificate/request"

    @SETTINGS
    @given(payload=payloads([device]))
    @example(payload=SURROGATES[0])
    @example(payload=SURROGATES[3])
    def run(payload):
        assert_final_rejection(provisioning.handle(topic, payload))

    run()
    answer = provisioning.handle(topic, json.dumps({"csr": csr_pem(device, new_key())}).encode())
    assert answer[1]["status"] == "accepted", answer
