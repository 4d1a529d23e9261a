"""Kafka -> MQTT downlink: records of the downlink topic published at QoS 1 to devices/{id}/{suffix}.

Delivery guarantee (at least once, Kafka -> broker; devices deduplicate by shadow version or
command_id):
- a record's offset is marked done only when the broker PUBACKed its publish (or when it needs no
  publish: expired, or dead-lettered and confirmed by Kafka); the committed offset per partition is
  one past the longest acknowledged prefix (bridge.commit_frontier), committed every
  COMMIT_INTERVAL_S and on revoke/stop, never waiting for a Flink checkpoint. A crash re-reads
  everything after the last commit;
- MQTT disconnect: paho keeps every unacknowledged QoS 1 publish and sends it again (DUP) after
  the reconnect, in its original order, whatever the session; records read meanwhile wait in
  ``_held`` and are published after those, with their expiry checked again. So the Kafka
  consumer never seeks: a disconnect costs only the reconnect;
- expiry: a record past ``expires_at`` is skipped (counted), and a published one carries the
  remaining time as its MQTT 5 Message Expiry Interval, so the broker drops it from an offline
  device's queue once it is stale.

Offset reset: ``earliest``. The consumer group (``<bridge_share_group>-downlink``) is made once per
installation and its offsets are kept from then on, so ``earliest`` only matters for a brand-new
group (first start, or a renamed share group) or one whose offsets Kafka expired after every bridge
was down for longer than offsets.retention.minutes. ``latest`` would lose whatever the jobs wrote
before the group's first assignment (a command, a delta); ``earliest`` re-sends the retained
records instead, which is harmless: expired commands are skipped by ``expires_at`` and devices drop
shadow messages older than the version they hold.

Static group membership (``group.instance.id`` = the client id): a bridge restarted after kill -9
gets its partitions back at once instead of waiting for the dead member's session to time out.

Threads: the consumer thread polls Kafka (short timeouts: one record at a time, no batching, for
latency), plans each record and hands publishes to the MqttLoop thread with ``call_soon``; every
paho call happens on the loop thread. The commit frontier and the outstanding count are shared,
under ``_lock``. Backpressure: consuming pauses while ``max_outstanding`` publishes wait for a
PUBACK and resumes at half of it.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.commit_frontier import CommitFrontier
from bridge.metrics import DownlinkMetrics
from bridge.uplink import KEEPALIVE_S, make_producer
from fleet.config import Settings
from fleet.contract.envelope import (
    INVALID_DEVICE_ID,
    INVALID_ENVELOPE,
    INVALID_JSON,
    PAYLOAD_TOO_LARGE,
    SCHEMA_VIOLATION,
    UNKNOWN_TOPIC,
    DeadLetter,
    dead_letter,
)
from fleet.contract.topics import Kafka, device_topic, is_downlink_suffix, is_valid_device_id
from fleet.contract.validation import CompiledSchema, explain, kafka_schema
from fleet.logs import log_fields
from fleet.mqtt.loop import MqttLoop, Timer

log = logging.getLogger("bridge.downlink")

SOURCE = "bridge-downlink"
# The broker refused a publish (PUBACK reason code >= 0x80): dead-lettered, never retried.
PUBLISH_REFUSED = "publish_refused"
POLL_TIMEOUT_S = 0.05
COMMIT_INTERVAL_S = 0.2
SESSION_TIMEOUT_MS = 10_000  # a dead bridge's partitions move to the others after this
STUCK_AFTER_S = 30.0  # /health turns 503 when publishes wait longer than this for a PUBACK
DEAD_LETTER_ATTEMPTS = 3
MAX_EXPIRY_INTERVAL_S = 2**32 - 1


# -- the pure part: one record in, what to do with it out -----------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # devices/{device_id}/{suffix}
    payload: bytes
    device_id: str
    id: str
    created_at: int
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Expired:
    topic: str
    id: str
    late_ms: int


Plan = Publish | Expired | DeadLetter


def expiry_interval_s(expires_at: int | None, now_ms: int) -> int | None:
    """The MQTT 5 Message Expiry Interval for a message valid until ``expires_at`` (epoch ms):
    None without an expiry, 0 once expired, else the remaining whole seconds rounded up."""
    if expires_at is None:
        return None
    remaining_ms = expires_at - now_ms
    if remaining_ms <= 0:
        return 0
    return min(math.ceil(remaining_ms / 1000), MAX_EXPIRY_INTERVAL_S)


def plan_downlink(value: bytes | None, now_ms: int, max_bytes: int, kafka_topic: str,
                  schema: CompiledSchema | None = None) -> Plan:
    """Decide what one downlink record becomes: a publish, an expired skip or a dead letter.

    Checks, in order: JSON, an object, the device id, the suffix (``is_downlink_suffix``), the
    record schema (schemas/kafka/downlink.schema.json), the payload's size once serialised (what
    the device receives, at most ``max_bytes``), then ``expires_at`` against ``now_ms``.
    """
    raw = value or b""

    def reject(topic: str, reason: str, detail: str) -> DeadLetter:
        return dead_letter(topic, raw, now_ms, reason, detail, source=SOURCE)

    if value is None:
        return reject(kafka_topic, INVALID_JSON, "empty record (no value)")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        return reject(kafka_topic, INVALID_JSON, f"not valid JSON: {err}")
    if not isinstance(record, dict):
        return reject(kafka_topic, SCHEMA_VIOLATION, f"downlink: $: a record is an object, not {type(record).__name__}")
    device_id, suffix = record.get("device_id"), record.get("suffix")
    target = device_topic(device_id, suffix) if isinstance(device_id, str) and isinstance(suffix, str) else kafka_topic
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        return reject(target, INVALID_DEVICE_ID, f"device id {device_id!r} is not well-formed")
    if not isinstance(suffix, str) or not is_downlink_suffix(suffix):
        return reject(target, UNKNOWN_TOPIC, f"suffix {suffix!r} is not a downlink topic of the device contract")
    schema = schema or kafka_schema("downlink")
    if not schema.is_valid(record):
        return reject(target, SCHEMA_VIOLATION, f"{schema.name}: {explain(schema.reference, record)}")
    try:
        payload = orjson.dumps(record["payload"])
    except (TypeError, ValueError) as err:  # e.g. nested past orjson's limit
        return reject(target, INVALID_ENVELOPE, f"payload not serialisable: {err}")
    if len(payload) > max_bytes:
        return reject(target, PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes, the limit is {max_bytes}")
    expires_at = record.get("expires_at")
    if expires_at is not None and expires_at <= now_ms:
        return Expired(target, record.get("id", ""), now_ms - expires_at)
    return Publish(target, payload, device_id, record.get("id", ""), record["created_at"], expires_at)


# -- the shell: Kafka consumer thread + MQTT loop thread --------------------------------------


@dataclass(slots=True)
class _Item:
    partition: int
    offset: int
    plan: Publish


class DownlinkBridge:
    def __init__(self, settings: Settings, *, instance: int = 0, consumer: Any = None, producer: Any = None,
                 client: Any = None, registry=None, max_outstanding: int | None = None):
        self.settings = settings
        self.client_id = f"{settings.bridge_client_id}-downlink-{instance}"
        self.group_id = f"{settings.bridge_share_group}-downlink"
        self.topic = settings.topic(Kafka.DOWNLINK)
        self.dead_letter_topic = settings.topic(Kafka.DEAD_LETTER)
        self.metrics = DownlinkMetrics(registry)
        # paho numbers in-flight publishes with 16-bit ids: stay well below their range.
        self.max_outstanding = max(1, min(max_outstanding or settings.mqtt_max_inflight, 60_000))
        self.loop = MqttLoop(name="downlink-mqtt")
        self._consumer = consumer
        self._producer = producer
        self._lock = threading.Lock()
        self._frontier = CommitFrontier()
        self._outstanding = 0
        self._last_ack = time.monotonic()
        self._paused = False
        self._resync_pause = False
        self._stop_consuming = threading.Event()
        self._drain_timeout = 10.0
        self._thread: threading.Thread | None = None
        self._consumer_failed: str | None = None
        # Loop thread only:
        self._by_mid: dict[int, _Item] = {}
        self._held: deque[_Item] = deque()  # read while disconnected; published after the reconnect
        self._stopping = False
        self._backoff = 0.5
        self._reconnect_timer: Timer | None = None
        self._connect_attempted = False
        self._connected = threading.Event()
        self.client = client if client is not None else self._make_client()
        if client is not None:
            self._wire(client)

    # -- set-up -----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        from fleet.identity.ca import pki_from_settings  # the CA's files; production mounts them at the same paths

        pki = pki_from_settings(self.settings)
        cert, key = pki.service_identity(self.settings.bridge_client_id)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(pki.ca_chain_path), certfile=str(cert), keyfile=str(key),
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # paho's default (20 in flight, the rest queued) would serialise a burst behind PUBACKs.
        c.max_inflight_messages_set(self.max_outstanding)
        self._wire(c)
        return c

    def _wire(self, c) -> None:
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.loop.attach(c)

    def _make_consumer(self) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group_id,
            "client.id": self.client_id,
            "group.instance.id": self.client_id,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",  # see the module docstring
        })

    def start(self) -> DownlinkBridge:
        """Connect to Kafka (fail fast if the topics are missing), then MQTT, then consume."""
        if self._consumer is None:
            self._consumer = self._make_consumer()
        if self._producer is None:
            self._producer = make_producer(self.settings, self.client_id)
        wanted = {self.topic, self.dead_letter_topic}
        try:
            existing = set(self._consumer.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise RuntimeError(f"Kafka at {self.settings.kafka_bootstrap} is not reachable: {exc}") from exc
        if wanted - existing:
            raise RuntimeError(f"Kafka topics missing: {', '.join(sorted(wanted - existing))}")
        self.loop.start()
        self.loop.call_soon(self._connect)
        self._thread = threading.Thread(target=self._run, name="downlink-consumer", daemon=True)
        self._thread.start()
        log.info("downlink started", extra=log_fields(client_id=self.client_id, group=self.group_id, topic=self.topic,
                                                      max_outstanding=self.max_outstanding))
        return self

    # -- consumer thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
            next_commit = time.monotonic() + COMMIT_INTERVAL_S
            while not self._stop_consuming.is_set():
                self._apply_backpressure()
                msg = self._consumer.poll(POLL_TIMEOUT_S)
                if msg is not None:
                    self._consumed(msg)
                self._producer.poll(0)  # dead-letter delivery reports
                if time.monotonic() >= next_commit:
                    self._commit()
                    next_commit = time.monotonic() + COMMIT_INTERVAL_S
            self._drain()
        except Exception as exc:  # noqa: BLE001 - reported by /health; the process manager restarts us
            self._consumer_failed = f"{type(exc).__name__}: {exc}"
            log.exception("downlink consumer failed")

    def _consumed(self, msg) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                raise KafkaException(err)
            log.warning("Kafka consumer error", extra=log_fields(error=str(err)))
            return
        partition, offset = msg.partition(), msg.offset()
        now_ms = time.time_ns() // 1_000_000
        try:
            plan = plan_downlink(msg.value(), now_ms, self.settings.max_payload_bytes, msg.topic())
        except Exception as exc:  # noqa: BLE001 - poison for this record only
            plan = dead_letter(msg.topic(), msg.value() or b"", now_ms, INVALID_ENVELOPE,
                               f"{type(exc).__name__}: {exc}"[:300], source=SOURCE)
        with self._lock:
            self._frontier.track(partition, offset)
            if isinstance(plan, Publish):
                if self._outstanding == 0:
                    self._last_ack = time.monotonic()  # "stuck" counts from when something waits
                self._outstanding += 1
        if isinstance(plan, Publish):
            self.loop.call_soon(self._publish, _Item(partition, offset, plan))
        elif isinstance(plan, Expired):
            self.metrics.expired.inc()
            log.info("downlink record expired, not published",
                     extra=log_fields(mqtt_topic=plan.topic, id=plan.id, late_ms=plan.late_ms))
            self._done(partition, offset)
        else:
            self._dead_letter(plan, partition, offset)

    def _done(self, partition: int, offset: int) -> None:
        with self._lock:
            self._frontier.done(partition, offset)

    def _dead_letter(self, dl: DeadLetter, partition: int, offset: int) -> None:
        """Produce the dead letter; the offset is done once Kafka confirmed it (or gave up)."""
        self.metrics.dead_lettered.labels(dl.reason).inc()
        log.info("downlink record dead-lettered", extra=log_fields(reason=dl.reason, detail=dl.detail,
                                                                   partition=partition, offset=offset))
        self._produce_dead_letter(dl, partition, offset, 1)

    def _produce_dead_letter(self, dl: DeadLetter, partition: int, offset: int, attempt: int) -> None:
        # A dead letter is diagnostics: after a few failed attempts (each one librdkafka's own
        # retries for DELIVERY_TIMEOUT_MS) the record is skipped rather than stalling its partition.
        def delivered(err, _msg) -> None:
            if err is not None and attempt < DEAD_LETTER_ATTEMPTS and not self._stop_consuming.is_set():
                self._produce_dead_letter(dl, partition, offset, attempt + 1)
                return
            if err is not None:
                log.error("could not dead-letter a downlink record; skipping it",
                          extra=log_fields(error=str(err), reason=dl.reason, partition=partition, offset=offset))
            self._done(partition, offset)

        self._produce(dl, delivered)

    def _produce(self, dl: DeadLetter, on_delivery: Callable[[Any, Any], None]) -> None:
        while True:
            try:
                self._producer.produce(self.dead_letter_topic, dl.value, dl.key, on_delivery=on_delivery)
                return
            except BufferError:  # the producer's queue is full: serve reports, then try again
                self._producer.poll(0.1)

    def _apply_backpressure(self) -> None:
        with self._lock:
            outstanding = self._outstanding
        self.metrics.outstanding.set(outstanding)
        if self._resync_pause:  # after a rebalance: set the new assignment's state explicitly
            self._resync_pause = False
            self._paused = outstanding > self.max_outstanding // 2
            (self._consumer.pause if self._paused else self._consumer.resume)(self._consumer.assignment())
        if not self._paused and outstanding >= self.max_outstanding:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        elif self._paused and outstanding <= self.max_outstanding // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        self.metrics.paused.set(1 if self._paused else 0)

    def _commit(self, partitions: list[int] | None = None, asynchronous: bool = True, every: bool = False) -> None:
        """Commit the points that moved; ``partitions``: those partitions' points; ``every``: all points."""
        with self._lock:
            if every:
                points = self._frontier.commit_points()
            elif partitions is None:
                points = self._frontier.to_commit()
            else:
                points = {p: point for p in partitions if (point := self._frontier.commit_point(p)) is not None}
        if not points:
            return
        offsets = [TopicPartition(self.topic, p, point) for p, point in points.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:  # the next commit carries a later point; a crash re-reads a little more
            self.metrics.commit_errors.inc()
            log.warning("offset commit failed", extra=log_fields(error=str(exc)))

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._frontier.reset(tp.partition)
        self._resync_pause = True  # the next backpressure check pauses or resumes the new assignment
        log.info("downlink partitions assigned", extra=log_fields(partitions=[tp.partition for tp in partitions]))

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was acknowledged, then forget: the next owner re-reads the rest."""
        revoked = [tp.partition for tp in partitions]
        self._commit(revoked, asynchronous=False)
        with self._lock:
            for p in revoked:
                self._frontier.reset(p)
        log.info("downlink partitions revoked", extra=log_fields(partitions=revoked))

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:  # already someone else's: committing could move their offsets
            for tp in partitions:
                self._frontier.reset(tp.partition)
        log.warning("downlink partitions lost", extra=log_fields(partitions=[tp.partition for tp in partitions]))

    def _drain(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self._drain_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            with self._lock:
                if self._outstanding == 0 and not self._frontier.outstanding:
                    break
            self._producer.poll(0.05)
            self._commit()
        self._commit(asynchronous=False, every=True)  # also redoes any async commit that failed
        self._consumer.close()

    # -- MQTT (loop thread) -----------------------------------------------------------------
    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            return
        try:
            if not self._connect_attempted:
                self._connect_attempted = True
                # A clean session: a publisher keeps nothing on the broker; paho resends its
                # unacknowledged publishes on any reconnect anyway.
                self.client.connect(self.settings.mqtt_host, self.settings.mqtt_service_port,
                                    keepalive=KEEPALIVE_S, clean_start=True)
            else:
                self.client.reconnect()
        except (OSError, ssl.SSLError) as exc:
            log.warning("downlink MQTT connect failed", extra=log_fields(error=str(exc)))
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._stopping or self._reconnect_timer is not None:
            return
        delay = self._backoff * random.uniform(0.5, 1.5)
        self._backoff = min(self._backoff * 2, 30.0)
        self._reconnect_timer = self.loop.call_later(delay, self._connect)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the downlink", extra=log_fields(reason=str(reason_code)))
            return
        self._backoff = 0.5
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if receive_max is not None and receive_max < self.max_outstanding:
            # paho does not apply the broker's Receive Maximum itself; the broker would drop us.
            log.warning("the broker takes fewer publishes in flight than the downlink sends",
                        extra=log_fields(receive_maximum=receive_max, max_outstanding=self.max_outstanding,
                                         hint="set FLEET_MQTT_MAX_INFLIGHT to the broker's max_inflight_messages"))
        # After paho has resent what was in flight (it does so once this callback returns), so a
        # device still gets its messages in order.
        self.loop.call_soon(self._release_held)
        log.info("downlink connected to MQTT", extra=log_fields(held=len(self._held), in_flight=len(self._by_mid)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("downlink MQTT connection lost", extra=log_fields(reason=str(reason_code),
                                                                          in_flight=len(self._by_mid)))
            self._schedule_reconnect()

    def _release_held(self) -> None:
        while self._held and self._connected.is_set():
            self._send(self._held.popleft())

    def _publish(self, item: _Item) -> None:
        if not self._connected.is_set() or self._held:
            self._held.append(item)  # keep the order: behind whatever already waits
            return
        self._send(item)

    def _send(self, item: _Item) -> None:
        plan = item.plan
        interval = expiry_interval_s(plan.expires_at, time.time_ns() // 1_000_000)
        if interval == 0:  # it expired while waiting for a connection
            self.metrics.expired.inc()
            self._finished(item)
            return
        props = None
        if interval is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = interval
        info = self.client.publish(plan.topic, plan.payload, qos=1, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # its packet id is still taken: try again shortly
            self.loop.call_later(0.01, self._send, item)
            return
        self._by_mid[info.mid] = item
        self.metrics.published.inc()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        item = self._by_mid.pop(mid, None)
        if item is None:
            return
        if reason_code.is_failure:
            log.error("the broker refused a downlink publish", extra=log_fields(
                reason=str(reason_code), mqtt_topic=item.plan.topic, id=item.plan.id))
            dl = dead_letter(item.plan.topic, item.plan.payload, time.time_ns() // 1_000_000, PUBLISH_REFUSED,
                             f"PUBACK reason {reason_code}", source=SOURCE)
            with self._lock:
                self._outstanding -= 1
            self._dead_letter(dl, item.partition, item.offset)  # produce() is thread-safe
            return
        self.metrics.acked.inc()
        if reason_code.value == 0x10:  # No matching subscribers
            self.metrics.no_subscribers.inc()
        self.metrics.latency.observe(max(0.0, time.time() - item.plan.created_at / 1000))
        self._finished(item)

    def _finished(self, item: _Item) -> None:
        with self._lock:
            self._outstanding -= 1
            self._last_ack = time.monotonic()
            self._frontier.done(item.partition, item.offset)

    # -- health and shutdown ----------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        with self._lock:
            outstanding = self._outstanding
            stuck = outstanding > 0 and time.monotonic() - self._last_ack > STUCK_AFTER_S
        alive = self._thread is not None and self._thread.is_alive() and self._consumer_failed is None
        connected = self._connected.is_set()
        ok = connected and alive and not stuck
        detail = {"status": "ok" if ok else "unavailable", "client_id": self.client_id, "mqtt_connected": connected,
                  "consumer_alive": alive, "outstanding": outstanding, "paused": self._paused, "stuck": stuck}
        if self._consumer_failed:
            detail["consumer_error"] = self._consumer_failed
        return ok, detail

    def stop(self, drain_timeout: float = 10.0) -> bool:
        """Stop consuming, wait for outstanding PUBACKs, commit, leave; True if all were acked."""
        log.info("downlink stopping", extra=log_fields(outstanding=self._outstanding))
        self._drain_timeout = drain_timeout
        self._stop_consuming.set()
        if self._thread is not None:
            self._thread.join(drain_timeout + 15)
        with self._lock:
            drained = self._outstanding == 0
        done = threading.Event()

        def disconnect() -> None:
            self._stopping = True
            if self._reconnect_timer is not None:
                self._reconnect_timer.cancel()
            self.client.disconnect()
            done.set()

        self.loop.call_soon(disconnect)
        done.wait(5)
        self.loop.stop()
        if self._producer is not None:
            self._producer.flush(5)
        log.info("downlink stopped", extra=log_fields(drained=drained))
        return drained
