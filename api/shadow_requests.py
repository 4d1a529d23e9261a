"""Operator shadow changes through Kafka: produce the request, wait for the shadow job's verdict.

``PATCH /v1/devices/{id}/shadow`` writes one record to ``shadow-desired`` (key = device id,
schemas/kafka/shadow-desired.schema.json) and the shadow job answers every one on
``shadow-verdicts`` with the same ``request_id``. This module holds both ends for the API process
on api/kafka_exchange.py's producer and reply consumer (made on the first PATCH, so a PATCH while
Kafka is down is a 503); each verdict resolves the waiting request's future by ``request_id``.
The producer's delivery timeout is shorter than the wait: a Kafka that does not take the record is
a 503 rather than a 202 for a record that may never arrive.

Verdicts are kept in a bounded in-memory map for ``GET /v1/shadow-requests/{id}``. Every API
instance reads every verdict, so a verdict that arrived is found on any instance that was running
when it came out; a request still pending is known only to the instance that took it. Polling is
therefore exact on the same instance and best-effort across instances; an unknown or expired
request is a 404.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api.kafka_exchange import KafkaExchange, KafkaUnavailable, make_consumer, make_producer
from fleet.config import Settings
from fleet.contract.topics import Kafka

__all__ = ["KafkaUnavailable", "Outcome", "Pending", "ShadowRequests", "desired_record", "make_consumer",
           "make_producer"]

# Verdicts (and failures) kept for polling: at most this many, for at most this long.
MAX_RECENT = 10_000
KEEP_S = 600.0
# A request the job never answered is forgotten after this long.
PENDING_S = KEEP_S


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


class ShadowRequests(KafkaExchange):
    """The Kafka side of operator shadow changes (one per API process; see the module)."""

    name = "shadow"

    def __init__(self, settings: Settings, *, producer_factory: Callable[[], Any] | None = None,
                 consumer_factory: Callable[[], Any] | None = None, max_recent: int = MAX_RECENT,
                 keep_s: float = KEEP_S):
        # Delivery fails before the route stops waiting: a record Kafka did not take is a 503.
        super().__init__(settings, settings.topic(Kafka.SHADOW_DESIRED), settings.topic(Kafka.SHADOW_VERDICTS),
                         f"{settings.api_service_identity}-shadow",
                         max(500, int(settings.shadow_verdict_timeout_s * 800)),
                         producer_factory=producer_factory, consumer_factory=consumer_factory)
        self.desired_topic = self.request_topic
        self.verdicts_topic = self.reply_topic
        self.max_recent = max_recent
        self.keep_s = keep_s
        self._pending: dict[str, Pending] = {}
        self._recent: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    # -- for the routes (event loop) ---------------------------------------------------------
    async def submit(self, record: dict[str, Any], timeout: float) -> Outcome | None:
        """Produce ``record`` and wait up to ``timeout`` s for its verdict; None when none came in time
        (the request stays pending: ``lookup`` finds its outcome later). KafkaUnavailable (503)
        when Kafka cannot be reached."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        await self._ensure(deadline)
        self._expire()
        request_id = record["request_id"]
        pending = Pending(request_id, record["device_id"], record["shadow"], time.monotonic(), loop.create_future())
        self._pending[request_id] = pending
        try:
            self._produce(record["device_id"], record, request_id)
        except KafkaUnavailable:
            self._pending.pop(request_id, None)
            raise
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

    # -- resolution (event loop) ---------------------------------------------------------------
    def _on_reply(self, value: dict[str, Any]) -> None:
        self._resolve(Outcome.of_verdict(value))

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
