"""/v1/devices against the real Cassandra (throwaway keyspace) and the stack's CA.

For each route: success, no credential (401), not allowed (403), not found (404), bad input (400).
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.identity import csr_pem

pytestmark = pytest.mark.integration


def test_register_with_a_csr_returns_a_certificate_for_the_device_and_the_ca_chain(api, keys, uid):
    device = uid("reg")
    r = api.post("/v1/devices", headers=keys.operator,
                 json={"device_id": device, "device_type": "thermo", "groups": ["plant-a"],
                       "metadata": {"site": "north"}, "csr": csr_pem(device)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["device_id"], body["status"], body["groups"], body["metadata"]) == \
        (device, "active", ["plant-a"], {"site": "north"})
    cert = x509.load_pem_x509_certificate(body["certificate"]["pem"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    issuing = x509.load_pem_x509_certificates(body["ca_chain"].encode())[0]
    cert.verify_directly_issued_by(issuing)
    assert body["cert_serial"] == str(cert.serial_number) == body["certificate"]["serial"]
    assert api.get(f"/v1/devices/{device}", headers=keys.viewer).json()["cert_fingerprint"] == \
        body["certificate"]["fingerprint_sha256"]


def test_register_without_an_id_takes_the_csr_cn_or_generates_one(api, keys, uid):
    device = uid("cn")
    assert api.post("/v1/devices", headers=keys.operator, json={"csr": csr_pem(device)}).json()["device_id"] == device
    generated = api.post("/v1/devices", headers=keys.operator, json={}).json()
    assert generated["device_id"].startswith("dev-") and generated["cert_serial"] is None


def test_register_twice_is_a_conflict(api, keys, uid):
    device = uid("dup")
    assert api.post("/v1/devices", headers=keys.operator, json={"device_id": device}).status_code == 201
    r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device})
    assert (r.status_code, r.json()) == (409, {"detail": f"device {device!r} already exists"})


@pytest.mark.parametrize("make_csr, detail", [
    (lambda d: "not a csr", "not a PEM-encoded certificate signing request"),
    (lambda d: csr_pem(d, rsa.generate_private_key(65537, 1024)),
     "RSA key of 1024 bits is too weak; at least 2048 required"),
    (lambda d: csr_pem(d, ec.generate_private_key(ec.SECP256K1())),
     "unsupported elliptic curve secp256k1; use secp256r1 or secp384r1"),
    (lambda d: csr_pem("someone-else"), "the CSR's common name 'someone-else' does not match '{d}'"),
    (lambda d: csr_pem(None), "the CSR has no common name; it must be '{d}'"),
])
def test_bad_csrs_are_400_with_the_reason_and_nothing_is_registered(api, keys, uid, make_csr, detail):
    device = uid("badcsr")
    r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": make_csr(device)})
    assert r.status_code == 400
    assert r.json()["detail"].startswith(detail.format(d=device))
    assert api.get(f"/v1/devices/{device}", headers=keys.viewer).status_code == 404


@pytest.mark.parametrize("body, detail", [
    ({"device_id": "a/b"}, "device id 'a/b' is not well-formed: 1-64 letters, digits, '-' or '_', "
                           "starting with a letter or digit"),
    ({"groups": ["no spaces"]}, "group 'no spaces' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', "
                                "starting with a letter or digit"),
])
def test_bad_fields_are_400(api, keys, body, detail):
    r = api.post("/v1/devices", headers=keys.operator, json=body)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


def test_unknown_fields_are_422(api, keys):
    assert api.post("/v1/devices", headers=keys.operator, json={"colour": "red"}).status_code == 422


@pytest.mark.parametrize("method, path", [
    ("get", "/v1/devices"), ("post", "/v1/devices"), ("get", "/v1/devices/x"), ("patch", "/v1/devices/x"),
    ("delete", "/v1/devices/x"), ("get", "/v1/devices/x/certificates"),
])
def test_every_device_route_needs_a_credential(api, method, path):
    r = api.request(method.upper(), path, json={} if method in ("post", "patch") else None)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing credential: send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'"}


@pytest.mark.parametrize("method, path", [
    ("post", "/v1/devices"), ("patch", "/v1/devices/x"), ("delete", "/v1/devices/x"),
    ("post", "/v1/devices/x/certificates"),
])
def test_a_viewer_cannot_change_anything(api, keys, method, path):
    r = api.request(method.upper(), path, headers=keys.viewer, json={"csr": "x"} if method == "post" else {})
    assert r.status_code == 403
    assert r.json() == {"detail": "this needs the operator role; the credential has viewer"}


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_unknown_device_is_404(api, keys, method):
    r = api.request(method.upper(), "/v1/devices/no-such-device", headers=keys.operator,
                    json={} if method == "patch" else None)
    assert (r.status_code, r.json()) == (404, {"detail": "device 'no-such-device' not found"})


def test_list_filters_by_status_group_type_and_metadata_and_pages(api, keys, uid):
    group = uid("grp")
    ids = sorted(uid("lst") for _ in range(5))
    for i, device in enumerate(ids):
        api.post("/v1/devices", headers=keys.operator,
                 json={"device_id": device, "groups": [group], "device_type": "even" if i % 2 == 0 else "odd",
                       "metadata": {"n": str(i)}}).raise_for_status()
    api.patch(f"/v1/devices/{ids[1]}", headers=keys.operator, json={"status": "disabled"}).raise_for_status()

    def listed(**params):
        return [d["device_id"] for d in api.get("/v1/devices", headers=keys.viewer,
                                               params={"group": group, **params}).json()["items"]]

    assert listed() == ids
    assert listed(type="even") == [ids[0], ids[2], ids[4]]
    assert listed(**{"metadata.n": "3"}) == [ids[3]]
    assert listed(status="disabled") == [ids[1]]
    assert [d["device_id"] for d in api.get("/v1/devices", headers=keys.viewer,
                                            params={"status": "disabled"}).json()["items"]].count(ids[1]) == 1
    pages, token = [], None
    while True:
        params = {"group": group, "limit": 2, **({"page_token": token} if token else {})}
        page = api.get("/v1/devices", headers=keys.viewer, params=params).json()
        pages.append([d["device_id"] for d in page["items"]])
        token = page["next_page_token"]
        if not token:
            break
    assert [d for p in pages for d in p] == ids and all(len(p) <= 2 for p in pages)


@pytest.mark.parametrize("params, detail", [
    ({"page_token": "garbage"}, "'page_token' is not a token this API issued"),
    ({"group": "bad group"}, "group 'bad group' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', "
                             "starting with a letter or digit"),
])
def test_bad_list_parameters_are_400(api, keys, params, detail):
    r = api.get("/v1/devices", headers=keys.viewer, params=params)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


def test_patch_replaces_metadata_and_groups(api, keys, uid):
    device = uid("patch")
    api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "groups": ["a"],
                                                        "metadata": {"k": "v"}}).raise_for_status()
    r = api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"groups": ["b", "c"], "metadata": {"x": "y"}})
    assert r.status_code == 200 and (r.json()["groups"], r.json()["metadata"], r.json()["cutoff"]) == \
        (["b", "c"], {"x": "y"}, None)
    listed = api.get("/v1/devices", headers=keys.viewer, params={"group": "a"}).json()["items"]
    assert device not in [d["device_id"] for d in listed]


def test_a_revoked_device_cannot_come_back(api, keys, uid):
    device = uid("rev")
    api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": csr_pem(device)}).raise_for_status()
    assert api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "revoked"}).status_code == 200
    r = api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "active"})
    assert (r.status_code, r.json()) == (409, {"detail": "a revoked device cannot change status; register a new device"})
    certs = api.get(f"/v1/devices/{device}/certificates", headers=keys.viewer).json()
    assert [c["status"] for c in certs] == ["revoked"]


def test_delete_revokes_the_certificates(api, keys, uid):
    device = uid("del")
    serial = api.post("/v1/devices", headers=keys.operator,
                      json={"device_id": device, "csr": csr_pem(device)}).json()["cert_serial"]
    r = api.delete(f"/v1/devices/{device}", headers=keys.operator)
    assert r.status_code == 200 and r.json()["revoked_serials"] == [serial]
    assert r.json()["cutoff"]["error"] is None
    assert api.get(f"/v1/devices/{device}", headers=keys.viewer).status_code == 404


# -- group-scoped keys ---------------------------------------------------------------------------
def test_a_scoped_key_sees_and_touches_only_its_groups(api, keys, uid):
    mine, other = uid("scope-mine"), uid("scope-other")
    g_mine, g_other = uid("gm"), uid("go")
    api.post("/v1/devices", headers=keys.operator, json={"device_id": mine, "groups": [g_mine]}).raise_for_status()
    api.post("/v1/devices", headers=keys.operator, json={"device_id": other, "groups": [g_other]}).raise_for_status()
    scoped = keys.make("operator", groups=[g_mine])

    listed = [d["device_id"] for d in api.get("/v1/devices", headers=scoped, params={"limit": 1000}).json()["items"]]
    assert mine in listed and other not in listed
    assert api.get(f"/v1/devices/{mine}", headers=scoped).status_code == 200
    for method in ("GET", "PATCH", "DELETE"):
        r = api.request(method, f"/v1/devices/{other}", headers=scoped, json={} if method == "PATCH" else None)
        assert (r.status_code, r.json()) == (404, {"detail": f"device {other!r} not found"})
    r = api.post("/v1/devices", headers=scoped, json={"device_id": uid("scope-new"), "groups": [g_other]})
    assert (r.status_code, r.json()) == (403, {"detail": f"this key is scoped to groups [{g_mine}]; "
                                                         f"it cannot use groups [{g_other}]"})
    r = api.patch(f"/v1/devices/{mine}", headers=scoped, json={"groups": [g_other]})
    assert r.status_code == 403
