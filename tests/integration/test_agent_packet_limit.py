"""The reference agent honours the broker's Maximum Packet Size (from its CONNACK).

Mosquitto disconnects a client that publishes a packet over its max_packet_size; an agent that
resent unacknowledged messages after reconnecting would then loop, disconnected every second. The
agent refuses such a message locally with PacketTooLarge, takes no seq for it, and stays connected.
"""

from __future__ import annotations

import time
import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent, PacketTooLarge

pytestmark = pytest.mark.integration


def test_an_oversized_message_is_refused_locally_and_the_connection_stays(stack, enrollment, tmp_path):
    identity = enrollment.enroll(f"big-{uuid.uuid4().hex[:8]}", tmp_path / "big")
    agent = DeviceAgent(identity, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(20)
        assert agent.max_packet_size is not None, "the broker states its Maximum Packet Size in CONNACK"
        huge = "x" * (agent.max_packet_size + 1)
        seq_before = agent.seq.next_value
        with pytest.raises(PacketTooLarge):
            agent.publish_telemetry({"t": 1.0}, {"blob": huge})
        with pytest.raises(PacketTooLarge):
            agent.publish_raw("telemetry", huge.encode())
        assert agent.seq.next_value == seq_before, "a refused message takes no seq (no false gap)"
        assert agent.stats.too_large == 2
        agent.send_telemetry({"t": 2.0})  # queued on the loop thread: wait for its PUBACK itself
        deadline = time.monotonic() + 20
        while agent.stats.acked < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.stats.acked == 1 and agent.stats.disconnects == 0
    finally:
        agent.stop()
