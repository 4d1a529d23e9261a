"""fleet.mqtt.client against a stub TLS broker on 127.0.0.1: the one-shot connect (the cut-off's
probe and session takeover) and the reconnecting client's backoff."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from fleet.identity.pki import LocalPKI
from fleet.mqtt.client import Reconnector, connect_once
from fleet.mqtt.loop import MqttLoop
from tests.support.mqtt_packets import connect_packet, read_packet


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> LocalPKI:
    p = LocalPKI(tmp_path_factory.mktemp("pki"))
    p.ensure()
    p.service_identity("probe")
    return p


class StubBroker:
    """Accepts one TLS client, records what it sends; ``answer`` is the CONNACK return code,
    "silent" (never answers) or "close" (closes after the CONNECT)."""

    def __init__(self, pki: LocalPKI, answer: int | str = 0, client_ca: Path | None = None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.broker_cert_path, pki.broker_key_path)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(client_ca or pki.services_ca_path))
        self.answer = answer
        self.received: list[bytes] = []
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
            with raw, self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                self.received.append(read_packet(tls))
                if self.answer == "close":
                    return
                if self.answer == "silent":
                    time.sleep(1.5)
                    return
                tls.sendall(bytes([0x20, 2, 0, self.answer]))
                while packet := read_packet(tls):
                    self.received.append(packet)
        except (OSError, ssl.SSLError, IndexError):
            pass
        finally:
            self.sock.close()
            self.done.set()


def probe(pki: LocalPKI, port: int, client_id: str = "dev-1", timeout: float = 2.0) -> bool:
    cert, key = pki.service_identity("probe")
    return connect_once("127.0.0.1", port, pki.ca_chain_path, cert, key, client_id, timeout=timeout)


def test_accepted_connect_sends_the_311_clean_session_connect_then_disconnects(pki):
    broker = StubBroker(pki, answer=0)
    assert probe(pki, broker.port, "dev-1") is True
    assert broker.done.wait(5)
    # Byte for byte the packet the cut-off used to build by hand, then a DISCONNECT (no will).
    assert broker.received == [connect_packet("dev-1", keepalive=10), b"\xe0\x00"]


def test_refused_connack_is_false_and_sends_no_disconnect(pki):
    broker = StubBroker(pki, answer=5)  # not authorised
    assert probe(pki, broker.port) is False
    assert broker.done.wait(5)
    assert broker.received == [connect_packet("dev-1")]


@pytest.mark.parametrize("answer", ["close", "silent"])
def test_no_connack_is_false_within_the_timeout(pki, answer):
    broker = StubBroker(pki, answer=answer)
    t0 = time.monotonic()
    assert probe(pki, broker.port, timeout=0.5) is False
    assert time.monotonic() - t0 < 1.4


def test_a_certificate_the_listener_does_not_trust_is_false(pki):
    broker = StubBroker(pki, answer=0, client_ca=pki.claim_ca_path)  # TLS 1.3: refused after connect()
    assert probe(pki, broker.port) is False


def test_nothing_listening_is_false(pki):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    assert probe(pki, port) is False


def test_connect_once_leaves_no_file_descriptors_behind(pki):
    probe(pki, StubBroker(pki, answer=0).port)
    before = len(os.listdir("/proc/self/fd"))
    for answer in (0, 5, "close"):
        broker = StubBroker(pki, answer=answer)
        probe(pki, broker.port)
        broker.done.wait(5)
    assert len(os.listdir("/proc/self/fd")) <= before


class FakeClient:
    def __init__(self, fail: int = 0):
        self.calls: list[tuple[str, float]] = []
        self.fail = fail

    def _record(self, name: str) -> None:
        self.calls.append((name, time.monotonic()))
        if self.fail:
            self.fail -= 1
            raise ConnectionRefusedError("refused")

    def connect(self, host, port, keepalive, **kwargs):
        assert (host, port, keepalive, kwargs) == ("h", 1883, 30, {"clean_start": False})
        self._record("connect")

    def reconnect(self):
        self._record("reconnect")


def _wait(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_reconnector_connects_once_then_reconnects_with_growing_delays():
    loop = MqttLoop(misc_interval=0.05).start()
    client = FakeClient(fail=3)
    r = Reconnector(loop, client, "h", 1883, keepalive=30, min_delay=0.02, max_delay=0.08, clean_start=False)
    try:
        r.start()
        assert _wait(lambda: len(client.calls) == 4)
        assert [name for name, _ in client.calls] == ["connect", "reconnect", "reconnect", "reconnect"]
        assert r.delay == 0.08  # 0.02 -> 0.04 -> 0.08, capped
        gaps = [b[1] - a[1] for a, b in zip(client.calls, client.calls[1:], strict=False)]
        assert gaps[0] >= 0.01 and gaps[2] >= 0.02  # jitter is 0.5x..1.5x of the delay
        r.connected()
        assert r.delay == 0.02
        r.stop()
        loop.call_soon(r.lost)
        time.sleep(0.1)
        assert len(client.calls) == 4  # stopped: no more attempts
    finally:
        loop.stop()
        loop.close()


def test_reconnector_schedules_one_attempt_per_loss():
    loop = MqttLoop(misc_interval=0.05).start()
    client = FakeClient()
    r = Reconnector(loop, client, "h", 1883, keepalive=30, min_delay=0.05, clean_start=False)
    try:
        r.start()
        assert _wait(lambda: len(client.calls) == 1)
        loop.call_soon(r.lost)
        loop.call_soon(r.lost)  # a second report of the same loss while a retry is pending
        assert _wait(lambda: len(client.calls) == 2)
        time.sleep(0.2)
        assert [name for name, _ in client.calls] == ["connect", "reconnect"]
    finally:
        r.stop()
        loop.stop()
        loop.close()


def test_loop_close_waits_for_the_loop_to_stop():
    loop = MqttLoop(misc_interval=0.05).start()
    loop.close()  # still running: a no-op
    done = threading.Event()
    loop.call_soon(done.set)
    assert done.wait(2)
    loop.stop()
    loop.close()
