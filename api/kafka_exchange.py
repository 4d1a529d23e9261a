"""Request/reply through Kafka for the API process: a producer, and a reply consumer on a thread.

The shared machinery of api/shadow_requests.py (shadow changes -> shadow verdicts) and
api/command_requests.py (commands -> command events):

- a producer (confluent-kafka, idempotent, ``acks=all``, the Java partitioner like the bridge's)
  whose delivery timeout the caller chooses shorter than its wait, so a Kafka that does not take
  the record is a 503 rather than a 202 for a record that may never arrive;
- its own reply consumer: no consumer group (partitions assigned by hand, nothing committed),
  positioned at the end of the reply topic when it connects, before the first record is produced
  (a reply can never come out before the consumer is there to see it). It reads on a thread and
  hands each decoded reply to the event loop with ``call_soon_threadsafe`` (``_on_reply``).

Both are made on the first request that needs them (``_ensure``), so the API starts (and serves
everything else) while Kafka is down; a request meanwhile is KafkaUnavailable (503). Without a
reply topic (api/ota_requests.py: nothing answers) there is only the producer, ready once the
request topic's metadata came back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fleet.config import Settings
from fleet.logs import log_fields

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
RECONNECT_BACKOFF_S = (0.5, 5.0)
# The reply consumer blocks up to REPLY_POLL_S for a first record, then takes what else is there.
REPLY_POLL_S = 0.2
REPLY_BATCH = 500


class KafkaUnavailable(RuntimeError):
    """Kafka cannot take the request (or the API cannot hear the reply); answered with 503."""


def make_producer(settings: Settings, client_id: str, delivery_timeout_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        # One operator request at a time: no batching delay.
        "linger.ms": 0,
        "message.timeout.ms": delivery_timeout_ms,
        # The Java client's key -> partition mapping (what the jobs' keyed sources expect).
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


class KafkaExchange:
    """Produce requests to ``request_topic``, hear every reply on ``reply_topic`` (see the module).

    Subclasses implement ``_on_reply(value)`` (event loop; raise ValueError/KeyError/TypeError for
    a reply they cannot read) and ``_delivered(token, error)`` (event loop; the delivery report of
    a record produced with that token).
    """

    name = "kafka"  # for thread names and logs

    def __init__(self, settings: Settings, request_topic: str, reply_topic: str | None, client_id: str,
                 delivery_timeout_ms: int, *, producer_factory: Callable[[], Any] | None = None,
                 consumer_factory: Callable[[], Any] | None = None):
        self.settings = settings
        self.request_topic = request_topic
        self.reply_topic = reply_topic
        self._make_producer = producer_factory or (lambda: make_producer(settings, client_id, delivery_timeout_ms))
        self._make_consumer = consumer_factory or (lambda: make_consumer(settings, client_id))
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._attempted = threading.Event()  # the first connection attempt has ended, well or not
        self._last_error = "not connected yet"
        self._producer: Any = None
        self._consumer: Any = None

    # -- for subclasses (event loop) -----------------------------------------------------------
    def _on_reply(self, value: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delivered(self, token: str, error: str | None) -> None:
        raise NotImplementedError

    async def _ensure(self, deadline: float) -> None:
        """Start the threads; KafkaUnavailable unless connected (only the very first request waits
        for the connection, up to ``deadline`` (monotonic); later ones know the answer)."""
        self._start(asyncio.get_running_loop())
        if not self._ready.is_set():
            while not self._attempted.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if not self._ready.is_set():
                raise KafkaUnavailable(f"Kafka at {self.settings.kafka_bootstrap} is unavailable: {self._last_error}")

    def _produce(self, key: str, record: dict[str, Any], token: str) -> None:
        """Hand ``record`` to the producer; KafkaUnavailable if it refuses at once."""
        try:
            self._producer.produce(self.request_topic, key=key.encode(),
                                   value=json.dumps(record, separators=(",", ":")).encode(),
                                   on_delivery=self._delivery_callback(token))
        except Exception as exc:  # BufferError (queue full), KafkaException
            raise KafkaUnavailable(f"Kafka did not take the request: {exc}") from exc

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:
                log.warning("reply consumer did not close", extra=log_fields(topic=self.reply_topic, error=str(exc)))
        if self._producer is not None:
            self._producer.flush(1)

    # -- threads -------------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._loop is not None:
                return
            self._loop = loop
            for target, suffix in ((self._consume, "replies"), (self._poll_deliveries, "deliveries")):
                thread = threading.Thread(target=target, name=f"{self.name}-{suffix}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _delivery_callback(self, token: str) -> Callable[[Any, Any], None]:
        loop = self._loop
        assert loop is not None

        def report(err: Any, msg: Any) -> None:  # on the delivery thread
            loop.call_soon_threadsafe(self._delivered, token, None if err is None else str(err))

        return report

    def _connect(self) -> None:
        """Producer and consumer; the consumer assigned every partition at its current end."""
        from confluent_kafka import TopicPartition

        if self.reply_topic is None:
            self._connect_producer()
            return
        consumer = self._make_consumer()
        try:
            metadata = consumer.list_topics(self.reply_topic, timeout=CONNECT_TIMEOUT_S)
            topic = metadata.topics.get(self.reply_topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise RuntimeError(f"topic {self.reply_topic} is missing"
                                   f"{f' ({topic.error})' if topic is not None and topic.error else ''}")
            assignment = []
            for partition in sorted(topic.partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(self.reply_topic, partition),
                                                         timeout=CONNECT_TIMEOUT_S)
                assignment.append(TopicPartition(self.reply_topic, partition, high))
            consumer.assign(assignment)
        except Exception:
            consumer.close()
            raise
        self._producer = self._make_producer()
        self._consumer = consumer
        self._ready.set()
        log.info("reply consumer positioned", extra=log_fields(topic=self.reply_topic, partitions=len(assignment)))

    def _connect_producer(self) -> None:
        """The producer alone, once it sees the request topic."""
        producer = self._make_producer()
        topic = producer.list_topics(self.request_topic, timeout=CONNECT_TIMEOUT_S).topics.get(self.request_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(f"topic {self.request_topic} is missing"
                               f"{f' ({topic.error})' if topic is not None and topic.error else ''}")
        self._producer = producer
        self._ready.set()

    def _dispatch(self, value: dict[str, Any]) -> None:  # event loop
        try:
            self._on_reply(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable reply", extra=log_fields(topic=self.reply_topic, error=str(exc)))

    def _next_batch(self) -> list[Any]:
        """What has arrived, as soon as anything has: ``consume(n, timeout)`` alone waits for n
        records or the whole timeout (measured: 200 ms added to every reply at low rates)."""
        first = self._consumer.poll(REPLY_POLL_S)
        if first is None:
            return []
        return [first, *self._consumer.consume(num_messages=REPLY_BATCH - 1, timeout=0)]

    def _consume(self) -> None:
        backoff = RECONNECT_BACKOFF_S[0]
        while not self._stop.is_set() and not self._ready.is_set():
            try:
                self._connect()
            except Exception as exc:
                self._last_error = str(exc) or type(exc).__name__
                log.warning("Kafka not ready", extra=log_fields(topic=self.reply_topic, error=self._last_error))
                self._attempted.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])
        self._attempted.set()
        loop = self._loop
        assert loop is not None
        while self._consumer is not None and not self._stop.is_set():
            try:
                messages = self._next_batch()
            except Exception as exc:
                log.warning("reply consumer error", extra=log_fields(topic=self.reply_topic, error=str(exc)))
                self._stop.wait(0.5)
                continue
            for message in messages:
                if message.error() is not None:
                    continue  # librdkafka retries transport errors itself
                try:
                    value = json.loads(message.value())
                except ValueError as exc:
                    log.warning("unreadable reply", extra=log_fields(topic=self.reply_topic, error=str(exc)))
                    continue
                if isinstance(value, dict):
                    loop.call_soon_threadsafe(self._dispatch, value)

    def _poll_deliveries(self) -> None:
        while not self._stop.is_set():
            if not self._ready.is_set():
                self._stop.wait(0.2)
                continue
            self._producer.poll(0.2)  # serves delivery reports as they come
