"""The paho decoding speed-up must not change what paho decodes."""

from __future__ import annotations

import pytest
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.mqtt import paho_speedups


def publish_body(topic: bytes, mid: int, props: bytes, payload: bytes) -> bytes:
    return len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + props + payload


def with_props() -> bytes:
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = 30
    p.UserProperty = ("k", "v")
    p.UserProperty = ("k2", "v2")
    p.ContentType = "application/json"
    return p.pack()


CASES = [
    publish_body(b"devices/d-1/telemetry", 7, b"\x00", b'{"a":1}'),
    publish_body(b"devices/d-1/telemetry", 8, with_props(), b'{"b":2}'),
    publish_body(b"devices/d-1/status", 9, b"\x00", b""),
]


def decoded(body: bytes):
    pkt = _packet.decode_publish(0x32, body, 5)
    return pkt.topic, pkt.mid, pkt.payload, pkt.properties.json(), str(pkt.properties), \
        hasattr(pkt.properties, "TopicAlias"), getattr(pkt.properties, "UserProperty", None)


@pytest.mark.parametrize("body", CASES)
def test_decoding_is_identical(body):
    paho_speedups.uninstall()
    try:
        reference = decoded(body)
        assert paho_speedups.install()
        assert decoded(body) == reference
    finally:
        paho_speedups.uninstall()


def test_lazy_properties_can_still_be_set():
    p = paho_speedups.LazyProperties(PacketTypes.PUBLISH)
    assert not hasattr(p, "TopicAlias") and p.isEmpty()
    p.TopicAlias = 3
    assert p.TopicAlias == 3 and not p.isEmpty()
    assert p.pack() == Properties.pack(p)


def test_install_is_idempotent():
    try:
        assert paho_speedups.install() and paho_speedups.install()
        assert _packet.Properties is paho_speedups.LazyProperties
    finally:
        paho_speedups.uninstall()
    assert _packet.Properties is Properties


def test_ack_many_sends_what_separate_acks_would(monkeypatch):
    import paho.mqtt.client as mqtt

    def queued(send) -> list[bytes]:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True)
        out: list[bytes] = []
        monkeypatch.setattr(c, "_packet_queue", lambda command, packet, mid, qos, info=None: out.append(bytes(packet)))
        send(c)
        return out

    separate = queued(lambda c: [c.ack(mid, 1) for mid in (1, 300, 65535)])
    together = queued(lambda c: paho_speedups.ack_many(c, [1, 300, 65535]))
    assert together == [b"".join(separate)] and len(separate) == 3
