"""The firmware catalog (fleet/ota/catalog.py) on a fake Cassandra session, and the upload that
ties signing, blobs and catalog together (fleet/ota/firmware.py)."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.infra.migrations import MIGRATIONS_DIR, load_migration
from fleet.ota import catalog as cat
from fleet.ota import signing
from fleet.ota.catalog import CassandraCatalog, FirmwareRecord, firmware_id_of
from fleet.ota.errors import FirmwareError
from fleet.ota.firmware import FirmwareStore, Upload
from fleet.ota.signing import FirmwareKeys
from fleet.ota.store import FilesystemBlobStore

T0 = 1_717_156_800_000


class FakeSession:
    """The statements CassandraCatalog prepares, on two dicts (the tables of 008_firmware.cql)."""

    def __init__(self):
        self.by_id: dict[str, tuple] = {}
        self.by_type: dict[tuple[str, str], tuple] = {}
        self.skip_copy = False  # a crash between the insert and the by-type copy

    def prepare(self, query):
        return SimpleNamespace(query=query, fetch_size=None)

    @staticmethod
    def _rows(values):
        names = cat._COLUMNS.split(", ")
        return [SimpleNamespace(**dict(zip(names, v, strict=True))) for v in values]

    def execute(self, stmt, params):
        q = stmt.query
        if q.startswith("INSERT INTO firmware (") and q.endswith("IF NOT EXISTS"):
            applied = params[0] not in self.by_id
            self.by_id.setdefault(params[0], params)
            return SimpleNamespace(was_applied=applied)
        if q.startswith("INSERT INTO firmware_by_device_type"):
            if not self.skip_copy:
                self.by_type[(params[1], params[2])] = params
            return SimpleNamespace(was_applied=True)
        if "FROM firmware WHERE firmware_id = ?" in q:
            rows = self._rows([self.by_id[params[0]]] if params[0] in self.by_id else [])
        elif "FROM firmware_by_device_type" in q:
            device_type, after, limit = params
            rows = self._rows([v for (t, ver), v in sorted(self.by_type.items()) if t == device_type and ver > after][:limit])
        elif "token(firmware_id) > token(?)" in q:  # token order: id order will do
            after, limit = params
            rows = self._rows([v for k, v in sorted(self.by_id.items()) if k > after][:limit])
        else:
            rows = self._rows([v for _, v in sorted(self.by_id.items())][:params[0]])
        return _Result(rows)


class _Result(list):
    def one(self):
        return self[0] if self else None


def record(device_type="thermo", version="1.0.0", sha="a" * 64, **kw) -> FirmwareRecord:
    values = dict(firmware_id=firmware_id_of(device_type, version), device_type=device_type, version=version,
                  sha256=sha, size=10, signature=b"s" * 64, signer="platformkeyid0000", release_notes="",
                  created_at=T0, created_by="alice")
    return FirmwareRecord(**{**values, **kw})


def test_the_migration_creates_both_tables():
    m = load_migration(MIGRATIONS_DIR / "008_firmware.cql")
    assert [s.split("(")[0].split()[-1] for s in m.statements] == ["firmware", "firmware_by_device_type"]
    assert all("IF NOT EXISTS" in s for s in m.statements)


def test_the_id_is_the_pair_and_parameters_are_checked():
    assert firmware_id_of("thermo", "1.0") == firmware_id_of("thermo", "1.0") != firmware_id_of("thermo", "1.0.0")
    assert cat.check_version("1.2.3-rc.1+build.7") == "1.2.3-rc.1+build.7"
    for bad in ("", "-1", "1 2", "v" * 65, "1/2"):
        with pytest.raises(FirmwareError, match="version"):
            cat.check_version(bad)
    with pytest.raises(FirmwareError, match="device_type"):
        cat.check_device_type("no spaces")


def test_a_second_upload_of_the_pair_is_the_same_record_or_a_conflict():
    existing = record()
    assert cat.settle(existing, "a" * 64) is existing
    with pytest.raises(FirmwareError, match="exists with another image") as err:
        cat.settle(existing, "b" * 64)
    assert err.value.code == "conflict"


def test_create_is_unique_per_pair_idempotent_for_the_same_image_and_repairs_the_copy():
    session = FakeSession()
    catalog = CassandraCatalog(session)
    first = record()
    assert catalog.create(first) == (first, True)
    assert catalog.get(first.firmware_id) == first
    again = record(created_at=T0 + 5, created_by="bob")  # same image later: the first record stands
    assert catalog.create(again) == (first, False)
    with pytest.raises(FirmwareError, match="another image"):
        catalog.create(record(sha="b" * 64))
    session.skip_copy = True
    catalog.create(record(version="2.0"))
    assert catalog.list(device_type="thermo", limit=10)[0] == [first]
    session.skip_copy = False
    catalog.create(record(version="2.0"))  # the idempotent retry writes the missing copy
    assert [r.version for r in catalog.list(device_type="thermo", limit=10)[0]] == ["1.0.0", "2.0"]


def test_lists_page_by_device_type_in_version_order_or_over_everything():
    catalog = CassandraCatalog(FakeSession())
    for device_type, version in (("thermo", "1.0"), ("thermo", "1.1"), ("thermo", "2.0"), ("valve", "1.0")):
        catalog.create(record(device_type, version))
    page, after = catalog.list(device_type="thermo", limit=2)
    assert [r.version for r in page] == ["1.0", "1.1"] and after == "1.1"
    page, after = catalog.list(device_type="thermo", limit=2, after=after)
    assert [r.version for r in page] == ["2.0"] and after is None
    seen, after = [], None
    while True:
        page, after = catalog.list(device_type=None, limit=3, after=after)
        seen += page
        if after is None:
            break
    assert len({r.firmware_id for r in seen}) == 4


def test_cursors_round_trip_and_refuse_what_we_did_not_hand_out():
    for after in ("1.2.3", firmware_id_of("t", "1")):
        assert cat.decode_cursor(cat.encode_cursor(after)) == after
    for bad in ("garbage", cat.encode_cursor("../x"), base64.urlsafe_b64encode(b'{"after": 1}').decode()):
        with pytest.raises(ValueError):
            cat.decode_cursor(bad)


# -- the upload --------------------------------------------------------------------------------

IMAGE = b"\x7fELF firmware" * 1000
SHA = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture
def fw(tmp_path):
    vendor = Ed25519PrivateKey.generate()
    pem = tmp_path / "vendor.pem"
    pem.write_bytes(signing.public_pem(vendor.public_key()))
    keys = FirmwareKeys.from_files(tmp_path / "pki" / "fw.key", [pem])
    store = FirmwareStore(FilesystemBlobStore(tmp_path / "blobs"), CassandraCatalog(FakeSession()), keys,
                          max_bytes=len(IMAGE) * 2, clock=lambda: T0)
    store.vendor = vendor
    return store


def parts(data=IMAGE, size=4096):
    return (data[i:i + size] for i in range(0, len(data), size))


def test_an_unsigned_upload_is_signed_by_the_platform_key(fw):
    rec, created = fw.upload(Upload("1.0", "thermo", "first"), parts(), created_by="alice")
    assert created and (rec.sha256, rec.size, rec.signer, rec.created_by) == (SHA, len(IMAGE), fw.keys.platform_key_id,
                                                                               "alice")
    assert signing.verify(fw.keys.platform.public_key(), hashlib.sha256(IMAGE).digest(), rec.signature)
    assert fw.blobs.exists(SHA) and fw.get(rec.firmware_id) == rec


def test_a_vendor_signed_upload_keeps_the_vendor_signature(fw):
    sig = signing.sign(fw.vendor, hashlib.sha256(IMAGE).digest())
    rec, _ = fw.upload(Upload("1.0", "thermo", signature=base64.b64encode(sig).decode()), parts(), created_by="a")
    assert (rec.signature, rec.signer) == (sig, signing.key_id(fw.vendor.public_key()))


def test_a_bad_vendor_signature_stores_nothing(fw):
    sig = signing.sign(fw.vendor, hashlib.sha256(b"another image").digest())
    with pytest.raises(FirmwareError, match="does not verify"):
        fw.upload(Upload("1.0", "thermo", signature=base64.b64encode(sig).decode()), parts(), created_by="a")
    assert not fw.blobs.exists(SHA) and fw.get(firmware_id_of("thermo", "1.0")) is None


def test_a_re_upload_is_idempotent_and_another_image_a_conflict_that_keeps_the_first(fw):
    first, _ = fw.upload(Upload("1.0", "thermo"), parts(), created_by="alice")
    assert fw.upload(Upload("1.0", "thermo", "other notes"), parts(), created_by="bob") == (first, False)
    with pytest.raises(FirmwareError, match="another image") as err:
        fw.upload(Upload("1.0", "thermo"), parts(IMAGE + b"!"), created_by="bob")
    assert err.value.code == "conflict"
    assert not fw.blobs.exists(hashlib.sha256(IMAGE + b"!").hexdigest()) and fw.blobs.exists(SHA)


def test_bad_parameters_are_refused_before_the_body_is_read(fw):
    def untouchable():
        raise AssertionError("the body was read")
        yield b""

    for upload in (Upload("bad version", "thermo"), Upload("1.0", "bad type"), Upload("1.0", "t", signature="!!"),
                   Upload("1.0", "t", "x" * 5000)):
        with pytest.raises(FirmwareError) as err:
            fw.upload(upload, untouchable(), created_by="a")
        assert err.value.code == "bad_request"


def test_an_image_over_the_limit_is_too_large(fw):
    with pytest.raises(FirmwareError) as err:
        fw.upload(Upload("1.0", "thermo"), parts(IMAGE * 3), created_by="a")
    assert err.value.code == "too_large" and fw.get(firmware_id_of("thermo", "1.0")) is None
