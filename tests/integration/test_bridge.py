"""Device -> Mosquitto (mTLS) -> bridge -> Kafka, against the real local stack.

The first tests go through the stack's own bridge (default topics, fresh device ids per test).
The kill -9 test runs its own bridge process on throwaway topics and a throwaway share group,
so killing it disturbs nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from device.agent import AgentConfig, DeviceAgent
from devtools.simulator import GENERATORS, run_worker
from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.contract.validation import kafka_schema
from tests.support.kafka import end_offsets, read_json

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_agent(settings: Settings, enrollment, device_id: str, directory: Path) -> DeviceAgent:
    identity = enrollment.enroll(device_id, directory / device_id)
    agent = DeviceAgent(identity, AgentConfig.from_settings(settings)).start()
    assert agent.wait_connected(15), f"{device_id} could not connect over mTLS"
    return agent


@pytest.fixture
def agent(stack: Settings, enrollment, tmp_path):
    a = start_agent(stack, enrollment, unique("it"), tmp_path)
    yield a
    a.stop()


def test_telemetry_reaches_kafka_in_order_with_the_envelope(stack: Settings, agent: DeviceAgent):
    topic = stack.topic(Kafka.TELEMETRY)
    start = end_offsets(stack, topic)
    for i in range(20):
        agent.send_telemetry({"temperature": 20 + i / 10, "count": i}, {"site": "lab"})
    assert agent.wait_acked(15)

    records = read_json(stack, topic, start, keep=lambda v: v["device_id"] == agent.device_id,
                        until=lambda recs: len(recs) >= 20, timeout=60)
    assert [r["payload"]["seq"] for r in records] == list(range(20))  # one partition per device: in order
    envelope = kafka_schema("envelope")
    for i, r in enumerate(records):
        assert envelope.is_valid(r), r
        assert r["type"] == "telemetry" and r["mqtt_topic"] == f"devices/{agent.device_id}/telemetry"
        assert r["payload"]["metrics"] == {"temperature": 20 + i / 10, "count": i}
        assert r["payload"]["attrs"] == {"site": "lab"}
        assert r["ts"] == r["payload"]["ts"] and r["ingest_ts"] >= r["ts"] - 5_000


def test_status_online_then_offline_reaches_device_events(stack: Settings, enrollment, tmp_path):
    topic = stack.topic(Kafka.DEVICE_EVENTS)
    start = end_offsets(stack, topic)
    a = start_agent(stack, enrollment, unique("it"), tmp_path)
    a.stop()
    records = read_json(stack, topic, start, keep=lambda v: v["device_id"] == a.device_id,
                        until=lambda recs: len(recs) >= 2, timeout=60)
    assert [(r["type"], r["payload"]["online"], r["payload"].get("reason")) for r in records] == [
        ("status", True, None), ("status", False, "shutdown")]


def test_rejected_payloads_land_in_dead_letter_with_reason_and_raw_bytes(stack: Settings, agent: DeviceAgent):
    topic = stack.topic(Kafka.DEAD_LETTER)
    start = end_offsets(stack, topic)
    oversized = json.dumps({"ts": int(time.time() * 1000), "seq": 1, "metrics": {},
                            "attrs": {"pad": "x" * stack.max_payload_bytes}}).encode()
    cases = {
        "invalid_json": b'{"ts": 17, "seq": ',
        "schema_violation": json.dumps({"ts": int(time.time() * 1000), "seq": -5, "metrics": {"t": "hot"}}).encode(),
        "payload_too_large": oversized,
    }
    for raw in cases.values():
        agent.publish_raw("telemetry", raw)
    assert agent.wait_acked(15)

    records = read_json(stack, topic, start, keep=lambda v: v["device_id"] == agent.device_id,
                        until=lambda recs: len(recs) >= len(cases), timeout=60)
    by_reason = {r["reason"]: r for r in records}
    assert set(by_reason) == set(cases)
    dead_letter = kafka_schema("dead-letter")
    for reason, raw in cases.items():
        r = by_reason[reason]
        assert dead_letter.is_valid(r), r
        assert base64.b64decode(r["raw_b64"]) == raw and r["raw_size"] == len(raw)
        assert r["mqtt_topic"] == f"devices/{agent.device_id}/telemetry" and r["source"] == "bridge"
    assert "$.seq" in by_reason["schema_violation"]["detail"] or "$.metrics" in by_reason["schema_violation"]["detail"]
    # And nothing of it reached the telemetry topic.
    telemetry = read_json(stack, stack.topic(Kafka.TELEMETRY), end_offsets(stack, stack.topic(Kafka.TELEMETRY)),
                          keep=lambda v: v["device_id"] == agent.device_id, until=lambda recs: False, timeout=2)
    assert telemetry == []


def test_poison_from_one_device_never_stalls_another(stack: Settings, enrollment, tmp_path):
    """A payload that passes the schema but nests 300 levels once made the bridge reconnect for
    redelivery for ever, and no other device's telemetry reached Kafka. Now each poison message is
    dead-lettered alone, and the good traffic interleaved with it all arrives."""
    poisoner = start_agent(stack, enrollment, unique("poison"), tmp_path)
    good = start_agent(stack, enrollment, unique("good"), tmp_path)
    try:
        deep: dict = {}
        node = deep
        for _ in range(300):
            node["a"] = {}
            node = node["a"]
        now = int(time.time() * 1000)
        poison = [
            json.dumps({"ts": now, "seq": 1, "metrics": {"t": 1.0}, "attrs": deep}).encode(),
            b'{"ts": %d, "seq": 2, "metrics": {}, "attrs": {"s": "\xc3\x28"}}' % now,  # not UTF-8
            b'{"ts": %d, "seq": 3, "metrics": {}, "attrs": {"n": 1%s}}' % (now, b"0" * 400),  # a 400-digit number
        ]
        dead_start = end_offsets(stack, stack.topic(Kafka.DEAD_LETTER))
        telemetry_start = end_offsets(stack, stack.topic(Kafka.TELEMETRY))
        for i in range(20):
            good.send_telemetry({"i": float(i)})
            if i % 7 == 0:
                poisoner.publish_raw("telemetry", poison[(i // 7) % len(poison)])
        assert good.wait_acked(30) and poisoner.wait_acked(30)

        arrived = read_json(stack, stack.topic(Kafka.TELEMETRY), telemetry_start,
                            keep=lambda v: v["device_id"] == good.device_id, until=lambda recs: len(recs) >= 20,
                            timeout=60)
        assert sorted(r["payload"]["seq"] for r in arrived) == list(range(20))
        letters = read_json(stack, stack.topic(Kafka.DEAD_LETTER), dead_start,
                            keep=lambda v: v["device_id"] == poisoner.device_id, until=lambda recs: len(recs) >= 3,
                            timeout=60)
        assert len(letters) == 3 and "too_deep" in {r["reason"] for r in letters}
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.bridge_metrics_port}/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        poisoner.stop()
        good.stop()


# -- kill -9 under load ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProcess:
    """``python -m bridge`` as a child process with its own topics, share group and port."""

    def __init__(self, settings: Settings, instance: int):
        from devtools.stack.apps import settings_env

        self.settings, self.instance = settings, instance
        self.env = settings_env(settings)
        self.env["FLEET_BRIDGE_SHARE_GROUP"] = settings.bridge_share_group
        self.log = open(settings.log_dir / f"test-bridge-{instance}.log", "ab")
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> BridgeProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "--instance", str(self.instance), *extra],
                                     env=self.env, cwd=PROJECT_ROOT, stdout=self.log, stderr=self.log)
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        url = f"http://127.0.0.1:{self.settings.bridge_metrics_port}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "bridge exited"
            try:
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)  # poll interval of a deadline loop
        raise AssertionError("bridge did not become healthy")

    def produced(self) -> float:
        """Records this bridge has had confirmed by Kafka, from its own metrics endpoint."""
        url = f"http://127.0.0.1:{self.settings.bridge_metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=1).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("fleet_bridge_produced_total{"))

    def wait_produced(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.produced() < count:
            assert self.proc.poll() is None, "bridge exited"
            assert time.monotonic() < deadline, f"the bridge did not produce {count} records in {timeout:.0f} s"
            time.sleep(0.1)  # poll interval

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def own_bridge_settings(stack: Settings):
    from kafka.admin import KafkaAdminClient

    from fleet.infra.kafka import create_topics

    tag = uuid.uuid4().hex[:8]
    settings = stack.replace(topic_prefix=f"it-{tag}.", bridge_share_group=f"it-{tag}",
                             bridge_metrics_port=free_port())
    create_topics(settings, Kafka.ALL)
    yield settings
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics([settings.topic(n) for n in Kafka.ALL])
    finally:
        admin.close()


def test_kill_9_under_load_then_restart_loses_nothing(own_bridge_settings: Settings, enrollment, tmp_path):
    settings = own_bridge_settings
    instance = 900 + int(uuid.uuid4().hex[:4], 16) % 99  # not a number the stack's bridges use
    bridge = BridgeProcess(settings, instance).start()
    bridge.wait_healthy()

    prefix = unique("k9")
    identities = [enrollment.enroll(f"{prefix}-{i:02d}", tmp_path / f"{prefix}-{i:02d}") for i in range(20)]
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(report=run_worker(
        0, settings, identities, 40.0, 12.0, list(GENERATORS)[:3], 1.0, 60.0, report=lambda r: None)))
    load.start()  # 20 devices x 40 msg/s = 800 msg/s for 12 s
    bridge.wait_produced(2000)  # the load is flowing (about 2.5 s of it), not still connecting
    bridge.kill9()  # mid-stream: records in the producer's buffer, PUBACKs not yet sent
    assert load.is_alive(), "the load ended before the kill: nothing was in flight"
    time.sleep(2)  # a deliberate outage while the devices keep publishing (scenario, not a wait)
    bridge.start()
    bridge.wait_healthy()
    load.join(120)
    report = result["report"]
    assert report.unacked == 0 and report.dropped == 0 and report.sent > 5000

    expected = {(dev, seq) for dev, (first, nxt) in report.seq_ranges.items() for seq in range(first, nxt)}
    topic = settings.topic(Kafka.TELEMETRY)
    start = {tp: 0 for tp in end_offsets(settings, topic)}

    def covered(records: list[dict]) -> bool:
        return expected <= {(r["device_id"], r["payload"]["seq"]) for r in records}

    records = read_json(settings, topic, start, until=covered, timeout=120)
    seen = {(r["device_id"], r["payload"]["seq"]) for r in records}
    missing = sorted(expected - seen)
    assert not missing, f"{len(missing)} of {len(expected)} lost, e.g. {missing[:5]}"
    assert bridge.terminate() == 0
    # End the test instance's broker session so it stops collecting a share of later traffic.
    assert BridgeProcess(settings, instance).start("--retire").proc.wait(60) == 0


def test_a_device_the_registry_does_not_list_is_dead_lettered(stack: Settings, tmp_path):
    """A certificate from the platform CA is not enough: the registry is the source of truth."""
    from device.identity import enroll_locally
    from fleet.identity.pki import LocalPKI

    device_id = unique("unregistered")
    identity = enroll_locally(LocalPKI(stack.pki_dir), device_id, tmp_path / device_id)  # CA-signed, not registered
    agent = DeviceAgent(identity, AgentConfig.from_settings(stack)).start()
    assert agent.wait_connected(15)
    starts = {t: end_offsets(stack, stack.topic(t)) for t in (Kafka.TELEMETRY, Kafka.DEAD_LETTER)}
    try:
        agent.send_telemetry({"t": 1.0})
        dead = read_json(stack, stack.topic(Kafka.DEAD_LETTER), starts[Kafka.DEAD_LETTER],
                         keep=lambda v: v.get("device_id") == device_id and v["mqtt_topic"].endswith("/telemetry"),
                         until=lambda recs: len(recs) >= 1, timeout=30)
    finally:
        agent.stop()
    assert [d["reason"] for d in dead] == ["device_not_active"]
    leaked = read_json(stack, stack.topic(Kafka.TELEMETRY), starts[Kafka.TELEMETRY],
                       keep=lambda v: v["device_id"] == device_id, until=lambda recs: False, timeout=3)
    assert leaked == []



def test_the_bridge_may_read_the_brokers_drop_counter(stack: Settings):
    """Mosquitto drops a message for a full session queue after the device had its PUBACK; the
    bridge subscribes to the broker's count ($SYS) to make that visible. "#" does not match "$SYS"
    topics, so the services ACL must grant it explicitly: the broker grants the bridge's identity
    that subscription (MQTT 5 SUBACK), and the running bridge reports a count in /health."""
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from bridge.uplink import BROKER_DROPPED_TOPIC
    from fleet.identity.pki import LocalPKI

    pki = LocalPKI(stack.pki_dir)
    cert, key = pki.service_identity(stack.bridge_client_id)
    granted: list = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("sys-acl"), protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca_chain_path), certfile=str(cert), keyfile=str(key),
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(BROKER_DROPPED_TOPIC, SubscribeOptions(qos=0))])
    client.on_subscribe = lambda c, u, mid, codes, p: (granted.extend(codes), done.set())
    client.connect(stack.mqtt_host, stack.mqtt_service_port)
    client.loop_start()
    try:
        assert done.wait(15), "no SUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    assert [(code.is_failure, code.value) for code in granted] == [(False, 0)]

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.bridge_metrics_port}/health", timeout=5) as r:
        assert isinstance(json.load(r)["broker_dropped"], int)
