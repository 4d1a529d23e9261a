"""GET /v1/ota/download/{deployment_id} in-process: the router on its own FastAPI app, the real blob store on a
temporary directory, the OTA tables as dicts (app.dependency_overrides); no Cassandra."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api import errors
from api.deps import get_stores
from api.routes import ota_download
from fleet.config import Settings
from fleet.infra.cassandra import StoreUnavailable
from fleet.ota import download_urls
from fleet.ota.catalog import FirmwareRecord
from fleet.ota.download import DownloadGate
from fleet.ota.store import READ_CHUNK, FilesystemBlobStore
from tests.unit.test_ota_download import FakeSession

KEY = b"k" * 32
IMAGE = bytes(range(256)) * (READ_CHUNK * 5 // 2 // 256)  # 2.5 MiB: several of the store's chunks
SHA = hashlib.sha256(IMAGE).hexdigest()
ETAG = f'"{SHA}"'


class Assignments:
    def __init__(self):
        self.firmware = {"dep1": "fw1"}
        self.executions = {("dep1", "d1"): "NOTIFIED", ("dep1", "d2"): "DOWNLOADING"}
        self.down = False

    def firmware_id(self, deployment_id):
        if self.down:
            raise StoreUnavailable("Cassandra at 127.0.0.1:9042 is unreachable")
        return self.firmware.get(deployment_id)

    def execution_state(self, deployment_id, device_id):
        return self.executions.get((deployment_id, device_id))


class World:
    def __init__(self, tmp_path):
        self.blobs = FilesystemBlobStore(tmp_path / "firmware")
        blob = self.blobs.put([IMAGE], max_bytes=len(IMAGE))
        self.record = FirmwareRecord("fw1", "thermo", "1.0", blob.sha256, blob.size, b"s" * 64, "k", "", 0, "alice")
        self.records = {"fw1": self.record}
        self.assignments = Assignments()
        self.gate = DownloadGate(KEY, self.assignments, self.records.get)
        app = FastAPI()
        errors.install(app, 1 << 20)
        app.include_router(ota_download.router)
        app.state.settings = Settings(var_dir=tmp_path)
        app.dependency_overrides.update({ota_download.get_download_gate: lambda: self.gate,
                                         ota_download.get_download_blobs: lambda: self.blobs})
        self.app = app


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    with TestClient(world.app, raise_server_exceptions=False) as world.client:
        yield world


def url(dep="dep1", device="d1", fw="fw1", ttl=3600, now=None):
    return download_urls.download_path(KEY, dep, device, fw, time.time() if now is None else now, ttl)


def get(w, path=None, **headers):
    return w.client.get(path or url(), headers=headers)


def metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_whole_image_with_its_etag_and_accept_ranges(w):
    sent, ok = metric("fleet_api_ota_download_bytes_total"), metric("fleet_api_ota_downloads_total", status="200")
    done = metric("fleet_api_ota_downloads_completed_total")
    r = get(w)
    assert r.status_code == 200, r.text
    assert r.content == IMAGE
    assert r.headers["content-length"] == str(len(IMAGE)) and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes" and r.headers["etag"] == ETAG and "content-range" not in r.headers
    assert metric("fleet_api_ota_download_bytes_total") - sent == len(IMAGE)
    assert metric("fleet_api_ota_downloads_total", status="200") - ok == 1
    assert metric("fleet_api_ota_downloads_completed_total") - done == 1


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 1),
    ("bytes=10-99", 10, 100),
    (f"bytes={READ_CHUNK - 5}-{READ_CHUNK + 5}", READ_CHUNK - 5, READ_CHUNK + 6),  # across a chunk boundary
    ("bytes=1000-", 1000, len(IMAGE)),
    ("bytes=-100", len(IMAGE) - 100, len(IMAGE)),
    (f"bytes=5-{len(IMAGE) * 2}", 5, len(IMAGE)),
    (f"bytes=-{len(IMAGE) * 2}", 0, len(IMAGE)),
])
def test_one_range_is_a_206_with_content_range(w, header, start, end):
    sent = metric("fleet_api_ota_download_bytes_total")
    r = get(w, Range=header)
    assert r.status_code == 206, r.text
    assert r.content == IMAGE[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(IMAGE)}"
    assert r.headers["content-length"] == str(end - start) and r.headers["etag"] == ETAG
    assert metric("fleet_api_ota_download_bytes_total") - sent == end - start


def test_an_interrupted_download_resumes_where_it_stopped(w):
    got = bytearray()
    with w.client.stream("GET", url()) as r:  # the device hangs up after the first chunk
        assert r.status_code == 200
        got += next(r.iter_raw())
    assert 0 < len(got) < len(IMAGE)
    r = get(w, Range=f"bytes={len(got)}-", **{"If-Range": r.headers["etag"]})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes {len(got)}-{len(IMAGE) - 1}/{len(IMAGE)}"
    got += r.content
    assert hashlib.sha256(got).hexdigest() == SHA


@pytest.mark.parametrize("header", [f"bytes={len(IMAGE)}-", f"bytes={len(IMAGE) + 5}-{len(IMAGE) + 9}", "bytes=-0"])
def test_a_range_past_the_end_is_a_416_naming_the_size(w, header):
    r = get(w, Range=header)
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(IMAGE)}"
    assert r.headers["content-type"] == "application/json" and r.json()["detail"]


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-1", "bytes=9-2", "bytes=x-"])
def test_several_ranges_another_unit_or_a_malformed_range_get_the_whole_image(w, header):
    r = get(w, Range=header)
    assert r.status_code == 200 and r.content == IMAGE


def test_if_range_serves_the_range_only_for_this_images_etag(w):
    assert get(w, Range="bytes=0-9", **{"If-Range": ETAG}).status_code == 206
    for other in ('"' + "0" * 64 + '"', f"W/{ETAG}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        r = get(w, Range="bytes=0-9", **{"If-Range": other})
        assert r.status_code == 200 and r.content == IMAGE  # the device's part is of another image: start again


def test_a_bad_signature_is_a_403(w):
    refused = metric("fleet_api_ota_downloads_total", status="403")
    path = url()
    q = parse_qs(urlsplit(path).query)
    tampered = path.replace(q["sig"][0], q["sig"][0][::-1])
    for bad in (tampered, path.replace(f"exp={q['exp'][0]}", f"exp={int(q['exp'][0]) + 3600}"),
                url(fw="fw2"), download_urls.download_path(b"x" * 32, "dep1", "d1", "fw1", time.time(), 60)):
        r = get(w, bad)
        assert r.status_code == 403 and "signature" in r.json()["detail"], r.text
    assert metric("fleet_api_ota_downloads_total", status="403") - refused == 4


def test_an_expired_url_is_a_403_that_says_so(w):
    r = get(w, url(now=time.time() - 7200))
    assert r.status_code == 403 and "expired" in r.json()["detail"]


def test_another_devices_url_is_a_403(w):
    path = url(device="d1").replace("device=d1", "device=d2")  # d2 is assigned too, but the URL is d1's
    r = get(w, path)
    assert r.status_code == 403 and "signature" in r.json()["detail"]


@pytest.mark.parametrize("state", ["SUCCEEDED", "CANCELED", "FAILED", "ALREADY_INSTALLED"])
def test_a_device_whose_execution_is_final_is_not_assigned(w, state):
    w.assignments.executions[("dep1", "d1")] = state
    r = get(w)
    assert r.status_code == 403 and "not assigned" in r.json()["detail"]


def test_a_device_notified_before_its_execution_row_landed_downloads(w):
    del w.assignments.executions[("dep1", "d1")]
    assert get(w).status_code == 200


def test_an_unknown_deployment_is_a_404(w):
    r = get(w, url(dep="dep9"))
    assert r.status_code == 404 and "dep9" in r.json()["detail"]


def test_a_store_that_is_down_or_an_image_that_is_gone_is_a_503(w):
    w.assignments.down = True
    r = get(w)
    assert r.status_code == 503 and "unavailable" in r.json()["detail"]
    w.assignments.down = False
    w.blobs.delete(SHA)
    r = get(w)
    assert r.status_code == 503 and SHA in r.json()["detail"]


def test_missing_query_parameters_are_a_422(w):
    assert w.client.get("/v1/ota/download/dep1?device=d1").status_code == 422
    assert w.client.get("/v1/ota/download/dep1?device=d1&exp=soon&sig=x").status_code == 422


def test_the_openapi_lists_the_answers(w):
    op = w.client.get("/openapi.json").json()["paths"]["/v1/ota/download/{deployment_id}"]["get"]
    assert {"200", "206", "403", "404", "416", "422", "503"} <= set(op["responses"])
    assert "application/octet-stream" in op["responses"]["206"]["content"]
    assert not op.get("security")  # no API key: the signed query is the credential


class FakeStores:
    def __init__(self, session):
        self._session = session

    def session(self):
        return self._session


def test_the_real_gate_reads_the_shared_key_and_the_ota_tables(tmp_path):
    world = World(tmp_path)
    key_file = tmp_path / "pki" / "ota-url.key"
    world.app.state.settings = Settings(var_dir=tmp_path, ota_url_key_file=key_file)
    del world.app.dependency_overrides[ota_download.get_download_gate]
    session = FakeSession()  # dep1 -> fw1 (sha256 "ab" * 32, 1000 bytes), (dep1, d1) DOWNLOADING
    world.app.dependency_overrides[get_stores] = lambda: FakeStores(session)
    stored = world.blobs.path("ab" * 32)  # the fake record's image (its name is all the route reads)
    stored.parent.mkdir(parents=True)
    stored.write_bytes(IMAGE[:1000])
    with TestClient(world.app, raise_server_exceptions=False) as client:
        r = client.get(download_urls.download_path(download_urls.load_or_create_key(key_file), "dep1", "d1", "fw1",
                                                   time.time(), 60), headers={"Range": "bytes=-10"})
        assert r.status_code == 206 and r.content == IMAGE[990:1000], r.text
        assert client.get(url()).status_code == 403  # signed with another key
        session.executions[("dep1", "d1")] = "CANCELED"
        r = client.get(download_urls.download_path(key_file.read_bytes(), "dep1", "d1", "fw1", time.time(), 60))
        assert r.status_code == 403 and "CANCELED" in r.json()["detail"]


def test_a_wrong_size_key_file_is_a_503_naming_it(tmp_path):
    world = World(tmp_path)
    key_file = tmp_path / "ota-url.key"
    key_file.write_bytes(b"short")
    world.app.state.settings = Settings(var_dir=tmp_path, ota_url_key_file=key_file)
    del world.app.dependency_overrides[ota_download.get_download_gate]
    world.app.dependency_overrides[get_stores] = lambda: FakeStores(FakeSession())
    with TestClient(world.app, raise_server_exceptions=False) as client:
        r = client.get(url())
        assert r.status_code == 503 and str(key_file) in r.json()["detail"]
