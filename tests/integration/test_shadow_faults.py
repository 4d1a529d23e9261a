"""A desired change survives kill -9: of the TaskManager right after the API accepted it (the
shadow job restores from a checkpoint taken before it and applies the change again from Kafka),
and of the bridge while the device waits for its delta (the downlink re-reads what the broker had
not acknowledged).
"""

from __future__ import annotations

import time
import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent
from devtools.stack import flink
from tests.integration.test_shadow_api import api, keys, patch, shadow_job, wait_for  # noqa: F401 - fixtures
from tests.integration.test_shadow_device_e2e import converged

pytestmark = pytest.mark.integration


@pytest.fixture
def device(enrollment, tmp_path):
    return enrollment.enroll(f"shadow-fault-{uuid.uuid4().hex[:10]}", tmp_path)


def shadow_job_id(stack) -> str:
    return next(j["id"] for j in flink.list_jobs(stack) if j["name"] == "shadow" and j["state"] == "RUNNING")


def test_desired_changes_survive_kill_9_of_the_taskmanager(api, keys, device, stack):  # noqa: F811
    job_id = shadow_job_id(stack)
    versions = []
    for value in ("one", "two", "three"):
        status, doc, _ = patch(api, keys, device.device_id, {"setting": value})
        assert status == 200, doc
        versions.append(doc["version"])
    killed_at = int(time.time() * 1000)
    flink.kill_taskmanager(stack)  # before the next checkpoint: the job must re-apply them from Kafka
    flink.wait_for_restore(stack, job_id, killed_at, timeout=180)

    # The same versions after the restore: a new change on top of the last one is accepted.
    status, doc, _ = patch(api, keys, device.device_id, {"extra": 1}, if_match=str(versions[-1]))
    assert status == 200 and doc["version"] == versions[-1] + 1, doc

    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(15)
        wait_for("the device converged after the crash",
                 converged(api, keys, device.device_id, {"setting": "three", "extra": 1}), timeout=60)
    finally:
        agent.stop()


def test_a_delta_survives_kill_9_of_the_bridge(api, keys, device, stack):  # noqa: F811
    from devtools.stack.apps import BridgeComponent
    from devtools.stack.process import wait_until

    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(15)
        status, doc, _ = patch(api, keys, device.device_id, {"before": True})
        assert status == 200, doc
        wait_for("the first change applied", converged(api, keys, device.device_id, {"before": True}), timeout=30)

        bridge = BridgeComponent(stack)
        bridge.process.kill()  # kill -9: the downlink must not lose what it read and had not published
        status, doc, _ = patch(api, keys, device.device_id, {"during": "outage"})
        assert status == 200, doc  # the job answers; only the way to the device is down
        time.sleep(1)
        bridge.start()
        wait_until(bridge.healthy, what="bridge restart", timeout=60, process=bridge.process)
        wait_for("the change made while the bridge was down",
                 converged(api, keys, device.device_id, {"before": True, "during": "outage"}), timeout=60)
        assert agent.shadow.reported("")["during"] == "outage"
    finally:
        agent.stop()


def test_the_jobs_come_back_by_themselves_after_kill_9_of_the_jobmanager(api, keys, device, stack):  # noqa: F811
    """No HA in the local stack: the launcher's `up` resubmits what ran from its latest retained
    checkpoint (devtools/stack/flink_recovery.py), so the shadow job keeps its versions and every
    other job that ran is back too, none twice."""
    from devtools.stack import launcher
    from devtools.stack.process import wait_until

    before = {j["name"] for j in flink.list_jobs(stack) if j["state"] == "RUNNING"}
    job_id = shadow_job_id(stack)
    status, doc, _ = patch(api, keys, device.device_id, {"setting": "before-crash"})
    assert status == 200, doc
    version = doc["version"]
    flink.wait_for_checkpoint_after(stack, job_id, int(time.time() * 1000))

    component = flink.FlinkComponent(stack)
    component.jobmanager.kill()  # kill -9
    wait_until(lambda: not component.jobmanager.is_running(), what="JobManager exit", timeout=10)
    launcher.up(stack, ["flink"])  # what an operator (or a supervisor) runs

    jobs = [j for j in flink.list_jobs(stack) if j["state"] == "RUNNING"]
    assert sorted(j["name"] for j in jobs) == sorted(before), jobs  # each one back, once
    new_id = shadow_job_id(stack)
    restored = flink.rest(stack, "GET", f"/jobs/{new_id}/checkpoints").get("latest", {}).get("restored")
    assert new_id != job_id and restored and f"/{job_id}/chk-" in restored["external_path"], restored

    # The state came back with it: a change on top of the version the job had is accepted.
    status, doc, _ = patch(api, keys, device.device_id, {"extra": 2}, if_match=str(version))
    assert status == 200 and doc["version"] == version + 1, doc
