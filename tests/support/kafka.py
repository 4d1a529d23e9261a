"""Read what the pipeline wrote to Kafka, from offsets taken before the test acted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from fleet.config import Settings


def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return consumer.end_offsets(parts)
    finally:
        consumer.close()


def read_json(settings: Settings, topic: str, start: dict[TopicPartition, int], *,
              until: Callable[[list[dict]], bool], timeout: float = 30.0,
              keep: Callable[[dict], bool] = lambda _: True) -> list[dict]:
    """Records (JSON values) after ``start`` that pass ``keep``, until ``until(records)`` or timeout."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             value_deserializer=lambda b: json.loads(b))
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r.value for r in batch if keep(r.value))
    finally:
        consumer.close()
    return records
