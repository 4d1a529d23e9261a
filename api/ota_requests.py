"""OTA deployments through Kafka: produce the API's ``ota-requests`` records (key = deployment id).

The records are fleet/ota/deployments.py's: a deployment's ``create`` then its ``targets`` chunks,
and ``pause`` / ``resume`` / ``cancel``. Nothing answers them: the OTA job writes what it did to
Cassandra (the deployment's state and summary), so this is api/kafka_exchange.py's producer
without a reply consumer. ``send`` waits for Kafka's delivery report of every record it is given
(KafkaUnavailable, a 503, if Kafka did not take them all in time).

Records of one deployment share a key, so they reach one partition in the order produced (the
producer is idempotent: a retry inside librdkafka never reorders them). A caller that must not
have a record overtake another (``create`` before its ``targets``) sends them in separate calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from api.kafka_exchange import KafkaExchange, KafkaUnavailable
from fleet.config import Settings
from fleet.contract.topics import Kafka

__all__ = ["KafkaUnavailable", "OtaRequests"]

# How long Kafka may take to confirm the records of one call before the route answers 503.
DELIVERY_TIMEOUT_S = 10.0


class OtaRequests(KafkaExchange):
    """The Kafka side of OTA deployments (one per API process)."""

    name = "ota"

    def __init__(self, settings: Settings, *, producer_factory: Callable[[], Any] | None = None):
        super().__init__(settings, settings.topic(Kafka.OTA_REQUESTS), None, f"{settings.api_service_identity}-ota",
                         int(DELIVERY_TIMEOUT_S * 800), producer_factory=producer_factory)
        self._pending: dict[str, asyncio.Future[str | None]] = {}

    async def send(self, records: list[dict[str, Any]], timeout: float = DELIVERY_TIMEOUT_S) -> None:
        """Produce every record (key: its deployment_id) and wait until Kafka took them all."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        await self._ensure(deadline)
        futures: list[asyncio.Future[str | None]] = []
        tokens: list[str] = []
        try:
            for record in records:
                token = uuid.uuid4().hex
                future: asyncio.Future[str | None] = loop.create_future()
                self._pending[token] = future
                tokens.append(token)
                futures.append(future)
                while True:
                    try:
                        self._produce(record["deployment_id"], record, token)
                        break
                    except KafkaUnavailable:  # the producer's local queue is full: let it drain
                        if time.monotonic() >= deadline:
                            raise
                        await asyncio.sleep(0.05)
            done, _ = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic())) if futures \
                else (set(), set())
            if len(done) < len(futures):
                raise KafkaUnavailable(f"Kafka did not confirm {len(futures) - len(done)} of {len(futures)} "
                                       "records in time")
            errors = [e for f in futures if (e := f.result()) is not None]
            if errors:
                raise KafkaUnavailable(f"Kafka did not take {len(errors)} of {len(futures)} records: {errors[0]}")
        finally:
            for token in tokens:
                self._pending.pop(token, None)

    def _on_reply(self, value: dict[str, Any]) -> None:  # no reply topic: never called
        raise NotImplementedError

    def _delivered(self, token: str, error: str | None) -> None:
        if (future := self._pending.get(token)) is not None and not future.done():
            future.set_result(error)
