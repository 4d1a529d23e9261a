"""Operator shadow changes through Kafka: produce the request, wait for the shadow job's verdict.

``PATCH /v1/devices/{id}/shadow`` writes one record to ``shadow-desired`` (key = device id,
schemas/kafka/shadow-desired.schema.json) and the shadow job answers every one on
``shadow-verdicts`` with the same ``request_id``. This module holds both ends for the API process:

- a producer (confluent-kafka, idempotent, ``acks=all``, the Java partitioner like the bridge's)
  whose delivery timeout is shorter than the wait, so a Kafka that does not take the record is a
  503 rather than a 202 for a record that may never arrive;
- its own verdict consumer: no consumer group (partitions assigned by hand, nothing committed),
  positioned at the end of the topic when it connects, before the first record is produced (a
  verdict can never come out before the consumer is there to see it). It reads on a thread and
  hands each verdict to the event loop with ``call_soon_threadsafe``, where it resolves the
  waiting request's future by ``request_id``.

Both are made on the first request that needs them, so the API starts (and serves everything
else) while Kafka is down; a PATCH meanwhile is a 503.

Verdicts are kept in a bounded in-memory map for ``GET /v1/shadow-requests/{id}``. Every API
instance reads every verdict, so a verdict that arrived is found on any instance that was running
when it came out; a request still pending is known only to the instance that took it. Polling is
therefore exact on the same instance and best-effort across instances; an unknown or expired
request is a 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.logs import log_fields

log = logging.getLogger(__name__)

# Verdicts (and failures) kept for polling: at most this many, for at most this long.
MAX_RECENT = 10_000
KEEP_S = 600.0
# A request the job never answered is forgotten after this long.
PENDING_S = KEEP_S
CONNECT_TIMEOUT_S = 5.0
RECONNECT_BACKOFF_S = (0.5, 5.0)


class KafkaUnavailable(RuntimeError):
    """Kafka cannot take the request (or the API cannot hear the verdict); answered with 503."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final answer to one request: the job's verdict, or why there is none (status 503)."""

    request_id: str
    device_id: str
    shadow: str
    # The HTTP status the PATCH answers with: 200 accepted, 4xx the job's rejection, 503 not delivered.
    status: int
    code: str | None = None
    message: str | None = None
    version: int | None = None
    document: dict[str, Any] | None = None
    ts: int | None = None

    @classmethod
    def of_verdict(cls, v: dict[str, Any]) -> Outcome:
        return cls(str(v["request_id"]), str(v.get("device_id", "")), str(v.get("shadow", "")), int(v["status"]),
                   v.get("code"), v.get("message"), v.get("version"), v.get("document"), v.get("ts"))


@dataclass(slots=True)
class Pending:
    """A request produced and not answered yet."""

    request_id: str
    device_id: str
    shadow: str
    since: float
    future: asyncio.Future[Outcome] = field(repr=False)
    delivered: bool = False


def desired_record(*, device_id: str, shadow: str, desired: dict[str, Any] | None, version: int | None,
                   actor: str, client_token: str | None, ts: int, request_id: str | None = None) -> dict[str, Any]:
    """A ``shadow-desired`` record value (schemas/kafka/shadow-desired.schema.json)."""
    return {"request_id": request_id or uuid.uuid4().hex, "device_id": device_id, "shadow": shadow,
            "state": {"desired": desired}, "version": version, "actor": actor, "client_token": client_token,
            "ts": ts}


def make_producer(settings: Settings, client_id: str, delivery_timeout_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        # One operator change at a time: no batching delay.
        "linger.ms": 0,
        "message.timeout.ms": delivery_timeout_ms,
        # The Java client's key -> partition mapping (what the job's keyed source expects).
        "partitioner": "murmur2_random",
    })


def make_consumer(settings: Settings, client_id: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        # librdkafka insists on a group id; with assign() and no commits no group is ever joined.
        "group.id": f"{client_id}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "latest",
    })


class ShadowRequests:
    """The Kafka side of operator shadow changes (one per API process; see the module)."""

    def __init__(self, settings: Settings, *, producer_factory: Callable[[], Any] | None = None,
                 consumer_factory: Callable[[], Any] | None = None, max_recent: int = MAX_RECENT,
                 keep_s: float = KEEP_S):
        self.settings = settings
        self.desired_topic = settings.topic(Kafka.SHADOW_DESIRED)
        self.verdicts_topic = settings.topic(Kafka.SHADOW_VERDICTS)
        client_id = f"{settings.api_service_identity}-shadow"
        # Delivery fails before the route stops waiting: a record Kafka did not take is a 503.
        delivery_ms = max(500, int(settings.shadow_verdict_timeout_s * 800))
        self._make_producer = producer_factory or (lambda: make_producer(settings, client_id, delivery_ms))
        self._make_consumer = consumer_factory or (lambda: make_consumer(settings, client_id))
        self.max_recent = max_recent
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._attempted = threading.Event()  # the first connection attempt has ended, well or not
        self._last_error = "not connected yet"
        self._producer: Any = None
        self._consumer: Any = None
        self._pending: dict[str, Pending] = {}
        self._recent: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    # -- for the routes (event loop) ---------------------------------------------------------
    async def submit(self, record: dict[str, Any], timeout: float) -> Outcome | None:
        """Produce ``record`` and wait up to ``timeout`` s for its verdict; None when none came in time
        (the request stays pending: ``lookup`` finds its outcome later). KafkaUnavailable (503)
        when Kafka cannot be reached."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        self._start(loop)
        if not self._ready.is_set():
            # Only the very first request waits for the connection; later ones know the answer.
            while not self._attempted.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if not self._ready.is_set():
                raise KafkaUnavailable(f"Kafka at {self.settings.kafka_bootstrap} is unavailable: {self._last_error}")
        self._expire()
        request_id = record["request_id"]
        pending = Pending(request_id, record["device_id"], record["shadow"], time.monotonic(), loop.create_future())
        self._pending[request_id] = pending
        try:
            self._producer.produce(self.desired_topic, key=record["device_id"].encode(),
                                   value=json.dumps(record, separators=(",", ":")).encode(),
                                   on_delivery=self._delivery_callback(request_id))
        except Exception as exc:  # BufferError (queue full), KafkaException
            self._pending.pop(request_id, None)
            raise KafkaUnavailable(f"Kafka did not take the request: {exc}") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return None

    def lookup(self, request_id: str) -> Outcome | Pending | None:
        """The outcome of a request, the request if still pending, or None (unknown or expired)."""
        self._expire()
        kept = self._recent.get(request_id)
        if kept is not None:
            return kept[1]
        return self._pending.get(request_id)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:
                log.warning("verdict consumer did not close", extra=log_fields(error=str(exc)))
        if self._producer is not None:
            self._producer.flush(1)

    # -- resolution (event loop) ---------------------------------------------------------------
    def _resolve(self, outcome: Outcome) -> None:
        self._remember(outcome)
        pending = self._pending.pop(outcome.request_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(outcome)

    def _delivered(self, request_id: str, error: str | None) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        if error is None:
            pending.delivered = True
            return
        self._resolve(Outcome(request_id, pending.device_id, pending.shadow, 503, "kafka_unavailable",
                              f"Kafka did not take the request: {error}"))

    def _remember(self, outcome: Outcome) -> None:
        self._recent[outcome.request_id] = (time.monotonic(), outcome)
        self._recent.move_to_end(outcome.request_id)
        while len(self._recent) > self.max_recent:
            self._recent.popitem(last=False)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._recent:
            first = next(iter(self._recent.values()))
            if now - first[0] <= self.keep_s:
                break
            self._recent.popitem(last=False)
        stale = [rid for rid, p in self._pending.items() if now - p.since > self.keep_s]
        for rid in stale:
            pending = self._pending.pop(rid)
            pending.future.cancel()

    # -- threads -------------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._loop is not None:
                return
            self._loop = loop
            for target, name in ((self._consume, "shadow-verdicts"), (self._poll_deliveries, "shadow-deliveries")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _delivery_callback(self, request_id: str) -> Callable[[Any, Any], None]:
        loop = self._loop
        assert loop is not None

        def report(err: Any, msg: Any) -> None:  # on the delivery thread
            loop.call_soon_threadsafe(self._delivered, request_id, None if err is None else str(err))

        return report

    def _connect(self) -> None:
        """Producer and consumer; the consumer assigned every partition at its current end."""
        from confluent_kafka import TopicPartition

        consumer = self._make_consumer()
        try:
            metadata = consumer.list_topics(self.verdicts_topic, timeout=CONNECT_TIMEOUT_S)
            topic = metadata.topics.get(self.verdicts_topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise RuntimeError(f"topic {self.verdicts_topic} is missing"
                                   f"{f' ({topic.error})' if topic is not None and topic.error else ''}")
            assignment = []
            for partition in sorted(topic.partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(self.verdicts_topic, partition),
                                                         timeout=CONNECT_TIMEOUT_S)
                assignment.append(TopicPartition(self.verdicts_topic, partition, high))
            consumer.assign(assignment)
        except Exception:
            consumer.close()
            raise
        self._producer = self._make_producer()
        self._consumer = consumer
        self._ready.set()
        log.info("shadow verdict consumer positioned", extra=log_fields(
            topic=self.verdicts_topic, partitions=len(assignment)))

    def _consume(self) -> None:
        backoff = RECONNECT_BACKOFF_S[0]
        while not self._stop.is_set() and not self._ready.is_set():
            try:
                self._connect()
            except Exception as exc:
                self._last_error = str(exc) or type(exc).__name__
                log.warning("Kafka not ready for shadow requests", extra=log_fields(error=self._last_error))
                self._attempted.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])
        self._attempted.set()
        loop = self._loop
        assert loop is not None
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(num_messages=500, timeout=0.2)
            except Exception as exc:
                log.warning("verdict consumer error", extra=log_fields(error=str(exc)))
                self._stop.wait(0.5)
                continue
            for message in messages:
                if message.error() is not None:
                    continue  # librdkafka retries transport errors itself
                try:
                    outcome = Outcome.of_verdict(json.loads(message.value()))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("unreadable shadow verdict", extra=log_fields(error=str(exc)))
                    continue
                loop.call_soon_threadsafe(self._resolve, outcome)

    def _poll_deliveries(self) -> None:
        while not self._stop.is_set():
            if not self._ready.is_set():
                self._stop.wait(0.2)
                continue
            self._producer.poll(0.2)  # serves delivery reports as they come
