"""A packet above the broker's max_packet_size never reaches the bridge (Mosquitto disconnects the
device and discards it), so it cannot be dead-lettered; it must still be counted where an
operator looks: the bridge exports the broker's own account of it (fleet_broker_disconnects)."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from devtools.stack.mosquitto import max_packet_size
from fleet.config import Settings
from tests.support.mqtt import connect, device_credentials

pytestmark = pytest.mark.integration

METRIC = 'fleet_broker_disconnects_total{reason="packet_too_large"}'


def broker_disconnects(stack: Settings) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.bridge_metrics_port}/metrics", timeout=5).read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(METRIC)), 0.0)


def test_an_oversized_packet_is_counted_by_reason(stack, enrollment, tmp_path):
    device = f"big-{time.monotonic_ns() % 10**9}"
    cert, key = device_credentials(enrollment, device, tmp_path)
    before = broker_disconnects(stack)
    client = connect(stack.mqtt_host, stack.mqtt_device_port, stack.pki_dir / "ca-chain.crt", cert, key,
                     client_id=device)
    told = threading.Event()
    reasons = []

    def on_disconnect(c, userdata, flags, reason_code, properties):
        reasons.append(reason_code)
        told.set()

    client.client.on_disconnect = on_disconnect
    try:
        client.client.publish(f"devices/{device}/telemetry", b"x" * (max_packet_size(stack) + 1), qos=1)
        assert told.wait(10), "the broker kept the connection of a device that sent an oversized packet"
    finally:
        client.client.loop_stop()  # no automatic reconnect: one oversized packet, one disconnect
        client.client.disconnect()
    # (Whether paho reports the broker's DISCONNECT "Packet too large" or only the closed socket
    # is a race on the client side; the broker's own account below is what the platform counts.)
    deadline = time.monotonic() + 15
    while broker_disconnects(stack) < before + 1:
        assert time.monotonic() < deadline, f"{METRIC} stayed at {broker_disconnects(stack)} (was {before})"
        time.sleep(0.1)
