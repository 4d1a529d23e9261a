"""Commands through Kafka: produce submissions and cancellations, hear the commands job's events.

``POST /v1/devices/{id}/command`` and ``POST /v1/commands/{id}/cancel`` write one record to
``command-requests`` (key = device id, schemas/kafka/command-request.schema.json); the commands
job writes every transition of every command, and every request it refused, to
``command-events`` (schemas/kafka/command-event.schema.json). The producer and the events
consumer are api/kafka_exchange.py's, as the shadow requests'.

A route ``watch``es a command id before it produces (an event can never come out before the
route is listening), waits for Kafka's delivery report (``send``: KafkaUnavailable, a 503, if
Kafka did not take the record), then reads the command's events as they come (``Watch.next`` /
``Watch.final``) for as long as it is willing to wait. Every API instance reads every event;
one that is not watching a command drops its events (Cassandra has the command).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from api.kafka_exchange import KafkaExchange, KafkaUnavailable
from fleet.commands.domain import FINAL, State
from fleet.config import Settings
from fleet.contract.topics import Kafka

__all__ = ["CommandRequests", "KafkaUnavailable", "Watch", "cancel_record", "is_final_event", "submit_record"]

# How long Kafka may take to confirm a request record before the route answers 503.
DELIVERY_TIMEOUT_S = 5.0
_FINAL = frozenset(s.value for s in FINAL)


def submit_record(*, command_id: str, device_id: str, name: str, params: dict[str, Any], timeout_ms: int,
                  ttl_ms: int, created_by: str, created_at: int, batch_id: str | None = None) -> dict[str, Any]:
    record = {"op": "submit", "command_id": command_id, "device_id": device_id, "name": name, "params": params,
              "timeout_ms": timeout_ms, "ttl_ms": ttl_ms, "created_by": created_by, "created_at": created_at}
    if batch_id is not None:
        record["batch_id"] = batch_id
    return record


def cancel_record(*, command_id: str, device_id: str, by: str, ts: int) -> dict[str, Any]:
    return {"op": "cancel", "command_id": command_id, "device_id": device_id, "by": by, "ts": ts}


def is_final_event(event: dict[str, Any]) -> bool:
    """A refusal, or a transition into a final state: nothing more will come for this request."""
    return event.get("type") == "rejected" or event.get("to") in _FINAL


class Watch:
    """The events of one command id while a route waits on it (event loop only)."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.delivered: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.last: dict[str, Any] | None = None  # the latest event read


    async def next(self, deadline: float) -> dict[str, Any] | None:
        """The next event, or None at ``deadline`` (monotonic)."""
        try:
            event = await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return None
        self.last = event
        return event

    async def final(self, deadline: float) -> dict[str, Any] | None:
        """The event that ends the request (``is_final_event``), or None at ``deadline``."""
        while (event := await self.next(deadline)) is not None:
            if is_final_event(event):
                return event
        return None


class CommandRequests(KafkaExchange):
    """The Kafka side of commands (one per API process; see the module)."""

    name = "commands"

    def __init__(self, settings: Settings, *, producer_factory: Callable[[], Any] | None = None,
                 consumer_factory: Callable[[], Any] | None = None):
        super().__init__(settings, settings.topic(Kafka.COMMAND_REQUESTS), settings.topic(Kafka.COMMAND_EVENTS),
                         f"{settings.api_service_identity}-commands", int(DELIVERY_TIMEOUT_S * 800),
                         producer_factory=producer_factory, consumer_factory=consumer_factory)
        self._watches: dict[str, list[Watch]] = {}
        self._bulk: dict[str, asyncio.Future[str | None]] = {}  # send_many's records by command id

    @contextmanager
    def watch(self, command_id: str) -> Iterator[Watch]:
        w = Watch(command_id)
        self._watches.setdefault(command_id, []).append(w)
        try:
            yield w
        finally:
            watches = self._watches.get(command_id, [])
            if w in watches:
                watches.remove(w)
            if not watches:
                self._watches.pop(command_id, None)

    async def send(self, record: dict[str, Any], watch: Watch, timeout: float = DELIVERY_TIMEOUT_S) -> None:
        """Produce ``record`` and wait for Kafka to confirm it; KafkaUnavailable when it does not."""
        deadline = time.monotonic() + timeout
        await self._ensure(deadline)
        self._produce(record["device_id"], record, watch.command_id)
        try:
            error = await asyncio.wait_for(asyncio.shield(watch.delivered), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise KafkaUnavailable("Kafka did not confirm the request in time") from None
        if error is not None:
            raise KafkaUnavailable(f"Kafka did not take the request: {error}")

    async def send_many(self, records: list[dict[str, Any]], timeout: float = DELIVERY_TIMEOUT_S) -> list[str | None]:
        """Produce every record (no watch: nobody waits on their events) and wait for Kafka's
        delivery reports: per record None (taken) or the error. KafkaUnavailable only when the
        producer cannot be made; a full local queue waits for room until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        await self._ensure(deadline)
        futures: list[asyncio.Future[str | None]] = []
        for record in records:
            future: asyncio.Future[str | None] = loop.create_future()
            futures.append(future)
            token = record["command_id"]
            self._bulk[token] = future
            while True:
                try:
                    self._produce(record["device_id"], record, token)
                    break
                except KafkaUnavailable as exc:  # the producer's queue is full: let it drain
                    if time.monotonic() >= deadline:
                        future.set_result(str(exc))
                        break
                    await asyncio.sleep(0.05)
        if not futures:
            return []
        try:  # the delivery timeout runs from the last record handed to the producer
            done, _ = await asyncio.wait(futures, timeout=timeout)
            return [f.result() if f in done else "Kafka did not confirm the record in time" for f in futures]
        finally:
            for record in records:
                self._bulk.pop(record["command_id"], None)

    # -- replies (event loop) ------------------------------------------------------------------
    def _on_reply(self, value: dict[str, Any]) -> None:
        command_id = value["command_id"]
        if value.get("type") == "transition":
            State(value["to"])  # a reply this API cannot read is logged, not handed on
        for w in self._watches.get(str(command_id), ()):
            w.events.put_nowait(value)

    def _delivered(self, command_id: str, error: str | None) -> None:
        if (future := self._bulk.get(command_id)) is not None and not future.done():
            future.set_result(error)
        for w in self._watches.get(command_id, ()):
            if not w.delivered.done():
                w.delivered.set_result(error)
