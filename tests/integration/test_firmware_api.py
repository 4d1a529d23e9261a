"""/v1/firmware against the real Cassandra (throwaway keyspace, migrated with 008_firmware.cql)
and a real blob directory, through the app as tests/integration/test_api_devices.py drives it.

For each route: success, no credential (401), not allowed (403), conflict (409), too large (413),
bad input (400); and what ends up on disk.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.ota import signing

pytestmark = pytest.mark.integration

LIMIT = 2 << 20


@pytest.fixture(scope="module")
def vendor():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def firmware_api(api_settings, vendor, tmp_path_factory):
    """The app on the test keyspace with its own firmware directory, key and one vendor key."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    root = tmp_path_factory.mktemp("firmware")
    pem = root / "vendor.pem"
    pem.write_bytes(signing.public_pem(vendor.public_key()))
    settings = api_settings.replace(firmware_dir=root / "store", firmware_key_file=root / "pki" / "fw.key",
                                    firmware_vendor_keys=str(pem), firmware_max_image_bytes=LIMIT)
    with TestClient(create_app(settings)) as client:
        client.root = root
        yield client


def post(api, headers, body, version, device_type="thermo", extra=None):
    return api.post("/v1/firmware", content=body, params={"version": version, "device_type": device_type},
                    headers={**headers, "Content-Type": "application/octet-stream", **(extra or {})})


def test_upload_read_and_list(firmware_api, keys, uid):
    device_type = uid("fw")
    image = b"image" * 100_000  # 500 KB: well over api_max_body_bytes
    r = post(firmware_api, keys.operator, (image[i:i + 65536] for i in range(0, len(image), 65536)), "1.0.0", device_type)
    assert r.status_code == 201, r.text
    body = r.json()
    sha = hashlib.sha256(image).hexdigest()
    assert (body["sha256"], body["size"]) == (sha, len(image))
    assert (firmware_api.root / "store" / "sha256" / sha[:2] / sha).read_bytes() == image
    public = signing.load_public_key(firmware_api.root / "pki" / "fw.key.pub")
    assert signing.verify(public, bytes.fromhex(sha), base64.b64decode(body["signature"]))
    assert firmware_api.get(f"/v1/firmware/{body['firmware_id']}", headers=keys.viewer).json() == body
    listed = firmware_api.get("/v1/firmware", params={"device_type": device_type}, headers=keys.viewer).json()
    assert listed == {"items": [body], "next_page_token": None}


def test_re_upload_is_idempotent_another_image_is_a_conflict(firmware_api, keys, uid):
    device_type = uid("fw")
    first = post(firmware_api, keys.operator, b"one", "1.0", device_type)
    assert first.status_code == 201
    again = post(firmware_api, keys.operator, b"one", "1.0", device_type)
    assert (again.status_code, again.json()) == (200, first.json())
    assert post(firmware_api, keys.operator, b"two", "1.0", device_type).status_code == 409


def test_vendor_signatures(firmware_api, keys, uid, vendor):
    device_type = uid("fw")
    image = b"vendor image"
    digest = hashlib.sha256(image).digest()
    good = base64.b64encode(signing.sign(vendor, digest)).decode()
    r = post(firmware_api, keys.operator, image, "1.0", device_type, {"X-Firmware-Signature": good})
    assert (r.status_code, r.json()["signer"]) == (201, signing.key_id(vendor.public_key()))
    bad = base64.b64encode(signing.sign(Ed25519PrivateKey.generate(), digest)).decode()
    r = post(firmware_api, keys.operator, b"other", "2.0", device_type, {"X-Firmware-Signature": bad})
    assert r.status_code == 400 and "does not verify" in r.json()["detail"]
    sha = hashlib.sha256(b"other").hexdigest()
    assert not (firmware_api.root / "store" / "sha256" / sha[:2] / sha).exists()


def test_too_large_is_413_and_leaves_nothing(firmware_api, keys, uid):
    big = b"\0" * (LIMIT + 1)
    r = post(firmware_api, keys.operator, (big[i:i + 65536] for i in range(0, len(big), 65536)), "1.0", uid("fw"))
    assert r.status_code == 413
    assert not list((firmware_api.root / "store" / "tmp").iterdir())


def test_roles_and_credentials(firmware_api, keys, uid):
    assert post(firmware_api, {}, b"x", "1.0", uid("fw")).status_code == 401
    r = post(firmware_api, keys.viewer, b"x", "1.0", uid("fw"))
    assert r.status_code == 403
    assert firmware_api.get("/v1/firmware", headers=keys.viewer).status_code == 200
    assert firmware_api.get("/v1/firmware/nope", headers=keys.viewer).status_code == 404


def test_bad_parameters_are_400(firmware_api, keys):
    r = post(firmware_api, keys.operator, b"x", "not a version")
    assert r.status_code == 400 and "version" in r.json()["detail"]
