import pytest

from tests.support.mqtt_packets import _remaining_length, connect_packet


@pytest.mark.parametrize("n, encoded", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
])
def test_remaining_length_is_mqtt_varint(n, encoded):
    assert _remaining_length(n) == encoded


def test_connect_packet_is_mqtt_311_clean_session():
    pkt = connect_packet("dev-1", keepalive=10)
    assert pkt[0] == 0x10 and pkt[1] == len(pkt) - 2
    assert pkt[2:10] == b"\x00\x04MQTT\x04\x02"  # protocol name, level 4, clean session
    assert pkt[10:12] == b"\x00\x0a" and pkt[12:14] == b"\x00\x05" and pkt[14:] == b"dev-1"
