"""The firmware routes in-process (app.dependency_overrides): the real upload (fleet/ota) on a
temporary blob directory and the catalog on a fake Cassandra session; no Cassandra, no Kafka."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.deps import get_audit, get_firmware, get_principal
from fleet.ota import signing
from fleet.ota.catalog import CassandraCatalog, firmware_id_of
from fleet.ota.firmware import FirmwareStore
from fleet.ota.signing import FirmwareKeys
from fleet.ota.store import FilesystemBlobStore
from tests.support.api import api_client
from tests.unit.test_api_shadow import OPERATOR_KEY, VIEWER
from tests.unit.test_ota_catalog import FakeSession

LIMIT = 64 * 1024
IMAGE = bytes(range(256)) * 40  # 10 KiB: over the small api_max_body_bytes below, under the firmware limit
SHA = hashlib.sha256(IMAGE).hexdigest()


class FakeAudit:
    def __init__(self):
        self.records = []

    def record_async(self, actor, action, target, outcome, detail):
        self.records.append((action, target, outcome, detail))

        class Done:
            def add_callbacks(self, ok, failed):
                ok(None)

        return Done()


class World:
    def __init__(self, tmp_path):
        self.principal = OPERATOR_KEY
        self.audit = FakeAudit()
        self.vendor = Ed25519PrivateKey.generate()
        pem = tmp_path / "vendor.pem"
        pem.write_bytes(signing.public_pem(self.vendor.public_key()))
        self.store = FirmwareStore(FilesystemBlobStore(tmp_path / "firmware"), CassandraCatalog(FakeSession()),
                                   FirmwareKeys.from_files(tmp_path / "pki" / "fw.key", [pem]), max_bytes=LIMIT)


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    with api_client({get_principal: lambda: world.principal, get_audit: lambda: world.audit,
                     get_firmware: lambda: world.store},
                    api_max_body_bytes=1024, firmware_max_image_bytes=LIMIT) as world.client:
        yield world


def upload(w, body=IMAGE, *, version="1.0.0", device_type="thermo", headers=None, **params):
    return w.client.post("/v1/firmware", content=body, params={"version": version, "device_type": device_type, **params},
                         headers={"Content-Type": "application/octet-stream", **(headers or {})})


def blobs(w):
    return sorted(p.name for p in (w.store.blobs.root / "sha256").rglob("*") if p.is_file()) \
        if (w.store.blobs.root / "sha256").exists() else []


def test_upload_is_201_with_the_platform_signed_record_and_audited(w):
    r = upload(w, release_notes="first")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["sha256"], body["size"], body["version"], body["device_type"], body["release_notes"],
            body["created_by"]) == (SHA, len(IMAGE), "1.0.0", "thermo", "first", "alice")
    assert body["firmware_id"] == firmware_id_of("thermo", "1.0.0")
    assert r.headers["Location"] == f"/v1/firmware/{body['firmware_id']}"
    assert body["signer"] == w.store.keys.platform_key_id
    assert signing.verify(w.store.keys.platform.public_key(), hashlib.sha256(IMAGE).digest(),
                          base64.b64decode(body["signature"]))
    assert blobs(w) == [SHA]
    (action, target, outcome, detail), = w.audit.records
    assert (action, target, outcome) == ("POST /v1/firmware", body["firmware_id"], "success")
    assert detail["sha256"] == SHA and detail["created"] is True
    assert w.client.get(f"/v1/firmware/{body['firmware_id']}").json() == body


def test_a_streamed_chunked_body_is_taken_too(w):
    r = upload(w, (IMAGE[i:i + 1000] for i in range(0, len(IMAGE), 1000)))
    assert (r.status_code, r.json()["sha256"]) == (201, SHA)


def test_re_upload_of_the_same_image_is_200_and_the_same_record_another_image_409(w):
    first = upload(w).json()
    again = upload(w, release_notes="ignored")
    assert (again.status_code, again.json()) == (200, first)
    r = upload(w, IMAGE + b"x")
    assert r.status_code == 409 and "exists with another image" in r.json()["detail"]
    assert blobs(w) == [SHA]


def test_over_the_limit_is_413_declared_or_streamed_and_nothing_is_kept(w):
    big = b"\0" * (LIMIT + 1)
    assert upload(w, big).status_code == 413  # Content-Length says so: refused before reading
    streamed = upload(w, (big[i:i + 4096] for i in range(0, len(big), 4096)))  # chunked: found out mid-stream
    assert streamed.status_code == 413 and "larger than" in streamed.json()["detail"]
    assert blobs(w) == [] and not list((w.store.blobs.root / "tmp").iterdir())
    # Other routes keep the small api_max_body_bytes.
    assert w.client.post("/v1/devices", content=b"{}" + b" " * 2000,
                         headers={"Content-Type": "application/json"}).status_code == 413


def test_a_vendor_signature_is_kept_and_a_bad_one_is_400_with_nothing_kept(w):
    digest = hashlib.sha256(IMAGE).digest()
    good = base64.b64encode(signing.sign(w.vendor, digest)).decode()
    kid = signing.key_id(w.vendor.public_key())
    bad = base64.b64encode(signing.sign(Ed25519PrivateKey.generate(), digest)).decode()
    for headers, message in (({"X-Firmware-Signature": bad}, "does not verify against any configured vendor key"),
                             ({"X-Firmware-Signature": "not base64!"}, "not base64"),
                             ({"X-Firmware-Signature": good, "X-Firmware-Signer": "0" * 16}, "unknown vendor key id"),
                             ({"X-Firmware-Signer": kid}, "without X-Firmware-Signature")):
        r = upload(w, headers=headers)
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    assert blobs(w) == []
    r = upload(w, headers={"X-Firmware-Signature": good, "X-Firmware-Signer": kid})
    assert (r.status_code, r.json()["signer"], r.json()["signature"]) == (201, kid, good)


@pytest.mark.parametrize("params, message", [
    ({"version": "1 0"}, "version '1 0' is not well-formed"),
    ({"device_type": "a/b"}, "device_type 'a/b' is not well-formed"),
    ({"release_notes": "x" * 4001}, "release_notes longer than 4000"),
])
def test_bad_parameters_are_400(w, params, message):
    r = upload(w, **params)
    assert r.status_code == 400 and message in r.json()["detail"]


def test_missing_parameters_are_422(w):
    assert w.client.post("/v1/firmware", content=IMAGE, params={"version": "1"}).status_code == 422


def test_a_viewer_may_read_but_not_upload(w):
    upload(w)
    w.principal = VIEWER
    r = upload(w, version="2.0")
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert w.client.get("/v1/firmware").status_code == 200
    assert w.client.get(f"/v1/firmware/{firmware_id_of('thermo', '1.0.0')}").status_code == 200
    assert w.client.get("/v1/firmware/nope").status_code == 404


def test_list_pages_by_device_type(w):
    for version in ("1.0", "1.1", "2.0"):
        assert upload(w, IMAGE + version.encode(), version=version).status_code == 201
    upload(w, device_type="valve")
    page = w.client.get("/v1/firmware", params={"device_type": "thermo", "limit": 2}).json()
    assert [i["version"] for i in page["items"]] == ["1.0", "1.1"]
    rest = w.client.get("/v1/firmware", params={"device_type": "thermo", "limit": 2,
                                                "page_token": page["next_page_token"]}).json()
    assert [i["version"] for i in rest["items"]] == ["2.0"] and rest["next_page_token"] is None
    assert len(w.client.get("/v1/firmware").json()["items"]) == 4
    assert w.client.get("/v1/firmware", params={"page_token": "junk"}).status_code == 400
    assert w.client.get("/v1/firmware", params={"device_type": "no spaces"}).status_code == 400


def test_openapi_documents_the_raw_body_and_the_errors(w):
    op = w.client.get("/openapi.json").json()["paths"]["/v1/firmware"]["post"]
    assert "application/octet-stream" in op["requestBody"]["content"]
    assert {"200", "201", "400", "403", "409", "413"} <= set(op["responses"])


def test_a_broken_firmware_key_file_is_a_503_that_says_what_to_fix(tmp_path):
    bad = tmp_path / "vendor.pem"
    bad.write_text("not a key")

    def broken_store():  # what api/stores.py builds on first use, with the operator's key files
        return FirmwareKeys.from_files(tmp_path / "fw.key", [bad])

    with api_client({get_principal: lambda: OPERATOR_KEY, get_audit: FakeAudit, get_firmware: broken_store},
                    api_max_body_bytes=1024, firmware_max_image_bytes=LIMIT) as client:
        r = client.get("/v1/firmware")
    assert r.status_code == 503 and "vendor key" in r.json()["detail"] and str(bad) in r.json()["detail"], r.text
