"""The topic contracts: MQTT topics devices speak, Kafka topics the pipeline speaks.

Pure functions and constants only; documented for device authors in docs/device-contract.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# A device id is also the certificate CN and an MQTT topic level, so it must not contain
# MQTT wildcards, separators or anything a shell or CQL would need quoting for.
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_valid_device_id(device_id: str) -> bool:
    # fullmatch: with match, '$' would also accept one trailing newline ("d-1\n").
    return bool(DEVICE_ID_PATTERN.fullmatch(device_id))


class Kafka:
    """Logical Kafka topic names; the full name is ``settings.topic(name)`` (adds the prefix).

    Only topics something produces: each capability adds its own topics when it lands.
    """

    TELEMETRY = "telemetry"
    SHADOW_REPORTED = "shadow-reported"
    COMMAND_RESULTS = "command-results"
    OTA_STATUS = "ota-status"
    DEVICE_EVENTS = "device-events"
    DEAD_LETTER = "dead-letter"
    # Operator changes to a shadow's desired state (API -> shadow job; schemas/kafka/shadow-desired).
    SHADOW_DESIRED = "shadow-desired"
    # The shadow job's answer to each operator change (shadow job -> API; schemas/kafka/shadow-verdict).
    SHADOW_VERDICTS = "shadow-verdicts"
    # Messages for devices (jobs -> bridge -> devices/{id}/...; schemas/kafka/downlink). Written
    # at least once without waiting for a checkpoint; devices deduplicate by version / command id.
    DOWNLINK = "downlink"
    # Operator command submissions and cancellations (API -> commands job; schemas/kafka/command-request).
    COMMAND_REQUESTS = "command-requests"
    # Every command transition and every refused request (commands job -> API; schemas/kafka/command-event).
    COMMAND_EVENTS = "command-events"
    # Deployment creations (with their target chunks) and pause/resume/cancel (API -> OTA job), key deployment_id.
    OTA_REQUESTS = "ota-requests"
    # Devices the OTA job's controller releases, and their cancels (controller -> execution operator), key device_id.
    OTA_ASSIGNMENTS = "ota-assignments"
    # Every device execution transition (execution operator -> controller), key deployment_id.
    OTA_EVENTS = "ota-events"

    ALL = (TELEMETRY, SHADOW_REPORTED, COMMAND_RESULTS, OTA_STATUS, DEVICE_EVENTS, DEAD_LETTER,
           SHADOW_DESIRED, SHADOW_VERDICTS, DOWNLINK, COMMAND_REQUESTS, COMMAND_EVENTS,
           OTA_REQUESTS, OTA_ASSIGNMENTS, OTA_EVENTS)
    # Topics holding the latest value per key rather than a history (none yet).
    COMPACTED: tuple[str, ...] = ()


class Uplink(str, Enum):
    """Device-to-platform MQTT message kinds, by topic suffix under devices/{id}/."""

    TELEMETRY = "telemetry"
    SHADOW_UPDATE = "shadow/update"
    SHADOW_GET = "shadow/get"
    COMMAND_RESULT = "commands/+/result"
    OTA_STATUS = "ota/status"
    STATUS = "status"

    @property
    def kafka_topic(self) -> str:
        return _UPLINK_TO_KAFKA[self]

    @property
    def schema_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def mqtt_filter(self) -> str:
        return f"devices/+/{self.value}"

    @property
    def mqtt_filters(self) -> tuple[str, ...]:
        """What the bridge subscribes to for this kind: shadow kinds also under shadow/name/+/."""
        if self in (Uplink.SHADOW_UPDATE, Uplink.SHADOW_GET):
            return self.mqtt_filter, f"devices/+/shadow/name/+/{self.value.removeprefix('shadow/')}"
        return (self.mqtt_filter,)


_UPLINK_TO_KAFKA = {
    Uplink.TELEMETRY: Kafka.TELEMETRY,
    Uplink.SHADOW_UPDATE: Kafka.SHADOW_REPORTED,
    Uplink.SHADOW_GET: Kafka.SHADOW_REPORTED,
    Uplink.COMMAND_RESULT: Kafka.COMMAND_RESULTS,
    Uplink.OTA_STATUS: Kafka.OTA_STATUS,
    Uplink.STATUS: Kafka.DEVICE_EVENTS,
}


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    kind: Uplink
    # The command id for commands/{command_id}/result, else None.
    command_id: str | None = None
    # The shadow name for shadow/name/{name}/update|get; "" for the classic shadow (and other kinds).
    shadow: str = ""


class TopicError(ValueError):
    """A topic the platform does not accept; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_uplink_topic(topic: str) -> ParsedTopic:
    """Map an MQTT topic published by a device to its device id and message kind.

    >>> parse_uplink_topic("devices/d-1/telemetry")
    ParsedTopic(device_id='d-1', kind=<Uplink.TELEMETRY: 'telemetry'>, command_id=None, shadow='')
    """
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != "devices":
        raise TopicError("unknown_topic", f"topic {topic!r} is not under devices/{{device_id}}/")
    device_id = parts[1]
    if not is_valid_device_id(device_id):
        raise TopicError("invalid_device_id", f"device id {device_id!r} in topic {topic!r} is not well-formed")
    rest = parts[2:]
    if len(rest) == 3 and rest[0] == "commands" and rest[2] == "result":
        command_id = rest[1]
        if not command_id:
            raise TopicError("unknown_topic", f"topic {topic!r} has an empty command id")
        return ParsedTopic(device_id, Uplink.COMMAND_RESULT, command_id)
    if len(rest) == 4 and rest[0] == "shadow" and rest[1] == "name" and rest[3] in ("update", "get"):
        name = rest[2]
        if not SHADOW_NAME_PATTERN.fullmatch(name):
            raise TopicError("unknown_topic", f"topic {topic!r} has an invalid shadow name {name!r}")
        return ParsedTopic(device_id, Uplink.SHADOW_UPDATE if rest[3] == "update" else Uplink.SHADOW_GET, shadow=name)
    suffix = "/".join(rest)
    for kind in Uplink:
        if kind is not Uplink.COMMAND_RESULT and kind.value == suffix:
            return ParsedTopic(device_id, kind)
    raise TopicError("unknown_topic", f"topic {topic!r} is not an uplink topic of the device contract")


def device_topic(device_id: str, suffix: str) -> str:
    """devices/{device_id}/{suffix}, for both directions."""
    return f"devices/{device_id}/{suffix}"


class Downlink(str, Enum):
    """Platform-to-device MQTT topic suffixes under devices/{id}/ (see docs/device-contract.md).

    A named shadow's topics are shadow/name/{name}/<kind> instead of shadow/<kind>.
    """

    SHADOW_ACCEPTED = "shadow/accepted"
    SHADOW_REJECTED = "shadow/rejected"
    SHADOW_DELTA = "shadow/delta"
    SHADOW_DOCUMENT = "shadow/document"
    COMMANDS = "commands"
    # An OTA install or cancel for the device (OTA job -> bridge; not retained).
    OTA_NOTIFY = "ota/notify"


SHADOW_NAME_PATTERN = re.compile(r"^[A-Za-z0-9:_-]{1,64}$")


def shadow_topic_suffix(kind: str, shadow: str = "") -> str:
    """shadow/<kind> for the classic shadow, shadow/name/{shadow}/<kind> for a named one."""
    return f"shadow/{kind}" if not shadow else f"shadow/name/{shadow}/{kind}"


def is_downlink_suffix(suffix: str) -> bool:
    """Whether a job may ask the bridge to publish to devices/{id}/{suffix}."""
    if suffix in (Downlink.COMMANDS.value, Downlink.OTA_NOTIFY.value):
        return True
    parts = suffix.split("/")
    kinds = {"accepted", "rejected", "delta", "document"}
    if len(parts) == 2:
        return parts[0] == "shadow" and parts[1] in kinds
    return (len(parts) == 4 and parts[0] == "shadow" and parts[1] == "name"
            and bool(SHADOW_NAME_PATTERN.fullmatch(parts[2])) and parts[3] in kinds)

