"""A command survives kill -9: of the TaskManager right after the API accepted it (the commands
job restores from a checkpoint taken before it, reads the request again from Kafka and sends it
again under the same command id, which the device deduplicates), and of the bridge while the
command waits in the downlink topic (the downlink commits its offsets only after the broker's
acknowledgement, so the restarted bridge publishes it). Either way the device runs it exactly
once and the command ends SUCCEEDED with the device's result.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent
from devtools.stack import flink
from tests.integration.test_commands_e2e import api, commands_job, ends, online_in_the_job, submit  # noqa: F401
from tests.integration.test_shadow_api import keys, shadow_job  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def device(enrollment, tmp_path):
    return enrollment.enroll(f"cmd-fault-{uuid.uuid4().hex[:10]}", tmp_path)


class CountingAgent:
    """The real device agent with a ``count`` command that records every time it runs."""

    def __init__(self, device, stack):
        self.runs: list[dict] = []
        self._lock = threading.Lock()
        self.agent = DeviceAgent(device, AgentConfig.from_settings(stack))
        self.agent.commands.register("count", self._run)

    def _run(self, params):
        with self._lock:
            self.runs.append(params)
            return {"runs": len(self.runs)}

    def __enter__(self):
        self.agent.start()
        assert self.agent.wait_connected(15)
        return self

    def __exit__(self, *exc):
        self.agent.stop()


def commands_job_id(stack) -> str:
    return next(j["id"] for j in flink.list_jobs(stack) if j["name"] == "commands" and j["state"] == "RUNNING")


def test_a_command_survives_kill_9_of_the_taskmanager(api, keys, device, stack):  # noqa: F811
    with CountingAgent(device, stack) as dev:
        online_in_the_job(api, keys, device.device_id)
        time.sleep(1)
        job_id = commands_job_id(stack)
        r = submit(api, keys, device.device_id, "count", {"n": 1}, timeout_s=120, ttl_s=300)
        assert r.status_code == 202, r.text
        command_id = r.json()["command_id"]
        killed_at = int(time.time() * 1000)
        flink.kill_taskmanager(stack)  # before the next checkpoint: the request is read again from Kafka
        flink.wait_for_restore(stack, job_id, killed_at, timeout=180)

        done = ends(api, keys, command_id, "SUCCEEDED", timeout=90)
        assert done["result"] == {"runs": 1}
        time.sleep(2)  # a redelivery after the restore would arrive by now
        assert dev.runs == [{"n": 1}], "the device ran the command exactly once"


def test_a_command_survives_kill_9_of_the_bridge(api, keys, device, stack):  # noqa: F811
    from devtools.stack.apps import BridgeComponent
    from devtools.stack.process import wait_until

    with CountingAgent(device, stack) as dev:
        online_in_the_job(api, keys, device.device_id)
        time.sleep(1)
        bridge = BridgeComponent(stack)
        bridge.process.kill()  # kill -9: the command waits in the downlink topic
        r = submit(api, keys, device.device_id, "count", {"n": 2}, timeout_s=120, ttl_s=300)
        assert r.status_code == 202, r.text
        command_id = r.json()["command_id"]
        time.sleep(2)
        assert dev.runs == [], "nothing reaches the device while the bridge is down"
        bridge.start()
        wait_until(bridge.healthy, what="bridge restart", timeout=60, process=bridge.process)

        done = ends(api, keys, command_id, "SUCCEEDED", timeout=90)
        assert done["result"] == {"runs": 1}
        time.sleep(2)
        assert dev.runs == [{"n": 2}], "the device ran the command exactly once"
