"""The content-addressed blob store (fleet/ota/store.py) on a temporary directory."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleet.ota.errors import FirmwareError
from fleet.ota.store import Blob, FilesystemBlobStore

CHUNK = bytes(range(256)) * 256  # 64 KiB


def chunks(n: int, chunk: bytes = CHUNK):
    for _ in range(n):
        yield chunk


def leftovers(store: FilesystemBlobStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_a_streamed_put_is_hashed_counted_and_named_by_its_digest(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    blob = store.put(chunks(20), max_bytes=10 << 20)
    expected = hashlib.sha256(CHUNK * 20).hexdigest()
    assert blob == Blob(expected, 20 * len(CHUNK))
    assert store.path(expected) == tmp_path / "sha256" / expected[:2] / expected
    assert store.exists(expected) and leftovers(store) == [f"sha256/{expected[:2]}/{expected}"]
    assert b"".join(store.open_range(expected)) == CHUNK * 20


def test_the_chunks_are_consumed_as_they_come_not_buffered(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    seen = []

    def watched():
        for i in range(5):
            if i:  # the previous chunk is on disk before the next is asked for
                seen.append(sum(p.stat().st_size for p in (tmp_path / "tmp").iterdir()))
            yield CHUNK

    store.put(watched(), max_bytes=1 << 20)
    assert seen == [len(CHUNK) * i for i in range(1, 5)]


def test_range_reads(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    data = CHUNK * 40  # 2.5 MiB: a range crosses the reader's 1 MiB chunks
    sha = store.put([data], max_bytes=len(data)).sha256
    for start, end in ((0, 10), (100, 3 << 20), (len(data) - 1, None), (len(data), None), (1 << 20, (1 << 20) + 5)):
        assert b"".join(store.open_range(sha, start, end)) == data[start:end]
    with pytest.raises(FirmwareError, match="outside"):
        store.open_range(sha, len(data) + 1)
    with pytest.raises(FirmwareError) as err:
        store.open_range("0" * 64)
    assert err.value.code == "not_found"


def test_the_limit_is_hit_mid_stream_and_leaves_no_file(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    pulled = []

    def endless():
        while True:
            pulled.append(1)
            yield CHUNK

    with pytest.raises(FirmwareError, match="larger than") as err:
        store.put(endless(), max_bytes=3 * len(CHUNK) + 1)
    assert err.value.code == "too_large" and len(pulled) == 4  # stopped at the chunk that crossed it
    assert leftovers(store) == []
    assert store.put(chunks(3), max_bytes=3 * len(CHUNK)).size == 3 * len(CHUNK)  # exactly the limit is fine


def test_any_failure_mid_stream_or_a_refusal_leaves_no_file(tmp_path):
    store = FilesystemBlobStore(tmp_path)

    def broken():
        yield CHUNK
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put(broken(), max_bytes=1 << 20)

    def refuse(blob):
        raise FirmwareError("bad_request", "bad signature")

    with pytest.raises(FirmwareError, match="bad signature"):
        store.put(chunks(2), max_bytes=1 << 20, accept=refuse)
    assert leftovers(store) == [] and not store.exists(hashlib.sha256(CHUNK * 2).hexdigest())


def test_concurrent_identical_puts_end_with_one_whole_blob(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    gate = threading.Barrier(8)

    def put(_):
        def synced():
            gate.wait(timeout=30)  # every put has its temp file open at once
            yield from chunks(8)
        return store.put(synced(), max_bytes=1 << 20)

    with ThreadPoolExecutor(8) as pool:
        blobs = set(pool.map(put, range(8)))
    (blob,) = blobs
    assert leftovers(store) == [f"sha256/{blob.sha256[:2]}/{blob.sha256}"]
    assert hashlib.sha256(b"".join(store.open_range(blob.sha256))).hexdigest() == blob.sha256


def test_delete_and_bad_digests(tmp_path):
    store = FilesystemBlobStore(tmp_path)
    sha = store.put([b"x"], max_bytes=1).sha256
    assert store.delete(sha) and not store.delete(sha) and not store.exists(sha)
    with pytest.raises(FirmwareError, match="not a SHA-256"):
        store.exists("../../etc/passwd")


def test_the_file_is_fsynced_before_it_takes_its_name(tmp_path, monkeypatch):
    store = FilesystemBlobStore(tmp_path)
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("rename"), real_replace(a, b))[1])
    store.put([b"abc"], max_bytes=10)
    assert order == ["fsync", "rename", "fsync"]  # the file, the rename, its directory
