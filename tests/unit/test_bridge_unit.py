"""Bridge pieces without a broker: subscriptions, metrics endpoint."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import deque
from types import SimpleNamespace

import pytest

from bridge import uplink
from bridge.metrics import BridgeMetrics, HttpEndpoint
from bridge.uplink import shared_filters
from fleet.config import Settings
from fleet.contract.topics import Uplink
from fleet.identity.pki import LocalPKI


def test_one_shared_subscription_per_uplink_topic_filter():
    assert shared_filters("bridge") == [
        "$share/bridge/devices/+/telemetry",
        "$share/bridge/devices/+/shadow/update",
        "$share/bridge/devices/+/shadow/name/+/update",
        "$share/bridge/devices/+/shadow/get",
        "$share/bridge/devices/+/shadow/name/+/get",
        "$share/bridge/devices/+/commands/+/result",
        "$share/bridge/devices/+/ota/status",
        "$share/bridge/devices/+/status",
    ]
    assert len(shared_filters("g")) == sum(len(kind.mqtt_filters) for kind in Uplink)


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




class FakeProducer:
    """confluent-kafka's Producer surface the bridge uses; reports are served by poll()."""

    def __init__(self):
        self.sent: list[tuple[str, bytes, object]] = []
        self.reports: deque = deque()
        self.purged = False
        self.disposed = threading.Event()  # set once flush() returned: the old producer is done

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, key, on_delivery))

    def confirm(self, i: int, err=None) -> None:
        topic, _, callback = self.sent[i]
        self.reports.append((callback, err, SimpleNamespace(topic=lambda: topic)))

    def poll(self, timeout=None):
        while self.reports:
            callback, err, msg = self.reports.popleft()
            callback(err, msg)

    def purge(self):
        self.purged = True

    def flush(self, timeout=None):
        self.poll()
        self.disposed.set()


class FakeClient:
    def __init__(self):
        self.acks: list[int] = []
        self.disconnects = 0

    def ack(self, mid, qos):
        self.acks.append(mid)

    def _packet_queue(self, command, packet, mid, qos, info=None):  # what ack_many queues
        assert command == 0x40 and len(packet) % 4 == 0
        self.acks.extend(int.from_bytes(packet[i + 2:i + 4], "big") for i in range(0, len(packet), 4))

    def is_connected(self):
        return True

    def disconnect(self, properties=None):
        self.disconnects += 1


def on_loop(bridge, fn=lambda: None, *args):
    """Run fn on the loop thread, then let one more iteration (which polls reports) pass."""
    for step in (lambda: fn(*args), lambda: None):
        done = threading.Event()
        bridge.loop.call_soon(lambda step=step, done=done: (step(), done.set()))
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
    (t1, k1, _), (t2, k2, _) = bridge._producer.sent
    assert (t1, t2, k1) == ("fleet.telemetry", "fleet.dead-letter", b"d-1")
    on_loop(bridge)
    assert bridge.client.acks == [] and bridge._inflight == 2
    bridge._producer.confirm(1)  # the dead letter is confirmed first: acked first
    on_loop(bridge)
    assert bridge.client.acks == [12]
    bridge._producer.confirm(0)
    on_loop(bridge)
    assert bridge.client.acks == [12, 11] and bridge._inflight == 0
    assert bridge.metrics.value("fleet_bridge_rejected_total", reason="invalid_json") == 1
    assert bridge.metrics.value("fleet_bridge_produced_total", topic="fleet.telemetry") == 1


def test_failed_delivery_is_not_acked_and_forces_redelivery(bridge):
    from confluent_kafka import KafkaError

    on_loop(bridge, bridge._on_message, None, None, message(21))
    bridge._producer.confirm(0, KafkaError(KafkaError._MSG_TIMED_OUT))
    on_loop(bridge)
    assert bridge.client.acks == [] and bridge.client.disconnects == 1 and bridge._inflight == 0


def test_acks_from_an_older_connection_are_dropped(bridge):
    on_loop(bridge, bridge._on_message, None, None, message(31))
    bridge._gen += 1  # reconnected: the broker resends message 31 itself
    bridge._producer.confirm(0)
    on_loop(bridge)
    assert bridge.client.acks == [] and bridge._inflight == 0


def test_a_stalled_producer_is_replaced(bridge, monkeypatch):
    monkeypatch.setattr(uplink, "REPLACE_PRODUCER_AFTER_S", 0.1)
    fresh = FakeProducer()
    bridge._make_producer = lambda: fresh
    old = bridge._producer
    on_loop(bridge, bridge._on_message, None, None, message(41))
    bridge._last_progress -= 10
    on_loop(bridge, bridge._watchdog)
    assert bridge._producer is fresh and bridge._epoch == 1 and bridge._inflight == 0
    assert bridge.client.disconnects == 1  # reconnect: the broker redelivers message 41
    # The bridge disposes of the old producer on a thread of its own: wait for it to finish.
    assert old.disposed.wait(2) and old.purged
    old.confirm(0)  # a late confirmation from the old producer
    old.poll()
    on_loop(bridge)
    assert bridge.client.acks == [] and bridge._inflight == 0


def test_inactive_devices_are_dead_lettered_and_an_unanswerable_check_is_not_acked(bridge):
    bridge.active_check = lambda device_id: False
    on_loop(bridge, bridge._on_message, None, None, message(51))
    assert bridge._producer.sent[0][0] == "fleet.dead-letter"

    def unreachable(device_id):
        raise RuntimeError("registry down")

    bridge.active_check = unreachable
    on_loop(bridge, bridge._on_message, None, None, message(52))
    assert len(bridge._producer.sent) == 1 and bridge.client.disconnects == 1 and bridge.client.acks == []


def test_the_brokers_drop_count_is_exported_and_a_rise_is_an_error(bridge, caplog):
    def report(payload: bytes):
        bridge._on_broker_dropped(None, None, SimpleNamespace(topic=uplink.BROKER_DROPPED_TOPIC, payload=payload))

    assert bridge.health()[1]["broker_dropped"] == 0  # the broker reports only a non-zero count
    with caplog.at_level("WARNING", logger="bridge"):
        report(b"7")  # the retained value: before this bridge connected
        report(b"7")
        report(b"not a number")
        report(b"19")
    assert [(r.levelname, r.fields.get("dropped")) for r in caplog.records] == [("WARNING", None), ("ERROR", 12)]
    assert bridge.health()[1]["broker_dropped"] == 19
    assert bridge.metrics.value("fleet_broker_publish_dropped") == 19
