"""handle_uplink: the bridge's whole decision, table-driven."""

from __future__ import annotations

import base64
import json

import pytest

from fleet.contract.envelope import DEAD_LETTER_RAW_LIMIT, DeadLetter, Routed, handle_uplink
from fleet.contract.topics import Uplink
from fleet.contract.validation import kafka_schema

NOW = 1_700_000_000_999
TS = 1_700_000_000_000
MAX = 1024


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


TELEMETRY = {"ts": TS, "seq": 5, "metrics": {"temp": 21.5}, "attrs": {"fw": "1.0"}}

# (mqtt topic, raw payload, kafka topic, key, envelope minus payload)
ROUTED = [
    ("devices/d-1/telemetry", raw(TELEMETRY), "telemetry", "d-1",
     {"device_id": "d-1", "type": "telemetry", "ts": TS, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/telemetry"}),
    ("devices/d-1/shadow/update", raw({"state": {"reported": {"led": "on"}}, "version": 2}), "shadow-reported", "d-1",
     {"device_id": "d-1", "type": "shadow_update", "ts": NOW, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/shadow/update"}),
    ("devices/d-1/shadow/get", raw({"client_token": "t"}), "shadow-reported", "d-1",
     {"device_id": "d-1", "type": "shadow_get", "ts": NOW, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/shadow/get"}),
    ("devices/d-1/shadow/name/fw:cfg/update", raw({"state": {"reported": {"led": "on"}}}), "shadow-reported", "d-1",
     {"device_id": "d-1", "type": "shadow_update", "ts": NOW, "ingest_ts": NOW,
      "mqtt_topic": "devices/d-1/shadow/name/fw:cfg/update", "shadow": "fw:cfg"}),
    ("devices/d-1/shadow/name/net/get", raw({}), "shadow-reported", "d-1",
     {"device_id": "d-1", "type": "shadow_get", "ts": NOW, "ingest_ts": NOW,
      "mqtt_topic": "devices/d-1/shadow/name/net/get", "shadow": "net"}),
    ("devices/d-1/commands/c-42/result", raw({"status": "SUCCEEDED", "ts": TS}), "command-results", "d-1",
     {"device_id": "d-1", "type": "command_result", "ts": TS, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/commands/c-42/result",
      "command_id": "c-42"}),
    ("devices/d-1/ota/status", raw({"deployment_id": "dep", "state": "INSTALLING", "progress": 10}), "ota-status", "d-1",
     {"device_id": "d-1", "type": "ota_status", "ts": NOW, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/ota/status"}),
    ("devices/d-1/status", raw({"online": False, "reason": "connection_lost"}), "device-events", "d-1",
     {"device_id": "d-1", "type": "status", "ts": NOW, "ingest_ts": NOW, "mqtt_topic": "devices/d-1/status"}),
]


@pytest.mark.parametrize("topic,payload,kafka_topic,key,expected", ROUTED, ids=[r[0] for r in ROUTED])
def test_valid_messages_are_routed(topic, payload, kafka_topic, key, expected):
    out = handle_uplink(topic, payload, NOW, MAX)
    assert isinstance(out, Routed)
    assert (out.topic, out.key) == (kafka_topic, key.encode())
    value = json.loads(out.value)
    assert value.pop("payload") == json.loads(payload)
    assert value == expected
    assert kafka_schema("envelope").is_valid(json.loads(out.value))


# (mqtt topic, raw payload, reason, key, device_id, detail contains)
REJECTED = [
    ("devices/d-1/telemetry", b'{"ts": 1', "invalid_json", "d-1", "d-1", "not valid JSON"),
    ("devices/d-1/telemetry", b"\xff\xfe", "invalid_json", "d-1", "d-1", "not valid JSON"),
    ("devices/d-1/telemetry", b"", "invalid_json", "d-1", "d-1", "not valid JSON"),
    ("devices/d-1/telemetry", b'{"ts": NaN, "seq": 1, "metrics": {}}', "invalid_json", "d-1", "d-1", "not valid JSON"),
    ("devices/d-1/telemetry", raw({"ts": TS, "seq": -1, "metrics": {}}), "schema_violation", "d-1", "d-1",
     "telemetry: $.seq: -1 is less than the minimum of 0"),
    ("devices/d-1/telemetry", raw({"ts": TS, "seq": 1, "metrics": {"t": "hot"}}), "schema_violation", "d-1", "d-1",
     "telemetry: $.metrics.t: 'hot' is not of type 'number'"),
    ("devices/d-1/telemetry", raw({"ts": TS, "seq": 1}), "schema_violation", "d-1", "d-1", "'metrics' is a required property"),
    ("devices/d-1/telemetry", b"[1, 2]", "schema_violation", "d-1", "d-1", "is not of type 'object'"),
    ("devices/d-1/status", raw({"online": "yes"}), "schema_violation", "d-1", "d-1", "status: $.online"),
    ("devices/d-1/commands/c-1/result", raw({"status": "DONE"}), "schema_violation", "d-1", "d-1", "command-result: $.status"),
    ("devices/d-1/telemetry", b"{" + b" " * MAX + b"}", "payload_too_large", "d-1", "d-1", f"the limit is {MAX}"),
    ("devices/bad id/telemetry", raw(TELEMETRY), "invalid_device_id", "devices/bad id/telemetry", None, "not well-formed"),
    ("devices/-x/telemetry", raw(TELEMETRY), "invalid_device_id", "devices/-x/telemetry", None, "not well-formed"),
    ("devices/" + "a" * 65 + "/telemetry", raw(TELEMETRY), "invalid_device_id", "devices/" + "a" * 65 + "/telemetry", None, ""),
    ("devices/d-1/telemetry/extra", raw(TELEMETRY), "unknown_topic", "d-1", "d-1", "not an uplink topic"),
    ("devices/d-1/commands", raw(TELEMETRY), "unknown_topic", "d-1", "d-1", "not an uplink topic"),
    ("devices/d-1/commands//result", raw({"status": "FAILED"}), "unknown_topic", "d-1", "d-1", "empty command id"),
    ("devices/d-1/shadow/name/bad.name/update", raw({"state": {}}), "unknown_topic", "d-1", "d-1", "invalid shadow name"),
    ("devices/d-1/shadow/name/" + "n" * 65 + "/get", raw({}), "unknown_topic", "d-1", "d-1", "invalid shadow name"),
    ("devices/d-1/shadow/name/net/delta", raw({}), "unknown_topic", "d-1", "d-1", "not an uplink topic"),
    ("sensors/d-1/telemetry", raw(TELEMETRY), "unknown_topic", "sensors/d-1/telemetry", None, "not under devices/"),
    ("devices", b"{}", "unknown_topic", "devices", None, ""),
]


@pytest.mark.parametrize("topic,payload,reason,key,device_id,detail", REJECTED,
                         ids=[f"{r[2]}-{i}" for i, r in enumerate(REJECTED)])
def test_rejected_messages_become_dead_letters(topic, payload, reason, key, device_id, detail):
    out = handle_uplink(topic, payload, NOW, MAX)
    assert isinstance(out, DeadLetter)
    assert (out.topic, out.key, out.reason) == ("dead-letter", key.encode(), reason)
    value = json.loads(out.value)
    assert kafka_schema("dead-letter").is_valid(value), value
    assert value["type"] == "dead-letter" and value["source"] == "bridge"
    assert (value["reason"], value["device_id"], value["mqtt_topic"], value["ingest_ts"]) == (reason, device_id, topic, NOW)
    assert detail in value["detail"] and value["detail"] == out.detail
    assert base64.b64decode(value["raw_b64"]) == payload
    assert (value["raw_size"], value["raw_truncated"]) == (len(payload), False)


@pytest.mark.parametrize("envelope_type, ok", [("shadow_update", True), ("shadow_get", True), ("telemetry", False),
                                               ("status", False)])
def test_only_shadow_envelopes_may_name_a_shadow(envelope_type, ok):
    envelope = {"device_id": "d-1", "type": envelope_type, "ts": TS, "ingest_ts": NOW, "mqtt_topic": "t",
                "payload": {}, "shadow": "net"}
    schema = kafka_schema("envelope")
    assert schema.is_valid(envelope) is ok
    assert schema.reference.is_valid(envelope) is ok
    assert not schema.is_valid({**envelope, "shadow": "bad name"})


def test_size_limit_is_inclusive():
    payload = raw(TELEMETRY)
    assert isinstance(handle_uplink("devices/d-1/telemetry", payload, NOW, len(payload)), Routed)
    assert isinstance(handle_uplink("devices/d-1/telemetry", payload, NOW, len(payload) - 1), DeadLetter)


def test_huge_payload_keeps_a_truncated_copy():
    payload = b"x" * (DEAD_LETTER_RAW_LIMIT + 10)
    out = handle_uplink("devices/d-1/telemetry", payload, NOW, MAX)
    value = json.loads(out.value)
    assert (out.reason, value["raw_size"], value["raw_truncated"]) == ("payload_too_large", len(payload), True)
    assert base64.b64decode(value["raw_b64"]) == payload[:DEAD_LETTER_RAW_LIMIT]


def test_topic_problems_win_over_payload_problems():
    out = handle_uplink("devices/bad id/telemetry", b"not json" * 1000, NOW, MAX)
    assert out.reason == "invalid_device_id"


def test_integral_float_ts_is_stored_as_int():
    out = handle_uplink("devices/d-1/telemetry", b'{"ts": 1700000000000.0, "seq": 1, "metrics": {}}', NOW, MAX)
    assert json.loads(out.value)["ts"] == TS and isinstance(json.loads(out.value)["ts"], int)


def test_unicode_survives_round_trip():
    payload = raw({"ts": TS, "seq": 1, "metrics": {"t": 1}, "attrs": {"place": "Zürich ✓"}})
    out = handle_uplink("devices/d-1/telemetry", payload, NOW, MAX)
    assert json.loads(out.value)["payload"]["attrs"]["place"] == "Zürich ✓"


def test_every_uplink_kind_is_covered_by_the_routed_table():
    assert {json.loads(handle_uplink(t, p, NOW, MAX).value)["type"] for t, p, *_ in ROUTED} == {k.name.lower() for k in Uplink}


@pytest.mark.parametrize("active,expected", [(True, Routed), (False, DeadLetter)])
def test_registry_check(active, expected):
    asked = []

    def is_active(device_id):
        asked.append(device_id)
        return active

    out = handle_uplink("devices/d-1/telemetry", raw(TELEMETRY), NOW, MAX, is_active=is_active)
    assert isinstance(out, expected) and asked == ["d-1"]
    if not active:
        value = json.loads(out.value)
        assert (out.reason, value["device_id"]) == ("device_not_active", "d-1")
        assert kafka_schema("dead-letter").is_valid(value)


def test_registry_is_not_asked_about_malformed_topics():
    out = handle_uplink("devices/bad id/telemetry", raw(TELEMETRY), NOW, MAX, is_active=lambda d: 1 / 0)
    assert out.reason == "invalid_device_id"


def _nested(levels: int) -> dict:
    attrs: dict = {}
    node = attrs
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return attrs


@pytest.mark.parametrize("attrs_levels,reason", [(7, None), (8, "too_deep"), (300, "too_deep")])
def test_nesting_is_bounded(attrs_levels, reason):
    """The payload is level 1 and attrs level 2: 7 levels of attrs are the most allowed. A 300-level
    payload passed the schema and then broke the envelope's serialisation, wedging the bridge."""
    from fleet.contract.envelope import DeadLetter, Routed, handle_uplink

    now = 1_800_000_000_000
    raw = json.dumps({"ts": now, "seq": 1, "metrics": {"t": 1.0}, "attrs": _nested(attrs_levels)}).encode()
    out = handle_uplink("devices/dev-1/telemetry", raw, now, 1 << 20)
    if reason is None:
        assert type(out) is Routed
    else:
        assert type(out) is DeadLetter and out.reason == reason


@pytest.mark.parametrize("value,limit,exceeds", [
    (1, 0, False), ({}, 1, False), ({}, 0, True), ([[[]]], 3, False), ([[[]]], 2, True),
    ({"a": [1, {"b": 2}]}, 3, False), ({"a": [1, {"b": {}}]}, 3, True),
])
def test_nesting_exceeds(value, limit, exceeds):
    from fleet.contract.envelope import nesting_exceeds

    assert nesting_exceeds(value, limit) is exceeds


def test_registry_errors_are_the_only_redelivery_signal():
    import pytest

    from fleet.contract.envelope import RegistryUnavailable, handle_uplink

    def down(_device_id):
        raise ConnectionError("cassandra down")

    with pytest.raises(RegistryUnavailable):
        handle_uplink("devices/dev-1/telemetry", b'{"ts":1,"seq":1,"metrics":{}}', 1000, 1 << 20, None, down)
