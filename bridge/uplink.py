"""MQTT -> Kafka uplink: a thin shell around fleet.contract.envelope.handle_uplink.

Delivery guarantee (at least once, device -> Kafka):
- the bridge subscribes with a persistent MQTT 5 session (clean_start=False, long session
  expiry) under a client id that is stable per instance (``<bridge_client_id>-<instance>``);
- paho runs with ``manual_ack=True``: a message is PUBACKed only after Kafka confirmed its record
  (for dead letters too), so whatever the bridge had not confirmed when it died is still
  unacknowledged in its broker session, and the broker resends it when the instance reconnects;
- while the instance is down the session keeps its subscriptions, so the broker queues new
  messages for it (up to ``max_queued_messages``) instead of dropping them.

One thread does it all: the MqttLoop thread receives (paho), validates, hands the record to the
Kafka producer (confluent-kafka: batching, retries and I/O run in librdkafka's C threads), and
polls the producer's delivery reports on every loop iteration, so the PUBACK for a confirmed
record is sent from the same thread that owns the paho client (paho is not safe to drive from
two threads with an external loop). Acks carry the MQTT connection generation they arrived in;
after a reconnect the broker resends unacknowledged messages with the same packet ids, so an
ack from an older generation is dropped (it could otherwise release a newer message that reused
the id before that one's record was confirmed).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Producer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.metrics import BridgeMetrics, HttpEndpoint
from fleet.config import Settings
from fleet.contract.envelope import (
    INVALID_ENVELOPE,
    DeadLetter,
    RegistryUnavailable,
    Routed,
    dead_letter,
    handle_uplink,
)
from fleet.contract.topics import Kafka, Uplink
from fleet.contract.validation import UplinkValidators, default_validators
from fleet.logs import log_fields
from fleet.mqtt.broker_log import BROKER_NOTICE_LOG_TOPIC, parse_disconnect
from fleet.mqtt.loop import MqttLoop, Timer
from fleet.mqtt.paho_speedups import ack_many
from fleet.mqtt.paho_speedups import install as install_paho_speedups

log = logging.getLogger("bridge")

SESSION_EXPIRY_S = 7 * 24 * 3600  # keep an instance's queue across restarts and outages
KEEPALIVE_S = 30
DELIVERY_TIMEOUT_MS = 120_000  # then a record counts as failed and its message is redelivered
STUCK_AFTER_S = 30.0  # /health turns 503 when records wait longer than this for Kafka
# Past this long without any confirmation while records wait (or on a fatal producer error,
# e.g. the idempotent producer's sequence state broken), the producer is replaced.
REPLACE_PRODUCER_AFTER_S = 150.0
WATCHDOG_INTERVAL_S = 5.0
# Mosquitto's count of messages dropped because a session's queue (max_queued_messages) was full,
# published (retained) at most every sys_interval (10 s), and only once it is non-zero. Such a drop
# happens after the device had its PUBACK, so it is the one loss the bridge cannot prevent: it can
# only make it loud (metric + error log).
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
# While records are in flight the loop wakes at least this often to collect delivery reports.
DELIVERY_POLL_S = 0.002


def shared_filters(group: str) -> list[str]:
    """One MQTT 5 shared subscription per uplink topic filter: members of ``group`` split the load."""
    return [f"$share/{group}/{f}" for kind in Uplink for f in kind.mqtt_filters]


def make_producer(settings: Settings, client_id: str) -> Producer:
    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        # Idempotence: retries can neither duplicate nor reorder a partition's records.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.kafka_linger_ms,
        "batch.size": settings.kafka_batch_size,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        # The Java client's key -> partition mapping (librdkafka's default differs).
        "partitioner": "murmur2_random",
    })


class _Delivery:
    """Delivery report of one record; runs on the loop thread (from ``producer.poll``).

    ``gen`` is the MQTT connection the message came in on, ``epoch`` the producer that took it.
    """

    __slots__ = ("bridge", "mid", "qos", "gen", "epoch", "t0")

    def __init__(self, bridge: UplinkBridge, mid: int, qos: int, gen: int, epoch: int, t0: float):
        self.bridge, self.mid, self.qos, self.gen, self.epoch, self.t0 = bridge, mid, qos, gen, epoch, t0

    def __call__(self, err: KafkaError | None, msg) -> None:
        if err is None:
            self.bridge._delivered(self, msg.topic())
        else:
            self.bridge._delivery_failed(self, err)


class UplinkBridge:
    def __init__(self, settings: Settings, *, instance: int = 0, producer: Producer | None = None,
                 validators: UplinkValidators | None = None, http_host: str = "127.0.0.1", retire: bool = False,
                 active_check: Callable[[str], bool] | None = None):
        self.settings = settings
        self.client_id = f"{settings.bridge_client_id}-{instance}"
        self.metrics = BridgeMetrics()
        self.validators = validators or default_validators()
        # Registry check (fleet.identity.active_devices.ActiveDeviceCheck.is_active): inactive -> dead letter.
        self.active_check = active_check
        self.loop = MqttLoop(name="bridge-mqtt")
        self.http_host = http_host
        self._producer = producer
        self._topic_names = {name: settings.topic(name) for name in Kafka.ALL}
        self._accepting = True
        # Retiring: unsubscribe, drain what the broker queued for this instance, end the session.
        self.retire = retire
        self._last_message = time.monotonic()
        self._stopping = False
        self._gen = 0
        self._epoch = 0  # bumped whenever the producer is replaced
        self._inflight = 0
        self._acks: list[int] = []  # confirmed in this loop iteration, PUBACKed together
        self._broker_dropped: int | None = None  # None: no report yet (the broker dropped nothing)
        # Counted on the hot path as plain ints, added to the Prometheus counters (a lock each)
        # once per loop iteration.
        self._n_received = 0
        self._n_produced: dict[str, int] = {}
        self._last_progress = time.monotonic()
        self._backoff = 0.5
        self._reconnect_timer: Timer | None = None
        self._connect_attempted = False
        self._connected = threading.Event()
        self._drained = threading.Condition()
        self._http: HttpEndpoint | None = None
        # Other parts of the process (the downlink) whose health /health reports, by name.
        self.health_parts: dict[str, Callable[[], tuple[bool, dict]]] = {}
        self.client = self._make_client()
        self.loop.add_hook(self._poll_deliveries)

    # -- set-up -----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        from fleet.identity.ca import pki_from_settings  # the CA's files; production mounts them at the same paths

        pki = pki_from_settings(self.settings)
        cert, key = pki.service_identity(self.settings.bridge_client_id)
        install_paho_speedups()  # ~90 -> ~13 us per received message (see the module)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        c.tls_set(ca_certs=str(pki.ca_chain_path), certfile=str(cert), keyfile=str(key),
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.message_callback_add(BROKER_DROPPED_TOPIC, self._on_broker_dropped)
        c.message_callback_add(BROKER_NOTICE_LOG_TOPIC, self._on_broker_log)
        self.loop.attach(c)
        return c

    def _make_producer(self) -> Producer:
        return make_producer(self.settings, self.client_id)

    def start(self) -> UplinkBridge:
        """Connect to Kafka (fail fast if the topics are missing), then MQTT, then serve HTTP."""
        if self._producer is None:
            self._producer = self._make_producer()
        wanted = {self._topic_names[n] for n in {kind.kafka_topic for kind in Uplink} | {Kafka.DEAD_LETTER}}
        try:
            existing = set(self._producer.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise RuntimeError(f"Kafka at {self.settings.kafka_bootstrap} is not reachable: {exc}") from exc
        if wanted - existing:
            raise RuntimeError(f"Kafka topics missing: {', '.join(sorted(wanted - existing))}")
        if self.settings.bridge_metrics_port:
            self._http = HttpEndpoint(self.http_host, self.settings.bridge_metrics_port, self.metrics,
                                      self.health).start()
        self.loop.start()
        self.loop.call_soon(self._connect)
        self.loop.call_soon(self._watchdog)
        log.info("bridge started", extra=log_fields(client_id=self.client_id, filters=shared_filters(
            self.settings.bridge_share_group), metrics_port=self.settings.bridge_metrics_port))
        return self

    # -- MQTT connection (loop thread) ------------------------------------------------------
    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        # How many unacknowledged messages the broker may push to us (MQTT 5 Receive Maximum):
        # the bridge's pipeline depth between MQTT and Kafka.
        props.ReceiveMaximum = max(1, min(self.settings.mqtt_max_inflight, 65535))
        try:
            if not self._connect_attempted:
                self._connect_attempted = True
                self.client.connect(self.settings.mqtt_host, self.settings.mqtt_service_port,
                                    keepalive=KEEPALIVE_S, clean_start=False, properties=props)
            else:
                self.client.reconnect()
        except (OSError, ssl.SSLError) as exc:
            log.warning("MQTT connect failed", extra=log_fields(error=str(exc)))
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._stopping or self._reconnect_timer is not None:
            return
        delay = self._backoff * random.uniform(0.5, 1.5)
        self._backoff = min(self._backoff * 2, 30.0)
        self._reconnect_timer = self.loop.call_later(delay, self._connect)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the bridge", extra=log_fields(reason=str(reason_code)))
            return
        self._gen += 1
        self._backoff = 0.5
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        if self.retire:
            client.unsubscribe(shared_filters(self.settings.bridge_share_group))
        else:
            opts = SubscribeOptions(qos=1)
            client.subscribe([(f, opts) for f in shared_filters(self.settings.bridge_share_group)]
                             + [(BROKER_DROPPED_TOPIC, SubscribeOptions(qos=0)),
                                (BROKER_NOTICE_LOG_TOPIC, SubscribeOptions(qos=0))])
        log.info("connected to MQTT", extra=log_fields(session_present=flags.session_present, generation=self._gen))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("subscription refused", extra=log_fields(reasons=failed))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._gen += 1  # acks still on their way belong to the old connection
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("MQTT connection lost", extra=log_fields(reason=str(reason_code)))
            self._schedule_reconnect()

    def _on_broker_dropped(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            total = int(msg.payload)
        except ValueError:
            return
        previous, self._broker_dropped = self._broker_dropped, total
        self.metrics.broker_dropped.set(total)
        if previous is None and total:
            # The first report is the retained value: drops since the broker started, or a stale
            # count kept in the broker's store across a restart.
            log.warning("the broker reports messages it dropped because a session queue was full",
                        extra=log_fields(broker_total=total))
        elif previous is not None and total > previous:
            log.error("the broker dropped messages after acknowledging them to devices: a session queue was full "
                      "(raise max_queued_messages / FLEET_MQTT_MAX_QUEUED, or add bridge capacity)",
                      extra=log_fields(dropped=total - previous, broker_total=total))

    def _on_broker_log(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        event = parse_disconnect(msg.payload)
        if event is None:
            return
        self.metrics.broker_disconnects.labels(event.reason).inc()
        if event.reason == "packet_too_large":
            log.warning("the broker disconnected a client for a packet above its max_packet_size and discarded it "
                        "(a device that resends it will loop; see the device contract's limits)",
                        extra=log_fields(client_id=event.client_id, reason=event.reason))
        else:
            log.info("the broker disconnected a client", extra=log_fields(client_id=event.client_id,
                                                                          reason=event.reason))

    # -- the hot path (loop thread) ---------------------------------------------------------
    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # left unacknowledged: the broker resends it when this instance reconnects
        now_ms = time.time_ns() // 1_000_000
        self._last_message = time.monotonic()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        try:
            out = handle_uplink(topic, msg.payload, now_ms, self.settings.max_payload_bytes, self.validators,
                                self.active_check)
        except RegistryUnavailable as exc:  # transient: leave it unacknowledged, get it again
            if self.client.is_connected():
                log.error("registry check failed; reconnecting for redelivery", extra=log_fields(error=str(exc)))
                self.client.disconnect()
            return
        except Exception as exc:  # noqa: BLE001 - anything else is poison for this one message
            out = dead_letter(topic, msg.payload, now_ms, INVALID_ENVELOPE, f"{type(exc).__name__}: {exc}"[:300])
        self._n_received += 1
        if type(out) is DeadLetter:
            self.metrics.rejected.labels(out.reason).inc()
            log.info("dead-lettered", extra=log_fields(reason=out.reason, detail=out.detail, mqtt_topic=topic))
        self._send(out, msg.mid, msg.qos)

    def _send(self, out: Routed | DeadLetter, mid: int, qos: int) -> None:
        producer = self._producer
        assert producer is not None  # start() makes it before the first message can arrive
        delivery = _Delivery(self, mid, qos, self._gen, self._epoch, time.perf_counter())
        self._inflight += 1
        try:
            producer.produce(self._topic_names[out.topic], out.value, out.key, on_delivery=delivery)
        except (BufferError, KafkaException) as exc:  # not acked, so not lost: redelivered
            self._delivery_failed(delivery, exc)

    def _poll_deliveries(self) -> float | None:
        """Loop hook: serve delivery reports (-> _delivered / _delivery_failed) on this thread."""
        if self._producer is not None and self._inflight:
            self._producer.poll(0)
            self._flush_acks()
        self._flush_counts()
        return DELIVERY_POLL_S if self._inflight else None

    def _flush_counts(self) -> None:
        if self._n_received:
            self.metrics.received.inc(self._n_received)
            self._n_received = 0
        if self._n_produced:
            for topic, n in self._n_produced.items():
                self.metrics.produced_to(topic).inc(n)
            self._n_produced = {}
        self.metrics.inflight.set(self._inflight)

    def _flush_acks(self) -> None:
        if self._acks:
            ack_many(self.client, self._acks)
            self.metrics.acked.inc(len(self._acks))
            self._acks = []

    def _delivered(self, d: _Delivery, topic: str) -> None:
        if d.epoch != self._epoch:
            return  # from a replaced producer: its messages are being redelivered anyway
        self._inflight -= 1
        self._last_progress = time.monotonic()
        self.metrics.produce_latency.observe(time.perf_counter() - d.t0)
        self._n_produced[topic] = self._n_produced.get(topic, 0) + 1
        if d.gen == self._gen and d.qos:
            self._acks.append(d.mid)  # subscriptions are QoS 1, so messages are QoS 0 or 1
        self._note_drained()

    def _delivery_failed(self, d: _Delivery, err: object) -> None:
        if d.epoch != self._epoch:
            return
        self._inflight -= 1
        self.metrics.produce_errors.inc()
        fatal = isinstance(err, KafkaError) and err.fatal()
        # The broker resends an unacknowledged message only on a new connection: reconnect so
        # this one (and any other unconfirmed) comes again.
        if d.gen == self._gen and not self._stopping:
            log.error("Kafka did not take a record: reconnecting to have unconfirmed messages redelivered",
                      extra=log_fields(error=str(err), fatal=fatal))
            self._flush_acks()  # what was confirmed before this failure still gets its PUBACK
            if fatal:
                self._replace_producer("fatal producer error")
            elif self.client.is_connected():
                self.client.disconnect()  # on_disconnect schedules the reconnect
        self._note_drained()

    def _note_drained(self) -> None:
        if self._inflight == 0 and not self._accepting:
            with self._drained:
                self._drained.notify_all()

    # -- producer watchdog (loop thread) ----------------------------------------------------
    def _watchdog(self) -> None:
        if self._stopping:
            return
        stalled_s = time.monotonic() - self._last_progress
        if self._inflight > 0 and stalled_s > REPLACE_PRODUCER_AFTER_S and self._accepting:
            self._replace_producer(f"no confirmation for {stalled_s:.0f}s")
        self.loop.call_later(WATCHDOG_INTERVAL_S, self._watchdog)

    def _replace_producer(self, why: str) -> None:
        log.error("replacing the Kafka producer; unconfirmed messages will be redelivered",
                  extra=log_fields(why=why, inflight=self._inflight))
        old = self._producer
        assert old is not None  # replaced only by the watchdog and delivery reports, which follow start()
        self._producer = self._make_producer()
        self._epoch += 1
        self._inflight = 0
        self._last_progress = time.monotonic()
        # Dispose of the old one off the loop thread: its reports now only hit the epoch check.
        def dispose() -> None:
            old.purge()
            old.flush(5)

        threading.Thread(target=dispose, name="producer-dispose", daemon=True).start()
        if self.client.is_connected():
            self.client.disconnect()  # on_disconnect schedules the reconnect; the session is resumed

    # -- health -----------------------------------------------------------------------------
    def _kafka_reachable(self) -> bool:
        for server in self.settings.kafka_bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
                    return True
            except OSError:
                continue
        return False

    def health(self) -> tuple[bool, dict]:
        inflight = self._inflight
        stuck = inflight > 0 and time.monotonic() - self._last_progress > STUCK_AFTER_S
        mqtt_ok = self._connected.is_set()
        kafka_ok = self._kafka_reachable() and not stuck
        ok = mqtt_ok and kafka_ok and self._accepting
        parts = {}
        for name, part in self.health_parts.items():
            part_ok, parts[name] = part()
            ok = ok and part_ok
        return ok, {"status": "ok" if ok else "unavailable", "client_id": self.client_id, "mqtt_connected": mqtt_ok,
                    "kafka_reachable": kafka_ok, "inflight": inflight, "accepting": self._accepting,
                    # The broker reports only a non-zero count; see BROKER_DROPPED_TOPIC.
                    "broker_dropped": self._broker_dropped or 0, **parts}

    # -- shutdown ---------------------------------------------------------------------------
    def retire_when_idle(self, idle: float = 3.0, timeout: float = 300.0) -> bool:
        """(retire mode) Wait until the session's backlog is drained, then stop and end the session.

        How to take an instance out of service for good: its persistent session would otherwise
        keep receiving its share of messages (Mosquitto round-robins shared subscriptions over
        offline sessions too) until the session expires.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._last_message
            if self._connected.is_set() and self._inflight == 0 and quiet >= idle:
                break
            time.sleep(0.2)
        return self.stop(end_session=True)

    def stop(self, drain_timeout: float = 30.0, end_session: bool = False) -> bool:
        """Stop taking messages, wait for in-flight records and their acks, disconnect.

        The loop keeps polling delivery reports while draining, so confirmed messages are still
        acknowledged. The MQTT session (subscriptions, unacknowledged and queued messages) stays
        on the broker for the next start of this instance unless ``end_session``. Returns True
        when everything in flight was confirmed and acknowledged in time.
        """
        log.info("stopping: draining in-flight messages", extra=log_fields(inflight=self._inflight))
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        with self._drained:
            while self._inflight > 0 and time.monotonic() < deadline:
                self._drained.wait(0.1)
        drained = self._inflight == 0
        done = threading.Event()

        def disconnect() -> None:
            self._stopping = True
            if self._reconnect_timer is not None:
                self._reconnect_timer.cancel()
            props = None
            if end_session:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
            done.set()

        self.loop.call_soon(disconnect)
        done.wait(5)
        time.sleep(0.1)  # let the PUBACKs and DISCONNECT leave the socket
        self.loop.stop()
        self._flush_counts()  # the loop thread is gone: what its last iteration counted
        if self._producer is not None:
            self._producer.flush(5)
        if self._http is not None:
            self._http.stop()
        log.info("stopped", extra=log_fields(drained=drained, inflight=self._inflight))
        return drained
