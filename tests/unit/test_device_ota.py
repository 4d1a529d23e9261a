"""The device side of OTA (device/ota*.py): the state machine, the ranged download against a tiny
local HTTP server, verification, A/B slots with boots, commit and fall back, cancel, dedup. No stack."""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import ota
from device.agent import AgentConfig, DeviceAgent
from device.identity import enroll_locally
from device.ota import OtaOptions, OtaUpdater
from device.ota_download import DownloadError, Oversize, fetch
from device.ota_faults import OtaFaults
from device.ota_slots import SlotStore
from fleet.contract.topics import Uplink
from fleet.contract.validation import default_validators
from fleet.identity.pki import LocalPKI
from fleet.ota import signing

IMAGE = random.Random(11).randbytes(300_000)
OLD, NEW = "1.0.0", "2.0.0"


# -- a tiny firmware server with Range ------------------------------------------------------------

class ImageServer:
    """Serves ``image`` at any path, honouring ``Range: bytes=N-``; can break off a response."""

    def __init__(self, image: bytes = IMAGE):
        self.image = image
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None   # the next response stops after this many body bytes
        self.ignore_range = False
        self.fail_status: int | None = None
        self.forbid: str | None = None       # a request whose path holds this gets 403 (an expired url)
        self.bytes_sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.fail_status is not None or (server.forbid and server.forbid in self.path):
                    self.send_error(server.fail_status or 403)
                    return
                data, start = server.image, 0
                if rng and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, server.drop_after = server.drop_after, None
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                    server.bytes_sent += len(body)
                    if cut is not None:
                        self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def ranges(self) -> list[str | None]:
        return [r for _, r in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    private = Ed25519PrivateKey.generate()
    pem = tmp_path_factory.mktemp("keys") / "firmware-signing.key.pub"
    pem.write_bytes(signing.public_pem(private.public_key()))
    return SimpleNamespace(private=private, pem=str(pem), id=signing.key_id(private.public_key()))


def firmware(key, image: bytes = IMAGE, version: str = NEW, **over) -> dict:
    digest = hashlib.sha256(image).digest()
    fw = {"firmware_id": "fw-2", "version": version, "sha256": digest.hex(), "size": len(image),
          "signature": base64.b64encode(signing.sign(key.private, digest)).decode(), "signer": key.id,
          "url": "/v1/ota/download/dep-1?device=d1&exp=9999999999&sig=abc"}
    fw.update(over)
    return fw


def notify(key, dep="dep-1", attempt=1, max_boots=None, **fw) -> bytes:
    msg = {"op": "install", "deployment_id": dep, "firmware": firmware(key, **fw), "attempt": attempt, "ts": 1}
    if max_boots is not None:
        msg["max_boots"] = max_boots
    return json.dumps(msg).encode()


def cancel(dep="dep-1") -> bytes:
    return json.dumps({"op": "cancel", "deployment_id": dep, "ts": 1}).encode()


# -- a device around the updater: publishes, acks, reboots ----------------------------------------

class Device:
    """What the agent does for the updater: ``emit`` records statuses (each checked against the
    schema, and each with its attempt) and acknowledges them, ``restart`` boots and reconnects, all on
    one 'loop' thread. ``install_hold`` is 0 unless a test sets it (the updater is not told of connects
    unless a test does)."""

    def __init__(self, directory, server, key, faults=None, version=OLD, ack=True, **opts):
        self.statuses: list[dict] = []
        self.restarts: list[bool] = []
        self.ack = ack
        self.cond = threading.Condition()
        self.calls: queue.Queue = queue.Queue()
        opts.setdefault("install_hold", 0.0)
        options = OtaOptions(api_base_url=server.base, trusted_keys=(key.pem,), faults=faults or OtaFaults(),
                             retry_backoff=0.01, timeout=5.0, **opts)
        self.ota = OtaUpdater(directory, version, self.emit, self.restart, options, submit=self.soon, name="test")
        self.version = self.ota.boot()
        self.validator = default_validators()[Uplink.OTA_STATUS]
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while (item := self.calls.get()) is not None:
            fn, args = item
            fn(*args)

    def soon(self, fn, *args):
        self.calls.put((fn, args))

    def emit(self, msg):
        assert msg.suffix == "ota/status"
        assert self.validator.is_valid(msg.payload), msg.payload
        assert type(msg.payload.get("attempt")) is int, msg.payload
        with self.cond:
            self.statuses.append(msg.payload)
            self.cond.notify_all()
        if msg.after_ack is not None and self.ack:
            self.soon(msg.after_ack)

    def restart(self, crash: bool):
        self.restarts.append(crash)
        self.soon(self._reboot)

    def _reboot(self):
        self.version = self.ota.boot()
        self.ota.on_connect()

    def deliver(self, raw: bytes):
        self.soon(self.ota.handle, raw)

    def wait_for(self, pred, timeout=10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for s in self.statuses:
                    if pred(s):
                        return s
                left = deadline - time.monotonic()
                assert left > 0, f"no such status; got {self.states()}"
                self.cond.wait(left)

    def wait_state(self, state, timeout=10.0) -> dict:
        return self.wait_for(lambda s: s["state"] == state, timeout)

    def settle(self, timeout=10.0):
        """Let the loop and the worker run out."""
        for _ in range(3):
            done = threading.Event()
            self.soon(done.set)
            assert done.wait(timeout)
            assert self.ota.wait_idle(timeout)

    def states(self) -> list[str]:
        with self.cond:
            out: list[str] = []
            for s in self.statuses:
                if not (out and out[-1] == s["state"] == "DOWNLOADING"):
                    out.append(s["state"])
            return out

    def progress(self) -> list[int]:
        return [s["progress"] for s in self.statuses if s["state"] == "DOWNLOADING"]

    def close(self):
        self.ota.close(5.0)
        self.calls.put(None)


@pytest.fixture
def make(tmp_path, server, key):
    made = []

    def factory(directory=tmp_path / "ota", **kw):
        d = Device(directory, server, key, **kw)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close()


HAPPY = ["RECEIVED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING", "BOOTED"]


def test_happy_path_installs_reboots_into_the_new_slot_and_commits(make, key, server, tmp_path):
    dev = make()
    dev.deliver(notify(key))
    booted = dev.wait_state("BOOTED")
    dev.settle()
    assert dev.states() == HAPPY
    assert booted["firmware_version"] == NEW and booted["boot"] == 1
    assert dev.progress() == sorted(set(dev.progress())) and dev.progress()[-1] == 100
    assert all(p % 10 == 0 for p in dev.progress())
    assert dev.restarts == [False] and dev.version == NEW
    assert dev.ota.finished("dep-1") == "COMMITTED" and dev.ota.job is None
    slots = dev.ota.slots
    assert slots.active == "b" and slots.trial() is None
    assert (tmp_path / "ota" / "slots" / "slot-b.img").read_bytes() == IMAGE
    assert not list((tmp_path / "ota" / "download").glob("*.part"))
    assert server.ranges() == [None]
    # The update survives a restart of the device: it boots the committed slot.
    again = make()
    assert again.version == NEW and again.ota.finished("dep-1") == "COMMITTED"


def test_the_download_url_is_joined_to_the_api_base(make, key, server):
    dev = make()
    dev.deliver(notify(key))
    dev.wait_state("BOOTED")
    assert server.requests[0][0] == "/v1/ota/download/dep-1?device=d1&exp=9999999999&sig=abc"


def test_an_interrupted_download_resumes_with_range(make, key, server):
    server.drop_after = 100_000
    dev = make()
    dev.deliver(notify(key))
    dev.wait_state("BOOTED")
    dev.settle()
    assert server.ranges() == [None, "bytes=100000-"]
    assert server.bytes_sent == len(IMAGE)  # nothing fetched twice
    assert dev.ota.finished("dep-1") == "COMMITTED"


def test_a_failed_attempt_keeps_its_bytes_and_the_retry_resumes(make, key, server, tmp_path):
    dev = make(faults=OtaFaults(download_failure_once=True))
    dev.deliver(notify(key))
    failed = dev.wait_state("FAILED")
    dev.settle()
    assert failed["failure"] == "download" and dev.ota.finished("dep-1") == "FAILED"
    part, = (tmp_path / "ota" / "download").glob("dep-1.*.part")
    have = part.stat().st_size
    assert len(IMAGE) // 2 <= have < len(IMAGE)
    dev.deliver(notify(key, attempt=1))  # the same attempt again: a duplicate, ignored
    dev.settle()
    assert dev.states() == ["RECEIVED", "DOWNLOADING", "FAILED"]
    dev.deliver(notify(key, attempt=2))  # the platform's retry
    dev.wait_state("BOOTED")
    assert server.ranges() == [None, f"bytes={have}-"]
    assert dev.states()[3:] == HAPPY


def test_a_download_restarted_with_the_device_resumes_where_the_file_ends(make, key, server, tmp_path):
    dev = make(faults=OtaFaults(slow_download=200_000))
    dev.deliver(notify(key))
    dev.wait_for(lambda s: s.get("progress", 0) >= 20)
    dev.close()  # power off mid-download: the job and the partial file stay
    part, = (tmp_path / "ota" / "download").glob("dep-1.*.part")
    have = part.stat().st_size
    assert 0 < have < len(IMAGE)
    again = make()
    assert again.ota.job.state == "DOWNLOADING"
    again.deliver(notify(key))  # the platform's repeated notify: resumes, not from zero
    again.wait_state("BOOTED")
    assert server.ranges()[-1] == f"bytes={have}-" and len(server.ranges()) == 2
    assert again.states()[0] == "DOWNLOADING" and "RECEIVED" not in again.states()
    assert again.progress()[0] == have * 100 // len(IMAGE) // 10 * 10


def test_after_a_restart_the_device_resumes_on_its_own_when_it_connects(make, key, server, tmp_path):
    dev = make(faults=OtaFaults(slow_download=200_000))
    dev.deliver(notify(key))
    dev.wait_for(lambda s: s.get("progress", 0) >= 20)
    dev.close()
    again = make()
    again.soon(again.ota.on_connect)
    again.wait_state("BOOTED")
    assert len(server.ranges()) == 2 and server.ranges()[1].startswith("bytes=")


def test_a_repeated_notify_for_the_deployment_in_progress_does_not_restart_it(make, key, server):
    dev = make(faults=OtaFaults(slow_download=300_000))
    dev.deliver(notify(key))
    dev.wait_for(lambda s: s.get("progress", 0) >= 10)
    dev.deliver(notify(key))
    dev.deliver(notify(key, attempt=2, url="/v1/ota/download/dep-1?fresh=1"))
    dev.wait_state("BOOTED")
    dev.settle()
    assert dev.states() == HAPPY and len(server.requests) == 1
    assert dev.ota.finished("dep-1") == "COMMITTED"


def test_a_finished_deployment_is_never_taken_again(make, key, server):
    dev = make()
    dev.deliver(notify(key))
    dev.wait_state("BOOTED")
    dev.settle()
    before = list(dev.statuses)
    dev.deliver(notify(key))
    dev.deliver(notify(key, attempt=5))
    dev.settle()
    assert dev.statuses == before and len(server.requests) == 1


def test_the_remembered_deployments_are_bounded(make, key):
    dev = make(max_remembered=3)
    for i in range(5):
        dev.deliver(notify(key, dep=f"d-{i}", version=OLD))  # already installed: finished at once
    dev.settle()
    assert [dev.ota.finished(f"d-{i}") for i in range(5)] == [None, None] + ["ALREADY_INSTALLED"] * 3


def test_the_running_version_is_already_installed(make, key, server):
    dev = make()
    dev.deliver(notify(key, version=OLD))
    status = dev.wait_state("ALREADY_INSTALLED")
    dev.settle()
    assert status["firmware_version"] == OLD and dev.states() == ["ALREADY_INSTALLED"] and server.requests == []


@pytest.mark.parametrize("how", ["fault", "server"])
def test_a_sha256_mismatch_is_rejected_and_never_installed(make, key, server, tmp_path, how):
    if how == "server":
        server.image = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])  # the store's bytes changed under the record
    dev = make(faults=OtaFaults(corrupt_download=(how == "fault")))
    dev.deliver(notify(key))
    rejected = dev.wait_state("REJECTED")
    dev.settle()
    assert rejected["error"] == "tampered"
    assert "INSTALLING" not in dev.states() and dev.version == OLD and dev.ota.slots.trial() is None
    assert not list((tmp_path / "ota" / "download").glob("*.part"))
    assert not (tmp_path / "ota" / "slots").exists()
    dev.deliver(notify(key, attempt=2))
    dev.settle()
    assert dev.states()[-1] == "REJECTED" and len(server.requests) == 1  # refused for good


def test_more_bytes_than_the_size_is_tampered(make, key, server):
    server.image = IMAGE + b"extra"
    dev = make()
    dev.deliver(notify(key))  # the notify's size and sha256 are those of IMAGE
    assert dev.wait_state("REJECTED")["error"] == "tampered"


def test_a_bad_signature_is_rejected(make, key):
    dev = make(faults=OtaFaults(bad_signature=True))
    dev.deliver(notify(key))
    assert dev.wait_state("REJECTED")["error"] == "bad_signature"
    dev.settle()
    assert dev.states() == ["RECEIVED", "DOWNLOADING", "REJECTED"] and dev.version == OLD


def test_a_signature_by_another_key_is_rejected(make, key):
    other = Ed25519PrivateKey.generate()
    sig = base64.b64encode(other.sign(hashlib.sha256(IMAGE).digest())).decode()
    dev = make()
    dev.deliver(notify(key, signature=sig))  # claims our signer, signed by another key
    assert dev.wait_state("REJECTED")["error"] == "bad_signature"
    dev.deliver(notify(key, dep="dep-2", signer=signing.key_id(other.public_key()), signature=sig))
    assert dev.wait_for(lambda s: s["deployment_id"] == "dep-2" and s["state"] == "REJECTED")["error"] == "unknown_signer"


def test_without_a_readable_trusted_key_verification_fails(make, key, tmp_path):
    dev = make()
    dev.ota.options = OtaOptions(api_base_url=dev.ota.options.api_base_url, trusted_keys=(str(tmp_path / "nope.pem"),))
    dev.deliver(notify(key))
    failed = dev.wait_state("FAILED")
    assert failed["failure"] == "verify" and "INSTALLING" not in dev.states()


def test_an_install_failure_keeps_the_old_image(make, key):
    dev = make(faults=OtaFaults(install_failure=True))
    dev.deliver(notify(key))
    failed = dev.wait_state("FAILED")
    dev.settle()
    assert failed["failure"] == "install" and dev.states() == ["RECEIVED", "DOWNLOADING", "DOWNLOADED", "INSTALLING",
                                                               "FAILED"]
    assert dev.version == OLD and dev.ota.slots.trial() is None and dev.restarts == []


def test_a_crash_loop_boots_the_new_image_max_boots_times_then_rolls_back(make, key):
    dev = make(faults=OtaFaults(crash_loop=True), max_boots=2)
    dev.deliver(notify(key))
    rolled = dev.wait_state("ROLLED_BACK")
    dev.settle()
    assert dev.states() == HAPPY + ["BOOTED", "ROLLED_BACK"]
    assert [s["boot"] for s in dev.statuses if s["state"] == "BOOTED"] == [1, 2]
    assert rolled["firmware_version"] == OLD and rolled["error"] == "crash_loop"
    assert dev.restarts == [False, True, True]  # the update's reboot, then two crashes
    assert dev.version == OLD and dev.ota.slots.active == "a" and dev.ota.slots.trial() is None
    assert dev.ota.finished("dep-1") == "ROLLED_BACK"
    again = make()
    assert again.version == OLD


def test_a_failing_self_test_falls_back_at_once(make, key):
    dev = make()
    dev.ota.self_test = lambda: False
    dev.deliver(notify(key))
    rolled = dev.wait_state("ROLLED_BACK")
    assert rolled["error"] == "self_test_failed" and rolled["firmware_version"] == OLD
    assert dev.restarts == [False, False] and dev.states() == HAPPY + ["ROLLED_BACK"]


def test_a_device_killed_before_its_commit_counts_the_boot(make, key, tmp_path):
    dev = make()
    dev.ota.self_test = lambda: (_ for _ in ()).throw(SystemError("never gets here"))
    dev.ack = False  # REBOOTING never acknowledged: the device goes down before anything else
    dev.deliver(notify(key))
    dev.wait_state("REBOOTING")
    dev.settle()
    dev.close()
    again = make()  # power on: the bootloader boots the trial slot (boot 1)
    assert again.version == NEW
    again.soon(again.ota.on_connect)
    assert again.wait_state("BOOTED")["boot"] == 1
    again.settle()
    assert again.ota.finished("dep-1") == "COMMITTED"


def test_cancel_mid_download_stops_and_discards(make, key, server, tmp_path):
    dev = make(faults=OtaFaults(slow_download=100_000))
    dev.deliver(notify(key))
    dev.wait_for(lambda s: s.get("progress", 0) >= 10)
    dev.deliver(cancel())
    dev.settle()
    time.sleep(0.3)
    assert dev.states() == ["RECEIVED", "DOWNLOADING"] and dev.ota.finished("dep-1") == "CANCELED"
    assert not list((tmp_path / "ota" / "download").glob("*.part"))
    dev.deliver(notify(key, attempt=2))
    dev.settle()
    assert dev.states() == ["RECEIVED", "DOWNLOADING"]


def test_cancel_of_a_stalled_download(make, key, tmp_path):
    dev = make(faults=OtaFaults(stall=True))
    dev.deliver(notify(key))
    dev.wait_state("DOWNLOADING")
    time.sleep(0.3)
    assert dev.states() == ["RECEIVED", "DOWNLOADING"] and dev.progress() == [0]
    dev.deliver(cancel())
    dev.settle()
    assert dev.ota.finished("dep-1") == "CANCELED" and dev.ota.job is None


def test_cancel_once_installing_runs_on_to_the_outcome(make, key):
    dev = make(ack=False)
    dev.deliver(notify(key))
    dev.wait_state("REBOOTING")
    dev.deliver(cancel())
    dev.settle()
    assert dev.ota.job.state == "REBOOTING" and dev.ota.finished("dep-1") is None
    dev.restart(False)  # the acknowledgement's reboot
    dev.wait_state("BOOTED")


def test_a_cancel_before_the_notify_makes_the_device_ignore_it(make, key, server):
    dev = make()
    dev.deliver(cancel("dep-9"))
    dev.deliver(notify(key, dep="dep-9"))
    dev.settle()
    assert dev.statuses == [] and server.requests == []


def test_a_newer_deployment_replaces_one_still_downloading(make, key, tmp_path):
    dev = make(faults=OtaFaults(slow_download=100_000))
    dev.deliver(notify(key))
    dev.wait_for(lambda s: s.get("progress", 0) >= 10)
    dev.ota.options = OtaOptions(api_base_url=dev.ota.options.api_base_url, trusted_keys=(key.pem,))
    dev.deliver(notify(key, dep="dep-2"))
    dev.wait_for(lambda s: s["deployment_id"] == "dep-2" and s["state"] == "BOOTED")
    assert dev.ota.finished("dep-1") == "CANCELED"


def test_malformed_notifies(make, key, server):
    dev = make()
    for raw in (b"", b"{", b"[]", b'{"op":"install"}', b'{"op":"install","deployment_id":"../x"}',
                b'{"op":"reboot","deployment_id":"d"}'):
        dev.deliver(raw)
    dev.deliver(notify(key, dep="bad-1", sha256="zz"))
    dev.deliver(notify(key, dep="bad-2", url="ftp://elsewhere/x"))
    dev.settle()
    assert [(s["deployment_id"], s["state"]) for s in dev.statuses] == [("bad-1", "REJECTED"), ("bad-2", "REJECTED")]
    assert all(s["error"].startswith("invalid_notify: ") for s in dev.statuses) and server.requests == []


def test_a_device_type_mismatch_is_rejected(make, key):
    dev = make(device_type="sensor")
    dev.deliver(notify(key, device_type="camera"))
    assert dev.wait_state("REJECTED")["error"] == "wrong_device_type"


def test_without_a_state_directory_the_files_live_in_a_temporary_one(make, key):
    dev = make(directory=None)
    dev.deliver(notify(key))
    dev.wait_state("BOOTED")
    dev.settle()
    tmp = dev.ota._tmp
    assert tmp is not None and (tmp / "slots" / "slot-b.img").exists()
    dev.close()
    assert not tmp.exists()


# -- attempts, fresh urls, the deployment's max_boots, cancel around a reconnect ------------------

def test_every_report_carries_the_attempt_of_its_notify(make, key, server):
    dev = make(faults=OtaFaults(download_failure_once=True))
    dev.deliver(notify(key))
    dev.wait_state("FAILED")
    dev.settle()
    assert {s["attempt"] for s in dev.statuses} == {1}
    dev.deliver(notify(key, attempt=2))  # the platform's retry: its reports say 2, a late FAILED of 1 is dropped
    dev.wait_state("BOOTED")
    dev.settle()
    assert [(s["state"], s["attempt"]) for s in dev.statuses if s["state"] != "DOWNLOADING"] == [
        ("RECEIVED", 1), ("FAILED", 1), ("RECEIVED", 2), ("DOWNLOADED", 2), ("INSTALLING", 2), ("REBOOTING", 2),
        ("BOOTED", 2)]
    dev.deliver(notify(key, dep="dep-2", attempt=3, version=NEW))  # running it already
    dev.deliver(notify(key, dep="dep-3", attempt=4, sha256="zz"))
    dev.settle()
    assert [(s["deployment_id"], s["state"], s["attempt"]) for s in dev.statuses[-2:]] == [
        ("dep-2", "ALREADY_INSTALLED", 3), ("dep-3", "REJECTED", 4)]


def test_a_busy_refusal_and_a_roll_back_carry_the_attempt(make, key):
    dev = make(faults=OtaFaults(crash_loop=True), ack=False)
    dev.deliver(notify(key, attempt=2))
    dev.wait_state("REBOOTING")
    dev.deliver(notify(key, dep="dep-2", attempt=5))
    busy = dev.wait_for(lambda s: s["deployment_id"] == "dep-2")
    assert (busy["state"], busy["failure"], busy["attempt"]) == ("FAILED", "install", 5)
    dev.ack = True
    dev.restart(False)
    assert dev.wait_state("ROLLED_BACK")["attempt"] == 2
    assert {s["attempt"] for s in dev.statuses if s["deployment_id"] == "dep-1"} == {2}


def test_a_notify_of_the_same_attempt_and_image_replaces_the_url_on_disk_too(make, key, server, tmp_path):
    dev = make(faults=OtaFaults(stall=True))
    dev.deliver(notify(key, attempt=2))
    dev.wait_state("DOWNLOADING")
    dev.deliver(notify(key, attempt=2, url="/v1/ota/download/dep-1?sig=other", sha256="1" * 64))
    dev.deliver(notify(key, attempt=2, url="/v1/ota/download/dep-1?sig=fresh"))
    dev.deliver(notify(key, attempt=1, url="/v1/ota/download/dep-1?sig=late"))
    handled = threading.Event()
    dev.soon(handled.set)
    assert handled.wait(5)
    assert dev.ota.job.firmware["url"] == "/v1/ota/download/dep-1?sig=fresh" and dev.ota.job.attempt == 2
    saved = json.loads((tmp_path / "ota" / "state.json").read_text())["job"]
    assert saved["firmware"]["url"] == "/v1/ota/download/dep-1?sig=fresh"


def test_back_after_the_url_expired_the_device_waits_for_the_fresh_one_and_resumes(make, key, server, tmp_path):
    stale = "/v1/ota/download/dep-1?device=d1&exp=1000&sig=stale"  # exp long past
    dev = make(faults=OtaFaults(slow_download=200_000))
    dev.deliver(notify(key, url=stale))
    dev.wait_for(lambda s: s.get("progress", 0) >= 20)
    dev.close()  # away for longer than the url lives
    part, = (tmp_path / "ota" / "download").glob("dep-1.*.part")
    have = part.stat().st_size
    server.forbid = "sig=stale"
    again = make()
    again.soon(again.ota.on_connect)
    again.settle()
    assert len(server.requests) == 1 and again.statuses == [] and again.ota.job.state == "DOWNLOADING"
    fresh = "/v1/ota/download/dep-1?device=d1&exp=9999999999&sig=fresh"
    again.deliver(notify(key, url=fresh))  # the platform's notify on reconnect: same attempt, new url
    again.wait_state("BOOTED")
    assert server.requests[1:] == [(fresh, f"bytes={have}-")]
    again.settle()
    assert "FAILED" not in again.states() and again.ota.finished("dep-1") == "COMMITTED"


def test_the_notify_max_boots_replaces_the_devices_own(make, key, tmp_path):
    dev = make(faults=OtaFaults(crash_loop=True), max_boots=2)
    dev.deliver(notify(key, max_boots=3))
    dev.wait_state("ROLLED_BACK")
    dev.settle()
    assert [s["boot"] for s in dev.statuses if s["state"] == "BOOTED"] == [1, 2, 3]
    dev.deliver(notify(key, dep="dep-2", max_boots="many"))  # not an integer: the device's own
    dev.wait_for(lambda s: s["deployment_id"] == "dep-2" and s["state"] == "ROLLED_BACK")
    assert [s["boot"] for s in dev.statuses if s["deployment_id"] == "dep-2" and s["state"] == "BOOTED"] == [1, 2]


def test_max_boots_is_clamped_as_the_platform_does_and_kept_with_the_job(make, key, tmp_path):
    assert [ota.parse_max_boots(v) for v in (0, 1, 7, 50, True, "3", None, 2.0)] == [1, 1, 7, 20, None, None,
                                                                                      None, None]
    dev = make(faults=OtaFaults(stall=True))
    dev.deliver(notify(key, max_boots=4))
    dev.wait_state("DOWNLOADING")
    dev.close()
    assert json.loads((tmp_path / "ota" / "state.json").read_text())["job"]["max_boots"] == 4
    assert make().ota.job.max_boots == 4
    old = {"deployment_id": "d", "attempt": 1, "firmware": {}, "state": "RECEIVED"}  # a file from before
    assert ota.Job.from_json(old).max_boots is None


def test_a_download_completed_while_away_waits_and_a_queued_cancel_stops_it(make, key, tmp_path):
    dev = make(faults=OtaFaults(slow_download=600_000), install_hold=0.3)
    dev.deliver(notify(key))
    dev.wait_state("DOWNLOADING")
    dev.soon(dev.ota.on_disconnect)
    dev.wait_state("DOWNLOADED")
    time.sleep(0.6)
    assert dev.states()[-1] == "DOWNLOADED" and dev.ota.job.state == "DOWNLOADED"
    dev.soon(dev.ota.on_connect)
    dev.deliver(cancel())  # kept by the broker while the device was away: it comes right after the connect
    dev.settle()
    assert "INSTALLING" not in dev.states() and dev.ota.finished("dep-1") == "CANCELED"
    assert not list((tmp_path / "ota" / "download").glob("*.part")) and dev.ota.slots.trial() is None


def test_a_download_completed_while_away_installs_once_back_and_past_the_hold(make, key):
    dev = make(faults=OtaFaults(slow_download=600_000), install_hold=0.3)
    dev.deliver(notify(key))
    dev.wait_state("DOWNLOADING")
    dev.soon(dev.ota.on_disconnect)
    dev.wait_state("DOWNLOADED")
    time.sleep(0.4)
    back = ota.now_ms()
    dev.soon(dev.ota.on_connect)
    installing = dev.wait_state("INSTALLING")
    assert installing["ts"] - back >= 250
    dev.wait_state("BOOTED")


@pytest.mark.parametrize("canceled", [True, False])
def test_after_a_restart_a_complete_download_handles_queued_notices_before_installing(make, key, server, canceled):
    dev = make(install_hold=60)
    dev.soon(dev.ota.on_connect)
    dev.deliver(notify(key))
    dev.wait_state("DOWNLOADED")
    dev.close()  # powered off before installing: the job stays DOWNLOADED
    again = make(install_hold=0.5)
    assert again.ota.job.state == "DOWNLOADED"
    again.soon(again.ota.on_connect)  # resumes: the file is complete, verified again, then the hold
    if canceled:
        again.deliver(cancel())
    again.settle()
    if canceled:
        assert "INSTALLING" not in again.states() and again.ota.finished("dep-1") == "CANCELED"
    else:
        again.wait_state("BOOTED")
    assert len(server.requests) == 1


def test_a_boot_of_a_deployment_the_device_lost_track_of_is_reported_without_an_attempt(make, key, tmp_path):
    dev = make(ack=False)
    dev.deliver(notify(key))
    dev.wait_state("REBOOTING")
    dev.settle()
    dev.close()
    (tmp_path / "ota" / "state.json").unlink()  # the job is gone, the bootloader's trial is not
    got = []
    again = OtaUpdater(tmp_path / "ota", OLD, got.append, lambda crash: None, dev.ota.options, submit=lambda *a: None)
    assert again.boot() == NEW
    again.on_connect()
    assert [m.payload["state"] for m in got] == ["BOOTED"] and "attempt" not in got[0].payload
    assert default_validators()[Uplink.OTA_STATUS].is_valid(got[0].payload)


# -- the download on its own ----------------------------------------------------------------------

def test_fetch_starts_over_when_the_server_ignores_the_range(server, tmp_path):
    part = tmp_path / "x.part"
    part.write_bytes(b"\0" * 1000)  # garbage that a 200 must replace
    server.ignore_range = True
    digest = fetch(server.base + "/img", part, len(IMAGE))
    assert digest == hashlib.sha256(IMAGE).digest() and part.read_bytes() == IMAGE


def test_fetch_of_a_complete_file_asks_nothing(server, tmp_path):
    part = tmp_path / "x.part"
    part.write_bytes(IMAGE)
    assert fetch(server.base + "/img", part, len(IMAGE)) == hashlib.sha256(IMAGE).digest()
    assert server.requests == []


def test_fetch_errors(server, tmp_path):
    part = tmp_path / "x.part"
    server.fail_status = 403
    with pytest.raises(DownloadError) as err:
        fetch(server.base + "/img", part, len(IMAGE))
    assert err.value.status == 403 and not err.value.retryable
    server.fail_status = 503
    with pytest.raises(DownloadError) as err:
        fetch(server.base + "/img", part, len(IMAGE))
    assert err.value.retryable
    server.fail_status = None
    with pytest.raises(Oversize):
        fetch(server.base + "/img", part, len(IMAGE) - 10)
    part.write_bytes(IMAGE[:10])
    server.image = IMAGE[:5]  # shorter than what we hold: 416, and the file starts over
    with pytest.raises(DownloadError) as err:
        fetch(server.base + "/img", part, len(IMAGE))
    assert err.value.status == 416 and part.stat().st_size == 0


def test_slots_fall_back_after_max_boots(tmp_path):
    slots = SlotStore(tmp_path / "slots.json", OLD)
    assert slots.boot() is None and slots.running_version == OLD
    img = tmp_path / "img"
    img.write_bytes(b"x")
    assert slots.install(img, tmp_path / "slot-b.img", version=NEW, sha256="0" * 64, deployment_id="d",
                         max_boots=2) == "b"
    assert slots.running_version == OLD  # installing does not change what runs
    first = slots.boot()
    assert first.kind == "booted" and first.boots == 1
    slots = SlotStore(tmp_path / "slots.json", OLD)  # the boot count is on disk
    assert slots.boot().boots == 2 and slots.running_version == NEW
    fell = slots.boot()
    assert fell.kind == "fell_back" and fell.version == OLD and slots.running_version == OLD and slots.active == "a"


def test_fault_specs():
    assert OtaFaults.parse("crash_loop, slow_download=2000") == OtaFaults(crash_loop=True, slow_download=2000.0)
    assert str(OtaFaults(stall=True, slow_download=5)) == "stall,slow_download=5"
    assert OtaFaults.parse("") == OtaFaults() and not OtaFaults().any
    for bad in ("explode", "stall=1", "slow_download", "slow_download=0"):
        with pytest.raises(ValueError):
            OtaFaults.parse(bad)


def test_simulator_fault_assignments():
    from devtools.simulator import device_ids, parse_ota_faults

    ids = device_ids(5, "s")
    got = parse_ota_faults(["1,3-4:crash_loop", "0:slow_download=2000"], ids)
    assert got == {"s-00001": OtaFaults(crash_loop=True), "s-00003": OtaFaults(crash_loop=True),
                   "s-00004": OtaFaults(crash_loop=True), "s-00000": OtaFaults(slow_download=2000.0)}
    for bad in (["crash_loop"], ["9:crash_loop"], ["1:nope"]):
        with pytest.raises(ValueError):
            parse_ota_faults(bad, ids)


# -- the agent's wiring (no broker) ---------------------------------------------------------------

class InlineExecutor:
    def submit(self, fn, *args):
        fn(*args)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = LocalPKI(tmp_path_factory.mktemp("pki"))
    p.ensure()
    return p


def test_agent_subscribes_to_notify_routes_it_and_reports_the_booted_version(pki, tmp_path, server, key, monkeypatch):
    ident = enroll_locally(pki, "dev-1", tmp_path / "dev-1")
    config = AgentConfig("localhost", 1, reboot_delay=0.01, api_base_url=server.base, firmware_keys=(key.pem,),
                         firmware_version=OLD)
    agent = DeviceAgent(ident, config, executor=InlineExecutor())
    published, subs, disconnects = [], [], []
    monkeypatch.setattr(agent.loop, "call_soon", lambda fn, *args: fn(*args))
    monkeypatch.setattr(agent.loop, "call_later", lambda delay, fn, *args: fn(*args))
    monkeypatch.setattr(agent.client, "is_connected", lambda: True)
    monkeypatch.setattr(agent.client, "subscribe", lambda s: subs.append([t for t, _ in s]))
    monkeypatch.setattr(agent.client, "reconnect", lambda: agent._on_connect(agent.client, None, None,
                                                                               SimpleNamespace(is_failure=False), None))
    agent.stats.connects = 1  # reconnect() from here on

    def disconnect(*a, **k):
        disconnects.append(k.get("reasoncode"))
        agent._on_disconnect(agent.client, None, None, 0, None)

    monkeypatch.setattr(agent.client, "disconnect", disconnect)
    acked = threading.Event()

    def publish(topic, payload, seq, retain=False, then=None):
        published.append((topic, json.loads(payload)))
        if then is not None:
            then()
        if topic.endswith("/ota/status") and json.loads(payload)["state"] == "BOOTED":
            acked.set()
        return True

    monkeypatch.setattr(agent, "_publish", publish)
    agent._on_connect(agent.client, None, None, SimpleNamespace(is_failure=False), None)
    assert "devices/dev-1/ota/notify" in subs[0]
    agent._on_message(agent.client, None, SimpleNamespace(topic="devices/dev-1/ota/notify", payload=notify(key)))
    assert acked.wait(10)
    agent.ota.wait_idle(5)
    statuses = [p for t, p in published if t == "devices/dev-1/status"]
    assert [s["firmware_version"] for s in statuses] == [OLD, OLD, NEW]  # online, offline "reboot", online again
    assert statuses[1]["reason"] == "reboot" and agent.firmware_version == NEW
    assert [p["state"] for t, p in published if t.endswith("/ota/status")][-1] == "BOOTED"
    assert agent.ota.finished("dep-1") == "COMMITTED" and disconnects == [None]
    agent.seq.close()


def test_agent_crash_disconnects_with_the_will(pki, tmp_path, monkeypatch):
    ident = enroll_locally(pki, "dev-2", tmp_path / "dev-2")
    agent = DeviceAgent(ident, AgentConfig("localhost", 1, reboot_delay=0.5), executor=InlineExecutor())
    monkeypatch.setattr(agent.loop, "call_soon", lambda fn, *args: fn(*args))
    monkeypatch.setattr(agent.client, "is_connected", lambda: True)
    reasons = []
    monkeypatch.setattr(agent.client, "disconnect", lambda *a, **k: reasons.append(k.get("reasoncode")))
    agent._ota_restart(True)
    assert [r.value for r in reasons] == [4]  # "Disconnect with Will Message"
    agent._on_disconnect(agent.client, None, None, 0, None)
    assert agent._boot_pending and agent._reconnect_timer.fn == agent._connect
    assert agent.ota._online_since is None  # told on its lane: no install until the next connect
    agent.seq.close()


def test_agent_config_from_settings_points_at_the_api_and_its_keys(tmp_path):
    settings = SimpleNamespace(mqtt_host="h", mqtt_device_port=8883, api_host="0.0.0.0", api_port=8443, api_tls=True,
                               firmware_key_path=tmp_path / "fw.key", firmware_vendor_key_paths=[tmp_path / "v.pem"])
    config = AgentConfig.from_settings(settings)
    assert config.api_base_url == "https://127.0.0.1:8443"
    assert config.firmware_keys == (f"{tmp_path}/fw.key.pub", f"{tmp_path}/v.pem")
    assert AgentConfig.from_settings(settings, api_base_url="http://x").api_base_url == "http://x"


def test_constants_match_the_contract():
    assert ota.NOTIFY_SUFFIX == "ota/notify" and ota.STATUS_SUFFIX == "ota/status"

