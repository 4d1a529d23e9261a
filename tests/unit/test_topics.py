import pytest

from fleet.contract.topics import (
    Kafka,
    ParsedTopic,
    TopicError,
    Uplink,
    device_topic,
    is_downlink_suffix,
    is_valid_device_id,
    parse_uplink_topic,
)


@pytest.mark.parametrize("topic, device_id, kind, command_id", [
    ("devices/d-1/telemetry", "d-1", Uplink.TELEMETRY, None),
    ("devices/pump_7/shadow/update", "pump_7", Uplink.SHADOW_UPDATE, None),
    ("devices/pump_7/shadow/get", "pump_7", Uplink.SHADOW_GET, None),
    ("devices/x/commands/c-42/result", "x", Uplink.COMMAND_RESULT, "c-42"),
    ("devices/x/ota/status", "x", Uplink.OTA_STATUS, None),
    ("devices/x/status", "x", Uplink.STATUS, None),
])
def test_uplink_topics_map_to_device_and_kind(topic, device_id, kind, command_id):
    assert parse_uplink_topic(topic) == ParsedTopic(device_id, kind, command_id)


@pytest.mark.parametrize("topic, kind, shadow", [
    ("devices/d-1/shadow/update", Uplink.SHADOW_UPDATE, ""),
    ("devices/d-1/shadow/name/net/update", Uplink.SHADOW_UPDATE, "net"),
    ("devices/d-1/shadow/name/fw:cfg_2-a/get", Uplink.SHADOW_GET, "fw:cfg_2-a"),
    ("devices/d-1/shadow/name/" + "n" * 64 + "/get", Uplink.SHADOW_GET, "n" * 64),
])
def test_named_shadow_topics_carry_the_name(topic, kind, shadow):
    assert parse_uplink_topic(topic) == ParsedTopic("d-1", kind, None, shadow)


def test_the_bridge_subscribes_to_named_shadows_too():
    assert Uplink.SHADOW_UPDATE.mqtt_filters == ("devices/+/shadow/update", "devices/+/shadow/name/+/update")
    assert Uplink.SHADOW_GET.mqtt_filters == ("devices/+/shadow/get", "devices/+/shadow/name/+/get")
    assert Uplink.TELEMETRY.mqtt_filters == ("devices/+/telemetry",)


@pytest.mark.parametrize("topic, reason", [
    ("sensors/d-1/telemetry", "unknown_topic"),
    ("devices/d-1", "unknown_topic"),
    ("devices/d-1/telemetry/extra", "unknown_topic"),
    ("devices/d-1/commands", "unknown_topic"),
    ("devices/d-1/commands//result", "unknown_topic"),
    ("devices/d-1/shadow/delta", "unknown_topic"),  # a downlink topic, never published by devices
    ("devices/d-1/shadow/name/net/delta", "unknown_topic"),
    ("devices/d-1/shadow/name//update", "unknown_topic"),
    ("devices/d-1/shadow/name/a.b/update", "unknown_topic"),
    ("devices/d-1/shadow/name/" + "n" * 65 + "/update", "unknown_topic"),
    ("devices/d-1/shadow/name/update", "unknown_topic"),
    ("devices/d-1/shadow/name/net/update/x", "unknown_topic"),
    ("devices//telemetry", "invalid_device_id"),
    ("devices/-lead/telemetry", "invalid_device_id"),
    ("devices/a b/telemetry", "invalid_device_id"),
    ("devices/" + "x" * 65 + "/telemetry", "invalid_device_id"),
])
def test_bad_topics_are_refused_with_a_reason(topic, reason):
    with pytest.raises(TopicError) as err:
        parse_uplink_topic(topic)
    assert err.value.reason == reason


@pytest.mark.parametrize("device_id, ok", [
    ("d1", True), ("A-b_9", True), ("x" * 64, True), ("x" * 65, False),
    ("", False), ("_x", False), ("a/b", False), ("a+", False), ("a#", False), ("é", False),
    ("d-1\n", False), ("d-1\r", False),
])
def test_device_id_rule(device_id, ok):
    assert is_valid_device_id(device_id) is ok


def test_every_uplink_kind_has_a_kafka_topic():
    assert {k.kafka_topic for k in Uplink} <= set(Kafka.ALL)


def test_device_topic():
    assert device_topic("d1", "commands") == "devices/d1/commands"


@pytest.mark.parametrize("suffix, ok", [
    ("commands", True), ("ota/notify", True), ("shadow/delta", True), ("shadow/name/net/accepted", True),
    ("ota/status", False), ("ota", False), ("ota/notify/x", False), ("telemetry", False),
])
def test_downlink_suffixes(suffix, ok):
    assert is_downlink_suffix(suffix) is ok


def test_ota_topics_are_created_with_the_others():
    assert {Kafka.OTA_REQUESTS, Kafka.OTA_ASSIGNMENTS, Kafka.OTA_EVENTS} <= set(Kafka.ALL)
    assert len(set(Kafka.ALL)) == len(Kafka.ALL)
