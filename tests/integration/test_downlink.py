"""Kafka downlink -> bridge -> Mosquitto -> device (mTLS), against the real local stack.

The records go to the stack's downlink topic and through the stack's own bridge (its downlink
runs in the same process as the uplink); each test uses fresh device ids, so the devices' topics
are theirs alone. The kill -9 test kills that bridge and restarts it, as the telemetry fault test
does.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.contract.validation import kafka_schema
from tests.support.kafka import end_offsets, read_json
from tests.support.mqtt import MqttTestClient, connect, device_credentials

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def now_ms() -> int:
    return int(time.time() * 1000)


def command(device_id: str, command_id: str, **extra) -> dict:
    return {"device_id": device_id, "suffix": "commands", "id": command_id, "created_at": now_ms(),
            "payload": {"command_id": command_id, "name": "set_config", "params": {"n": command_id}}, **extra}


def produce(settings: Settings, records: list[dict | tuple[str, bytes]]) -> None:
    """Records in order, keyed by device id as the jobs do (a device's records share a partition);
    a (key, raw bytes) tuple is produced as is."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for r in records:
            key, value = r if isinstance(r, tuple) else (r["device_id"], json.dumps(r).encode())
            producer.send(settings.topic(Kafka.DOWNLINK), key=key.encode(), value=value)
        producer.flush(30)
    finally:
        producer.close()


class Device:
    """A device connected over mTLS with its own certificate, subscribed to devices/{id}/# at QoS 1."""

    def __init__(self, settings: Settings, enrollment, device_id: str, directory: Path):
        from fleet.identity.pki import LocalPKI

        self.device_id = device_id
        cert, key = device_credentials(enrollment, device_id, directory)
        self.mqtt: MqttTestClient = connect(settings.mqtt_host, settings.mqtt_device_port,
                                            LocalPKI(settings.pki_dir).ca_chain_path, cert, key, client_id=device_id)
        self.received: list = []  # paho MQTTMessage objects, with qos and properties
        self.mqtt.client.on_message = lambda client, userdata, msg: self.received.append(msg)
        codes = self.mqtt.subscribe(f"devices/{device_id}/#", qos=1)
        assert [c.value for c in codes] == [1], codes

    def commands(self) -> list[dict]:
        return [json.loads(m.payload) for m in list(self.received) if m.topic == f"devices/{self.device_id}/commands"]

    def wait_commands(self, ids: set[str], timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not ids <= {c["command_id"] for c in self.commands()}:
            if time.monotonic() > deadline:
                missing = ids - {c["command_id"] for c in self.commands()}
                raise AssertionError(f"{len(missing)} of {len(ids)} commands never arrived, e.g. {sorted(missing)[:5]}")
            time.sleep(0.01)  # poll interval of a deadline loop
        return self.commands()

    def stop(self) -> None:
        self.mqtt.stop()


@pytest.fixture
def devices(stack: Settings, enrollment, tmp_path):
    made: list[Device] = []

    def make(prefix: str = "dl") -> Device:
        made.append(Device(stack, enrollment, unique(prefix), tmp_path))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def bridge_health(settings: Settings) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.bridge_metrics_port}/health", timeout=5) as resp:
        return json.load(resp)


def bridge_metric(settings: Settings, name: str) -> float:
    url = f"http://127.0.0.1:{settings.bridge_metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == name)


def test_a_downlink_record_reaches_the_device_at_qos_1_with_its_expiry(stack: Settings, devices):
    health = bridge_health(stack)["downlink"]
    assert health["mqtt_connected"] and health["consumer_alive"], health
    device = devices()
    started = time.monotonic()
    produce(stack, [command(device.device_id, "c-1"), command(device.device_id, "c-2", expires_at=now_ms() + 60_000)])
    got = device.wait_commands({"c-1", "c-2"}, timeout=5)
    assert time.monotonic() - started < 5
    assert [c["command_id"] for c in got] == ["c-1", "c-2"]  # one device, one partition: in order
    assert got[0] == command(device.device_id, "c-1")["payload"]
    first, second = (m for m in device.received if m.topic.endswith("/commands"))
    assert (first.qos, second.qos) == (1, 1)
    assert getattr(first.properties, "MessageExpiryInterval", None) is None
    assert 0 < second.properties.MessageExpiryInterval <= 60


def test_an_expired_record_is_never_delivered(stack: Settings, devices):
    device = devices()
    expired_before = bridge_metric(stack, "fleet_downlink_expired_total")
    # Same device, same partition: once the later record arrived, the expired one was handled.
    produce(stack, [command(device.device_id, "stale", expires_at=now_ms() - 1_000), command(device.device_id, "fresh")])
    got = device.wait_commands({"fresh"}, timeout=5)
    assert [c["command_id"] for c in got] == ["fresh"]
    assert bridge_metric(stack, "fleet_downlink_expired_total") >= expired_before + 1


def test_a_malformed_record_is_dead_lettered_and_the_next_one_still_arrives(stack: Settings, devices):
    bad, good = devices("dl-bad"), devices("dl-good")
    tag = uuid.uuid4().hex.encode()
    not_json = b"not json " + tag
    dead_start = end_offsets(stack, stack.topic(Kafka.DEAD_LETTER))
    produce(stack, [
        (bad.device_id, not_json),
        {**command(bad.device_id, "to-telemetry"), "suffix": "telemetry"},  # not a downlink topic
        command(good.device_id, "after-the-bad-ones"),
        command(bad.device_id, "bad-device-still-served"),
    ])
    good.wait_commands({"after-the-bad-ones"}, timeout=5)
    bad.wait_commands({"bad-device-still-served"}, timeout=5)
    assert not any(m.topic.endswith("/telemetry") for m in bad.received)

    def ours(v: dict) -> bool:
        return v.get("source") == "bridge-downlink" and (
            v["device_id"] == bad.device_id or base64.b64decode(v["raw_b64"]) == not_json)

    letters = read_json(stack, stack.topic(Kafka.DEAD_LETTER), dead_start, keep=ours,
                        until=lambda recs: len(recs) >= 2, timeout=30)
    by_reason = {r["reason"]: r for r in letters}
    assert set(by_reason) == {"invalid_json", "unknown_topic"}, letters
    assert by_reason["unknown_topic"]["mqtt_topic"] == f"devices/{bad.device_id}/telemetry"
    assert by_reason["invalid_json"]["mqtt_topic"] == stack.topic(Kafka.DOWNLINK)
    for letter in letters:
        assert kafka_schema("dead-letter").is_valid(letter), letter


def test_records_survive_kill_9_of_the_bridge(stack: Settings, devices):
    """Records in flight at the kill and records written while the bridge is down all arrive
    after the restart (at least once: the device may see some twice and deduplicates by id)."""
    from devtools.stack.apps import BridgeComponent
    from devtools.stack.process import wait_until

    device = devices("dl-k9")
    produce(stack, [command(device.device_id, "warm-up")])
    device.wait_commands({"warm-up"}, timeout=5)

    before = [command(device.device_id, f"before-{i}") for i in range(50)]
    during = [command(device.device_id, f"during-{i}") for i in range(50)]
    bridge = BridgeComponent(stack)
    produce(stack, before)
    bridge.process.kill()  # kill -9 right after: some of these are unpublished or un-PUBACKed
    produce(stack, during)  # while no bridge runs
    time.sleep(2)  # a deliberate outage (scenario, not a wait)
    bridge.start()
    wait_until(bridge.healthy, what="bridge restart", timeout=60, process=bridge.process)
    got = device.wait_commands({c["id"] for c in before + during}, timeout=60)
    ids = [c["command_id"] for c in got]
    # No record is lost, and per device the order holds for first deliveries.
    first_seen = list(dict.fromkeys(i for i in ids if i != "warm-up"))
    assert first_seen == [c["id"] for c in before + during]
