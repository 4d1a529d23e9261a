"""Bridge pieces without a broker: subscriptions, metrics endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from bridge.metrics import BridgeMetrics, HttpEndpoint
from bridge.uplink import shared_filters
from fleet.topics import Uplink


def test_one_shared_subscription_per_uplink_kind():
    assert shared_filters("bridge") == [
        "$share/bridge/devices/+/telemetry",
        "$share/bridge/devices/+/shadow/update",
        "$share/bridge/devices/+/shadow/get",
        "$share/bridge/devices/+/commands/+/result",
        "$share/bridge/devices/+/ota/status",
        "$share/bridge/devices/+/status",
    ]
    assert len(shared_filters("g")) == len(Uplink)


@pytest.mark.parametrize("healthy,status", [(True, 200), (False, 503)])
def test_health_and_metrics_endpoint(healthy, status):
    metrics = BridgeMetrics()
    metrics.received.inc(3)
    metrics.rejected.labels("invalid_json").inc()
    metrics.produced_to("fleet.telemetry").inc(2)
    metrics.produce_latency.observe(0.004)
    http = HttpEndpoint("127.0.0.1", 0, metrics, lambda: (healthy, {"status": "x"})).start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        try:
            resp = urllib.request.urlopen(base + "/health", timeout=5)
            code, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            code, body = err.code, err.read()
        assert code == status and json.loads(body) == {"status": "x"}
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "fleet_bridge_received_total 3.0" in text
        assert 'fleet_bridge_rejected_total{reason="invalid_json"} 1.0' in text
        assert 'fleet_bridge_produced_total{topic="fleet.telemetry"} 2.0' in text
        assert "fleet_bridge_produce_latency_seconds_bucket" in text
        assert metrics.value("fleet_bridge_received_total") == 3
    finally:
        http.stop()


# -- the ack path, with stand-ins for Kafka and the MQTT client ------------------------------

import threading  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from kafka.future import Future  # noqa: E402

from bridge import uplink  # noqa: E402
from fleet.pki import LocalPKI  # noqa: E402
from fleet.settings import Settings  # noqa: E402


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, Future]] = []
        self.closed = False

    def send(self, topic, value=None, key=None):
        future = Future()
        self.sent.append((topic, key, future))
        return future

    def close(self, timeout=None):
        self.closed = True

    def flush(self, timeout=None):
        pass


class FakeClient:
    def __init__(self):
        self.acks: list[int] = []
        self.disconnects = 0

    def ack(self, mid, qos):
        self.acks.append(mid)

    def is_connected(self):
        return True

    def disconnect(self, properties=None):
        self.disconnects += 1


def on_loop(bridge, fn, *args):
    done = threading.Event()
    bridge.loop.call_soon(lambda: (fn(*args), done.set()))
    assert done.wait(2)


@pytest.fixture
def bridge(tmp_path):
    LocalPKI(tmp_path / "pki").ensure()
    b = uplink.UplinkBridge(Settings(var_dir=tmp_path, bridge_metrics_port=0), producer=FakeProducer())
    b.client = FakeClient()
    b.loop.start()
    yield b
    b._stopping = True
    b.loop.stop()


def message(mid: int, payload: bytes = b'{"ts": 1700000000000, "seq": 1, "metrics": {}}'):
    return SimpleNamespace(topic="devices/d-1/telemetry", payload=payload, mid=mid, qos=1)


def test_ack_only_after_kafka_confirmed(bridge):
    on_loop(bridge, bridge._on_message, None, None, message(11))
    on_loop(bridge, bridge._on_message, None, None, message(12, b"not json"))
    (t1, k1, f1), (t2, k2, f2) = bridge._producer.sent
    assert (t1, t2, k1) == ("fleet.telemetry", "fleet.dead-letter", b"d-1")
    time.sleep(0.05)
    assert bridge.client.acks == [] and bridge._inflight == 2
    f2.success(SimpleNamespace(topic=t2))  # the dead letter is confirmed first: acked first
    on_loop(bridge, lambda: None)
    assert bridge.client.acks == [12]
    f1.success(SimpleNamespace(topic=t1))
    on_loop(bridge, lambda: None)
    assert bridge.client.acks == [12, 11] and bridge._inflight == 0
    assert bridge.metrics.value("fleet_bridge_rejected_total", reason="invalid_json") == 1


def test_failed_send_is_not_acked_and_forces_redelivery(bridge):
    on_loop(bridge, bridge._on_message, None, None, message(21))
    bridge._producer.sent[0][2].failure(RuntimeError("broker gone"))
    on_loop(bridge, lambda: None)
    assert bridge.client.acks == [] and bridge.client.disconnects == 1 and bridge._inflight == 0


def test_acks_from_an_older_connection_are_dropped(bridge):
    on_loop(bridge, bridge._on_message, None, None, message(31))
    bridge._gen += 1  # reconnected: the broker resends message 31 itself
    bridge._producer.sent[0][2].success(SimpleNamespace(topic="fleet.telemetry"))
    on_loop(bridge, lambda: None)
    assert bridge.client.acks == [] and bridge._inflight == 0


def test_a_wedged_producer_is_replaced(bridge, monkeypatch):
    monkeypatch.setattr(uplink, "REPLACE_PRODUCER_AFTER_S", 0.1)
    fresh = FakeProducer()
    bridge._make_producer = lambda: fresh
    old = bridge._producer
    on_loop(bridge, bridge._on_message, None, None, message(41))
    bridge._last_progress -= 10
    on_loop(bridge, bridge._watchdog)
    deadline = time.monotonic() + 5
    while bridge._producer is not fresh and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bridge._producer is fresh and old.closed and bridge._epoch == 1 and bridge._inflight == 0
    assert bridge.client.disconnects == 1  # reconnect: the broker redelivers message 41
    old.sent[0][2].success(SimpleNamespace(topic="fleet.telemetry"))  # a late confirmation
    on_loop(bridge, lambda: None)
    assert bridge.client.acks == [] and bridge._inflight == 0
