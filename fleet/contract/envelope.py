"""The uplink decision: one MQTT message in, one Kafka record out (routed or dead-lettered).

Pure and fast: no I/O, no clock, no settings object; the bridge passes the wall time and the size
limit and prefixes the returned logical topic with ``settings.topic()``. Everything the bridge
decides about a message is here, so it is tested table-driven without a broker
(tests/unit/test_envelope.py). Record shapes: schemas/kafka/envelope.schema.json and
schemas/kafka/dead-letter.schema.json.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fleet.contract.topics import Kafka, ParsedTopic, TopicError, Uplink, is_valid_device_id, parse_uplink_topic
from fleet.contract.validation import UplinkValidators, default_validators, explain

_loads: Callable[[bytes | bytearray | str], Any]
_dumps: Callable[[Any], bytes]
try:  # orjson parses and serialises small objects several times faster than json.
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
    _JSONError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    import json

    _loads = json.loads
    _JSONError = ValueError

    def _json_dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    _dumps = _json_dumps

SOURCE = "bridge"
# Raw bytes kept in a dead letter: enough for any sane payload, small enough for Kafka's
# default 1 MiB request limit after base64.
DEAD_LETTER_RAW_LIMIT = 256 * 1024

# Stable reason codes (schemas/kafka/dead-letter.schema.json lists them).
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
PAYLOAD_TOO_LARGE = "payload_too_large"
INVALID_DEVICE_ID = "invalid_device_id"
UNKNOWN_TOPIC = "unknown_topic"
DEVICE_NOT_ACTIVE = "device_not_active"

INVALID_ENVELOPE = "invalid_envelope"
TOO_DEEP = "too_deep"

# JSON nesting a payload may have (the payload object itself is level 1). JSON Schema cannot bound
# depth, and a deep payload that passes the schema breaks the serialisers and parsers after it.
MAX_DEPTH = 8


class RegistryUnavailable(Exception):
    """The active-device check could not answer: a transient fault, the message is redelivered."""


_TYPE_NAME = {kind: kind.name.lower() for kind in Uplink}


@dataclass(frozen=True, slots=True)
class Routed:
    """An accepted message: produce ``value`` under ``key`` to ``settings.topic(topic)``."""

    topic: str
    key: bytes
    value: bytes
    kind: Uplink


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, produced to ``settings.topic("dead-letter")``."""

    topic: str
    key: bytes
    value: bytes
    reason: str
    detail: str


@lru_cache(maxsize=65536)
def _parse_topic_cached(topic: str) -> ParsedTopic | TopicError:
    # A fleet publishes on a bounded set of topics; parsing each once saves a split and a
    # regex per message. Errors are cached as values so bad topics cost the same.
    try:
        return parse_uplink_topic(topic)
    except TopicError as err:
        return err


def _device_id_of(topic: str) -> str | None:
    """The device id of a topic under devices/, if well-formed (for dead-letter keys)."""
    parts = topic.split("/", 2)
    if len(parts) >= 2 and parts[0] == "devices" and is_valid_device_id(parts[1]):
        return parts[1]
    return None


def dead_letter(
    topic: str, raw: bytes | bytearray, now_ms: int, reason: str, detail: str, *,
    source: str = SOURCE, raw_limit: int = DEAD_LETTER_RAW_LIMIT,
) -> DeadLetter:
    device_id = _device_id_of(topic)
    kept = raw[:raw_limit]
    value = {
        "type": "dead-letter",
        "reason": reason,
        "detail": detail,
        "source": source,
        "mqtt_topic": topic,
        "device_id": device_id,
        "ingest_ts": now_ms,
        "raw_b64": base64.b64encode(kept).decode("ascii"),
        "raw_size": len(raw),
        "raw_truncated": len(kept) < len(raw),
    }
    key = (device_id if device_id is not None else topic).encode()
    return DeadLetter(Kafka.DEAD_LETTER, key, _dumps(value), reason, detail)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` has containers nested more than ``limit`` levels (iterative: no recursion
    limit of our own to hit; stops at the first container past the limit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def handle_uplink(
    topic: str, raw: bytes | bytearray, now_ms: int, max_bytes: int,
    validators: UplinkValidators | None = None, is_active: Callable[[str], bool] | None = None,
) -> Routed | DeadLetter:
    """Decide what one device message becomes.

    Checks, in order: the topic (a known uplink kind under a well-formed device id), the device
    being active in the registry (when ``is_active`` is given; what it raises propagates), the
    size, JSON syntax, the kind's schema. ``now_ms`` becomes ``ingest_ts`` (and ``ts`` when the
    payload has none).
    """
    parsed = _parse_topic_cached(topic)
    if isinstance(parsed, TopicError):
        return dead_letter(topic, raw, now_ms, parsed.reason, str(parsed))
    if is_active is not None:
        try:
            active = is_active(parsed.device_id)
        except Exception as exc:  # only this may cause redelivery; everything else is per-message
            raise RegistryUnavailable(str(exc)) from exc
    if is_active is not None and not active:
        return dead_letter(topic, raw, now_ms, DEVICE_NOT_ACTIVE,
                           f"device {parsed.device_id!r} is not active in the registry")
    if len(raw) > max_bytes:
        return dead_letter(topic, raw, now_ms, PAYLOAD_TOO_LARGE, f"payload is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        payload = _loads(raw)
    except _JSONError as err:
        return dead_letter(topic, raw, now_ms, INVALID_JSON, f"not valid JSON: {err}")
    if nesting_exceeds(payload, MAX_DEPTH):
        return dead_letter(topic, raw, now_ms, TOO_DEEP, f"JSON nested deeper than {MAX_DEPTH} levels")
    schema = (validators or default_validators())[parsed.kind]
    if not schema.is_valid(payload):
        return dead_letter(topic, raw, now_ms, SCHEMA_VIOLATION, f"{schema.name}: {explain(schema.reference, payload)}")

    ts = payload.get("ts")
    envelope: dict[str, Any] = {
        "device_id": parsed.device_id,
        "type": _TYPE_NAME[parsed.kind],
        "ts": now_ms if ts is None else int(ts),
        "ingest_ts": now_ms,
        "mqtt_topic": topic,
    }
    if parsed.command_id is not None:
        envelope["command_id"] = parsed.command_id
    if parsed.shadow:
        envelope["shadow"] = parsed.shadow  # a named shadow; absent for the classic one
    envelope["payload"] = payload
    try:
        value = _dumps(envelope)
    except (TypeError, ValueError) as err:  # e.g. orjson's recursion limit: poison for this message only
        return dead_letter(topic, raw, now_ms, INVALID_ENVELOPE, f"envelope not serialisable: {err}")
    return Routed(parsed.kind.kafka_topic, parsed.device_id.encode(), value, parsed.kind)
