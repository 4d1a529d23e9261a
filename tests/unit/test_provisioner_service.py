"""ProvisioningService's MQTT side on its MqttLoop, against a scripted MQTT 5 broker on 127.0.0.1:
subscribe, answer a request from the worker pool, retry while the broker is down, stop cleanly."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from types import SimpleNamespace

import pytest

from fleet.config import Settings
from fleet.identity.pki import LocalPKI
from fleet.identity.provisioner import ProvisioningService
from fleet.identity.provisioning import Rejected
from tests.support.mqtt_packets import read_packet


def _utf8(s: str) -> bytes:
    return len(s.encode()).to_bytes(2, "big") + s.encode()


def _topic_of_publish(packet: bytes) -> str:
    i = 1
    while packet[i] & 0x80:
        i += 1
    n = int.from_bytes(packet[i + 1:i + 3], "big")
    return packet[i + 3:i + 3 + n].decode()


class ScriptedBroker:
    """CONNACK, SUBACK, then one PUBLISH of ``request`` to the service; records what comes back."""

    def __init__(self, pki: LocalPKI, request_topic: str):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.broker_cert_path, pki.broker_key_path)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(pki.services_ca_path))
        self.request_topic = request_topic
        self.received: list[bytes] = []
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
            with raw, self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(10)
                self.received.append(read_packet(tls))                 # CONNECT
                tls.sendall(b"\x20\x03\x00\x00\x00")                     # CONNACK, no properties
                subscribe = read_packet(tls)
                self.received.append(subscribe)
                packet_id = subscribe[2:4]
                tls.sendall(b"\x90\x05" + packet_id + b"\x00\x01\x01")  # SUBACK: granted QoS 1, twice
                body = _utf8(self.request_topic) + b"\x00" + b"{}"      # QoS 0, no properties
                tls.sendall(bytes([0x30, len(body)]) + body)
                while packet := read_packet(tls):
                    self.received.append(packet)
                    if packet[0] & 0xF0 == 0x30:                         # the answer (QoS 1): PUBACK it
                        tls.sendall(b"\x40\x02" + self._publish_id(packet))
        except (OSError, ssl.SSLError, IndexError):
            pass
        finally:
            self.sock.close()
            self.done.set()

    @staticmethod
    def _publish_id(packet: bytes) -> bytes:
        i = 1
        while packet[i] & 0x80:
            i += 1
        n = int.from_bytes(packet[i + 1:i + 3], "big")
        return packet[i + 3 + n:i + 5 + n]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> LocalPKI:
    p = LocalPKI(tmp_path_factory.mktemp("var") / "pki")
    p.ensure()
    return p


def refusing_onboarding(pki: LocalPKI):
    def provision(claim_id, client_id, payload):
        raise Rejected(f"no {claim_id}/{client_id}")
    return SimpleNamespace(pki=pki, provision=provision)


def service_for(pki: LocalPKI, port: int) -> ProvisioningService:
    settings = Settings(var_dir=pki.dir.parent, mqtt_host="127.0.0.1", mqtt_service_port=port)
    return ProvisioningService(settings, refusing_onboarding(pki))


def test_subscribes_answers_on_the_loop_thread_and_disconnects_on_stop(pki):
    broker = ScriptedBroker(pki, "provisioning/claim-1/c-1/request")
    service = service_for(pki, broker.port)
    published = []
    real_publish = service.client.publish

    def publish(*args, **kwargs):
        published.append((args, service.loop.in_loop_thread()))
        return real_publish(*args, **kwargs)

    service.client.publish = publish
    service.start()
    try:
        assert service.wait_ready(5)
        assert _wait(lambda: any(p[0] & 0xF0 == 0x30 for p in broker.received))
    finally:
        service.stop()
    assert broker.done.wait(5)
    assert published == [(("provisioning/claim-1/c-1/response",
                           json.dumps({"status": "rejected", "reason": "no claim-1/c-1"}), 1), True)]
    kinds = [p[0] & 0xF0 for p in broker.received]
    assert kinds == [0x10, 0x80, 0x30, 0xE0]  # CONNECT, SUBSCRIBE, the answer, DISCONNECT
    assert _topic_of_publish(broker.received[2]) == "provisioning/claim-1/c-1/response"
    assert b"$share/" in broker.received[1] and b"/provisioning/+/+/request" in broker.received[1]


def test_a_broker_that_is_down_is_retried_and_stop_is_prompt(pki):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    service = service_for(pki, port).start()
    assert not service.wait_ready(0.3)
    t0 = time.monotonic()
    service.stop()
    assert time.monotonic() - t0 < 2
    assert not service.loop.in_loop_thread() and service._connection.stopping


def test_stop_without_start_returns_at_once(pki):
    service = service_for(pki, 1)
    t0 = time.monotonic()
    service.stop()
    assert time.monotonic() - t0 < 0.5


def _wait(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
