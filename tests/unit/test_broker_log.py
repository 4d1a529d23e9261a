"""Mosquitto's log lines about clients it threw out, parsed into reasons (fleet/mqtt/broker_log.py)."""

from __future__ import annotations

import pytest

from fleet.mqtt.broker_log import REASONS, Disconnect, parse_disconnect


# Mosquitto 2.0's own wording, as it publishes it on $SYS/broker/log/N (epoch prefix) and as the
# launcher's log_timestamp_format writes it.
@pytest.mark.parametrize("line, expected", [
    (b"1796220105: Client dev-big disconnected due to oversize packet.", Disconnect("dev-big", "packet_too_large")),
    ("2026-12-02T14:01:25: Client d-1 disconnected due to oversize payload.", Disconnect("d-1", "payload_too_large")),
    ("1: Client d-1 disconnected due to malformed packet.", Disconnect("d-1", "malformed_packet")),
    ("1: Client d-1 disconnected due to protocol error.", Disconnect("d-1", "protocol_error")),
    ("1: Client d-1 disconnected, not authorised.", Disconnect("d-1", "not_authorised")),
    ("1: Client d-1 has exceeded timeout, disconnecting.", Disconnect("d-1", "keepalive_timeout")),
    ("1: Client <unknown> disconnected due to protocol error.", Disconnect(None, "protocol_error")),
])
def test_a_misbehaving_clients_disconnect_is_recognised(line, expected):
    assert parse_disconnect(line) == expected


@pytest.mark.parametrize("line", [
    "1: Client d-1 disconnected.",
    "1: Client d-1 closed its connection.",
    "1: New client connected from 127.0.0.1:51234 as d-1 (p5, c1, k60).",
    "1: New connection from 127.0.0.1:60883 on port 8883.",
    "1: Saving in-memory database to /var/lib/mosquitto/mosquitto.db.",
    "", b"\xff\xfe", "Client", "1: Client d-1 disconnected due to oversize packet. trailing",
])
def test_everything_else_is_not_a_disconnect(line):
    assert parse_disconnect(line) is None


def test_every_reason_is_a_metric_label():
    assert all(r.isidentifier() and r.islower() for r in REASONS)
