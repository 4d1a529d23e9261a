"""The downlink without a broker: the record -> publish plan table, expiry, and the threading shell
(consumer thread + MQTT loop) with stand-ins for Kafka and the MQTT client."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest
from confluent_kafka import TopicPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bridge import downlink
from bridge.downlink import DownlinkBridge, Expired, Publish, expiry_interval_s, plan_downlink
from fleet.config import Settings
from fleet.contract.envelope import DeadLetter
from fleet.contract.validation import kafka_schema

NOW = 1_700_000_000_000
MAX = 256
TOPIC = "fleet.downlink"


def record(**fields) -> dict:
    base = {"device_id": "d-1", "suffix": "commands", "payload": {"command_id": "c-1", "name": "reboot"},
            "id": "c-1", "created_at": NOW - 5}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


# -- plan_downlink: table-driven ------------------------------------------------------------

# (record bytes, mqtt topic, expires_at)
PUBLISHED = [
    (raw(record()), "devices/d-1/commands", None),
    (raw(record(suffix="shadow/delta", id="@7", payload={"version": 7, "state": {"led": "on"}})),
     "devices/d-1/shadow/delta", None),
    (raw(record(suffix="shadow/name/fw:cfg/accepted")), "devices/d-1/shadow/name/fw:cfg/accepted", None),
    (raw(record(suffix="ota/notify", id="dep-1:1", payload={"op": "cancel", "deployment_id": "dep-1"})),
     "devices/d-1/ota/notify", None),
    (raw(record(expires_at=NOW + 1)), "devices/d-1/commands", NOW + 1),
    (raw(record(expires_at=None)), "devices/d-1/commands", None),
    (raw(record(id=...)), "devices/d-1/commands", None),  # id is optional
]


@pytest.mark.parametrize("value, topic, expires_at", PUBLISHED, ids=[str(i) for i in range(len(PUBLISHED))])
def test_good_records_become_publishes(value, topic, expires_at):
    plan = plan_downlink(value, NOW, MAX, TOPIC)
    rec = json.loads(value)
    assert plan == Publish(topic, json.dumps(rec["payload"], separators=(",", ":")).encode(), "d-1",
                           rec.get("id", ""), NOW - 5, expires_at)


# (record bytes, reason, mqtt_topic of the dead letter, detail contains)
DEAD = [
    (None, "invalid_json", TOPIC, "empty record"),
    (b"", "invalid_json", TOPIC, "not valid JSON"),
    (b'{"device_id": "d-1", ', "invalid_json", TOPIC, "not valid JSON"),
    (b"[1, 2]", "schema_violation", TOPIC, "not list"),
    (raw(record(device_id="bad id")), "invalid_device_id", "devices/bad id/commands", "not well-formed"),
    (raw(record(device_id=...)), "invalid_device_id", TOPIC, "None"),
    (raw(record(device_id=7)), "invalid_device_id", TOPIC, "7"),
    (raw(record(device_id="x" * 65)), "invalid_device_id", f"devices/{'x' * 65}/commands", ""),
    (raw(record(suffix="telemetry")), "unknown_topic", "devices/d-1/telemetry", "not a downlink topic"),
    (raw(record(suffix="shadow/update")), "unknown_topic", "devices/d-1/shadow/update", "not a downlink topic"),
    (raw(record(suffix="shadow/name/a.b/delta")), "unknown_topic", "devices/d-1/shadow/name/a.b/delta", ""),
    (raw(record(suffix="commands/#")), "unknown_topic", "devices/d-1/commands/#", ""),
    (raw(record(suffix=...)), "unknown_topic", TOPIC, "None"),
    (raw(record(payload=[1])), "schema_violation", "devices/d-1/commands", "$.payload"),
    (raw(record(payload="reboot")), "schema_violation", "devices/d-1/commands", "$.payload"),
    (raw(record(payload=...)), "schema_violation", "devices/d-1/commands", "'payload' is a required property"),
    (raw(record(created_at=...)), "schema_violation", "devices/d-1/commands", "'created_at' is a required property"),
    (raw(record(created_at="now")), "schema_violation", "devices/d-1/commands", "$.created_at"),
    (raw(record(expires_at="soon")), "schema_violation", "devices/d-1/commands", "$.expires_at"),
    (raw(record(extra=1)), "schema_violation", "devices/d-1/commands", "extra"),
    (raw(record(payload={"pad": "x" * MAX})), "payload_too_large", "devices/d-1/commands", f"the limit is {MAX}"),
]


@pytest.mark.parametrize("value, reason, mqtt_topic, detail", DEAD, ids=[f"{d[1]}-{i}" for i, d in enumerate(DEAD)])
def test_bad_records_become_dead_letters(value, reason, mqtt_topic, detail):
    plan = plan_downlink(value, NOW, MAX, TOPIC)
    assert isinstance(plan, DeadLetter) and plan.reason == reason and plan.topic == "dead-letter"
    letter = json.loads(plan.value)
    assert kafka_schema("dead-letter").is_valid(letter), letter
    assert (letter["source"], letter["mqtt_topic"], letter["ingest_ts"]) == ("bridge-downlink", mqtt_topic, NOW)
    assert base64.b64decode(letter["raw_b64"]) == (value or b"")
    assert detail in letter["detail"]


def test_the_size_limit_is_on_the_payload_the_device_gets_and_inclusive():
    payload = {"pad": "x" * 50}
    size = len(json.dumps(payload, separators=(",", ":")))
    assert isinstance(plan_downlink(raw(record(payload=payload)), NOW, size, TOPIC), Publish)
    assert plan_downlink(raw(record(payload=payload)), NOW, size - 1, TOPIC).reason == "payload_too_large"


@pytest.mark.parametrize("expires_at, expired", [(NOW - 1, True), (NOW, True), (NOW + 1, False), (None, False)])
def test_a_record_past_expires_at_is_skipped(expires_at, expired):
    plan = plan_downlink(raw(record(expires_at=expires_at)), NOW, MAX, TOPIC)
    if expired:
        assert plan == Expired("devices/d-1/commands", "c-1", NOW - expires_at)
    else:
        assert isinstance(plan, Publish)


@pytest.mark.parametrize("expires_at, interval", [
    (None, None), (NOW - 5, 0), (NOW, 0), (NOW + 1, 1), (NOW + 1000, 1), (NOW + 1001, 2), (NOW + 30_000, 30),
    (NOW + 2**40 * 1000, 2**32 - 1),
])
def test_expiry_interval_rounds_the_remaining_time_up(expires_at, interval):
    assert expiry_interval_s(expires_at, NOW) == interval


# -- the shell, with stand-ins ----------------------------------------------------------------


class Msg:
    def __init__(self, partition: int, offset: int, value: bytes | None):
        self._p, self._o, self._v = partition, offset, value

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def topic(self):
        return TOPIC

    def error(self):
        return None


class FakeConsumer:
    """confluent-kafka Consumer surface the downlink uses; the test feeds records with add()."""

    def __init__(self, partitions=(0, 1)):
        self.partitions = [TopicPartition(TOPIC, p) for p in partitions]
        self.queue: deque[Msg] = deque()
        self.commits: list[tuple[dict[int, int], bool]] = []
        self.paused = False
        self.pauses = 0
        self.closed = False
        self.callbacks: dict = {}
        self._assigned = False

    def list_topics(self, timeout=None):
        return SimpleNamespace(topics={TOPIC: None, "fleet.dead-letter": None})

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        assert topics == [TOPIC]
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def add(self, partition: int, offset: int, value) -> None:
        self.queue.append(Msg(partition, offset, value if value is None or isinstance(value, bytes) else raw(value)))

    def poll(self, timeout):
        if not self._assigned:
            self._assigned = True
            self.callbacks["assign"](self, self.partitions)
        if self.revoke_now:
            partitions, self.revoke_now = self.revoke_now, None
            self.callbacks["revoke"](self, partitions)
        if not self.paused and self.queue:
            return self.queue.popleft()
        time.sleep(min(timeout, 0.005))
        return None

    revoke_now = None

    def assignment(self):
        return list(self.partitions)

    def pause(self, partitions):
        self.paused, self.pauses = True, self.pauses + 1

    def resume(self, partitions):
        self.paused = False

    def commit(self, offsets, asynchronous=True):
        self.commits.append(({tp.partition: tp.offset for tp in offsets}, asynchronous))

    def committed_point(self, partition: int) -> int | None:
        points = [c[partition] for c, _ in self.commits if partition in c]
        return max(points) if points else None

    def close(self):
        self.closed = True


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.callbacks: list = []
        self.reports: deque = deque()
        self.auto_confirm = True

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, value, key))
        self.callbacks.append(on_delivery)
        if self.auto_confirm:
            self.reports.append((on_delivery, None))

    def confirm(self, i: int, err=None) -> None:
        self.reports.append((self.callbacks[i], err))  # served by the consumer thread's poll

    def poll(self, timeout=None):
        while self.reports:
            callback, err = self.reports.popleft()
            callback(err, None)

    def flush(self, timeout=None):
        self.poll()


class FakeClient:
    """paho Client surface: connect() answers with on_connect; publishes are recorded, PUBACKs sent by the test."""

    def __init__(self):
        self.bridge: DownlinkBridge | None = None
        self.published: list[tuple[int, str, bytes, int, object]] = []
        self.disconnected = False
        self._mid = 0

    def connect(self, host, port, keepalive=60, clean_start=True, properties=None):
        self.bridge.loop.call_soon(self.bridge._on_connect, self, None, None, ReasonCode(PacketTypes.CONNACK), None)

    def reconnect(self):
        pass  # tests reconnect explicitly

    def publish(self, topic, payload, qos=0, properties=None):
        self._mid += 1
        self.published.append((self._mid, topic, payload, qos, properties))
        return SimpleNamespace(mid=self._mid, rc=0)

    def disconnect(self, properties=None):
        self.disconnected = True

    def is_connected(self):
        return not self.disconnected


def wait_for(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def on_loop(bridge: DownlinkBridge, fn, *args) -> None:
    done = threading.Event()
    bridge.loop.call_soon(lambda: (fn(*args), done.set()))
    assert done.wait(2)


def puback(bridge: DownlinkBridge, mid: int, code: int = 0) -> None:
    on_loop(bridge, bridge._on_publish, bridge.client, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=code), None)


@pytest.fixture
def make_bridge(tmp_path, monkeypatch):
    monkeypatch.setattr(downlink, "COMMIT_INTERVAL_S", 0.01)
    made: list[DownlinkBridge] = []

    def make(max_outstanding: int = 100) -> DownlinkBridge:
        client = FakeClient()
        bridge = DownlinkBridge(Settings(var_dir=tmp_path, max_payload_bytes=MAX), consumer=FakeConsumer(),
                                producer=FakeProducer(), client=client, max_outstanding=max_outstanding)
        client.bridge = bridge
        made.append(bridge.start())
        wait_for(lambda: bridge.health()[0])
        return bridge

    yield make
    for bridge in made:
        if not bridge._stop_consuming.is_set():
            bridge.stop(drain_timeout=0.2)


def test_names_of_the_client_group_and_topic(make_bridge):
    bridge = make_bridge()
    assert (bridge.client_id, bridge.group_id, bridge.topic) == ("fleet-bridge-downlink-0", "bridge-downlink", TOPIC)


def test_offsets_are_committed_only_past_acknowledged_publishes(make_bridge):
    bridge = make_bridge()
    c, mqtt = bridge._consumer, bridge.client
    c.add(0, 10, record(id="a"))
    c.add(0, 11, record(id="b", device_id="d-2"))
    wait_for(lambda: len(mqtt.published) == 2)
    (m1, t1, p1, q1, props1), (m2, t2, *_rest) = mqtt.published
    assert (t1, q1, props1, json.loads(p1)) == ("devices/d-1/commands", 1, None, record()["payload"])
    assert t2 == "devices/d-2/commands"
    time.sleep(0.05)
    assert c.committed_point(0) in (None, 10)  # nothing acknowledged: offset 10 is read again after a crash
    puback(bridge, m2)  # out of order: 11 acknowledged, 10 not
    time.sleep(0.05)
    assert c.committed_point(0) in (None, 10)
    puback(bridge, m1)
    wait_for(lambda: c.committed_point(0) == 12)
    assert bridge.metrics.value("fleet_downlink_acked_total") == 2
    assert bridge.metrics.value("fleet_downlink_published_total") == 2
    assert bridge.metrics.value("fleet_downlink_latency_seconds_count") == 2
    assert bridge._outstanding == 0


def test_a_publish_carries_the_remaining_time_as_message_expiry(make_bridge):
    bridge = make_bridge()
    now = int(time.time() * 1000)
    bridge._consumer.add(0, 0, record(expires_at=now + 30_000, created_at=now))
    wait_for(lambda: bridge.client.published)
    props = bridge.client.published[0][4]
    assert 28 <= props.MessageExpiryInterval <= 30


def test_an_expired_record_is_counted_committed_and_never_published(make_bridge):
    bridge = make_bridge()
    bridge._consumer.add(1, 4, record(expires_at=int(time.time() * 1000) - 1))
    wait_for(lambda: bridge._consumer.committed_point(1) == 5)
    assert bridge.client.published == [] and bridge.metrics.value("fleet_downlink_expired_total") == 1


def test_a_bad_record_is_dead_lettered_and_never_stalls_the_partition(make_bridge):
    bridge = make_bridge()
    c, producer = bridge._consumer, bridge._producer
    producer.auto_confirm = False
    c.add(0, 0, b"not json")
    c.add(0, 1, record(device_id="d-9"))
    wait_for(lambda: len(bridge.client.published) == 1)  # the next record went out meanwhile
    assert bridge.client.published[0][1] == "devices/d-9/commands"
    assert [(t, json.loads(v)["reason"]) for t, v, _ in producer.sent] == [("fleet.dead-letter", "invalid_json")]
    puback(bridge, bridge.client.published[0][0])
    time.sleep(0.05)
    assert c.committed_point(0) in (None, 0)  # the dead letter is not confirmed yet
    producer.confirm(0)  # Kafka confirms the dead letter
    wait_for(lambda: c.committed_point(0) == 2)
    assert bridge.metrics.value("fleet_downlink_dead_lettered_total", reason="invalid_json") == 1


def test_a_dead_letter_kafka_keeps_failing_is_skipped_after_a_few_attempts(make_bridge):
    from confluent_kafka import KafkaError

    bridge = make_bridge()
    c, producer = bridge._consumer, bridge._producer
    producer.auto_confirm = False
    c.add(1, 7, record(suffix="telemetry"))
    for attempt in range(downlink.DEAD_LETTER_ATTEMPTS):
        wait_for(lambda attempt=attempt: len(producer.sent) == attempt + 1)
        assert c.committed_point(1) in (None, 7)
        producer.confirm(attempt, KafkaError(KafkaError._MSG_TIMED_OUT))
    wait_for(lambda: c.committed_point(1) == 8)
    assert len(producer.sent) == downlink.DEAD_LETTER_ATTEMPTS
    assert json.loads(producer.sent[0][1])["reason"] == "unknown_topic" and producer.sent[0][2] == b"d-1"


def test_consuming_pauses_at_the_bound_and_resumes_at_half(make_bridge):
    bridge = make_bridge(max_outstanding=4)
    c, mqtt = bridge._consumer, bridge.client
    for offset in range(10):
        c.add(0, offset, record(id=str(offset), payload={"n": offset}))
    wait_for(lambda: len(mqtt.published) == 4 and c.paused)
    time.sleep(0.05)
    assert len(mqtt.published) == 4 and bridge.metrics.value("fleet_downlink_paused") == 1
    puback(bridge, mqtt.published[0][0])
    time.sleep(0.05)
    assert c.paused  # 3 outstanding: above half the bound
    puback(bridge, mqtt.published[1][0])
    wait_for(lambda: len(mqtt.published) > 4)
    for mid, *_ in list(mqtt.published[2:]):
        puback(bridge, mid)
    wait_for(lambda: len(mqtt.published) == 10)
    for mid, *_ in mqtt.published[4:]:
        puback(bridge, mid)
    wait_for(lambda: c.committed_point(0) == 10)
    assert [json.loads(p)["n"] for _, _, p, *_ in mqtt.published] == list(range(10))  # in partition order


def test_records_read_while_disconnected_wait_and_go_out_in_order_after_the_reconnect(make_bridge):
    bridge = make_bridge()
    c, mqtt = bridge._consumer, bridge.client
    c.add(0, 0, record(payload={"n": "sent-before"}))
    wait_for(lambda: len(mqtt.published) == 1)
    on_loop(bridge, bridge._on_disconnect, mqtt, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
    assert not bridge.health()[0] and bridge.health()[1]["mqtt_connected"] is False
    soon = int(time.time() * 1000) + 150
    c.add(0, 1, record(payload={"n": "held-1"}))
    c.add(0, 2, record(payload={"n": "held-expiring"}, expires_at=soon))
    c.add(0, 3, record(payload={"n": "held-2"}))
    wait_for(lambda: len(bridge._held) == 3)
    assert len(mqtt.published) == 1
    time.sleep(0.2)  # held-expiring expires while the bridge is offline
    on_loop(bridge, bridge._on_connect, mqtt, None, None, ReasonCode(PacketTypes.CONNACK), None)
    wait_for(lambda: len(mqtt.published) == 3)
    assert [json.loads(p)["n"] for _, _, p, *_ in mqtt.published] == ["sent-before", "held-1", "held-2"]
    assert bridge.metrics.value("fleet_downlink_expired_total") == 1
    # The publish in flight at the disconnect is paho's to resend; its PUBACK still completes it.
    for mid, *_ in mqtt.published:
        puback(bridge, mid)
    wait_for(lambda: c.committed_point(0) == 4)
    assert bridge._outstanding == 0


def test_a_revoke_commits_the_acknowledged_prefix_and_forgets_the_rest(make_bridge):
    bridge = make_bridge()
    c, mqtt = bridge._consumer, bridge.client
    for offset in (20, 21, 22):
        c.add(1, offset, record(id=str(offset)))
    wait_for(lambda: len(mqtt.published) == 3)
    puback(bridge, mqtt.published[0][0])
    wait_for(lambda: c.committed_point(1) == 21)
    c.revoke_now = [TopicPartition(TOPIC, 1)]
    wait_for(lambda: c.revoke_now is None)
    assert c.commits[-1] == ({1: 21}, False)  # synchronous, before the partition moves
    puback(bridge, mqtt.published[2][0])  # late acks of a revoked partition commit nothing
    puback(bridge, mqtt.published[1][0])
    time.sleep(0.05)
    assert c.committed_point(1) == 21 and bridge._outstanding == 0


def test_a_publish_the_broker_refuses_is_dead_lettered(make_bridge):
    bridge = make_bridge()
    c, mqtt = bridge._consumer, bridge.client
    c.add(0, 3, record())
    wait_for(lambda: mqtt.published)
    puback(bridge, mqtt.published[0][0], 0x87)  # Not authorized
    wait_for(lambda: c.committed_point(0) == 4)
    letter = json.loads(bridge._producer.sent[0][1])
    assert (letter["reason"], letter["mqtt_topic"]) == ("publish_refused", "devices/d-1/commands")
    assert kafka_schema("dead-letter").is_valid(letter)
    assert bridge.metrics.value("fleet_downlink_acked_total") == 0


def test_no_matching_subscribers_is_an_acknowledgement(make_bridge):
    bridge = make_bridge()
    bridge._consumer.add(0, 0, record())
    wait_for(lambda: bridge.client.published)
    puback(bridge, bridge.client.published[0][0], 0x10)
    wait_for(lambda: bridge._consumer.committed_point(0) == 1)
    assert bridge.metrics.value("fleet_downlink_no_subscribers_total") == 1


def test_stop_waits_for_outstanding_acks_commits_and_closes(make_bridge):
    bridge = make_bridge()
    c, mqtt = bridge._consumer, bridge.client
    c.add(0, 0, record())
    wait_for(lambda: mqtt.published)
    stopper = threading.Thread(target=lambda: setattr(bridge, "drained", bridge.stop(drain_timeout=5)))
    stopper.start()
    time.sleep(0.1)
    assert stopper.is_alive() and not c.closed
    puback(bridge, mqtt.published[0][0])
    stopper.join(5)
    assert bridge.drained and c.closed and mqtt.disconnected
    assert c.commits[-1] == ({0: 1}, False)  # the final commit is synchronous
    assert not bridge.health()[0]


def test_health_reports_a_dead_consumer(make_bridge):
    bridge = make_bridge()
    ok, detail = bridge.health()
    assert ok and detail["consumer_alive"] and detail["outstanding"] == 0

    def broken(timeout):
        raise RuntimeError("boom")

    bridge._consumer.poll = broken
    wait_for(lambda: not bridge.health()[0])
    assert "boom" in bridge.health()[1]["consumer_error"]
