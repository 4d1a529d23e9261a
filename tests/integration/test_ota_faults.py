"""An OTA rollout survives kill -9 of the TaskManager and of the bridge mid-rollout.

The OTA job restores its rollout (waves, counts, the release pointer) and every device's
execution (and their timers) from the last checkpoint and reads what came after it from Kafka
again; the bridge commits downlink offsets only after the broker's acknowledgement. Replays
reach devices as repeated notices, which a device resumes or ignores. The outcome is the same as
without the crash: every device SUCCEEDED, and each installed the image exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from devtools.stack import flink
from tests.integration.test_ota_e2e import (  # noqa: F401 - fixtures
    POLICY,
    create,
    deployment,
    device_type,
    enroll,
    executions,
    firmware,
    ota_job,
    start_agents,
    wait_final,
)
from tests.integration.test_shadow_api import api, keys, shadow_job, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def count_installs(agents) -> dict[str, int]:
    """Wrap each agent's slot install to count how often it really writes an image."""
    counts = {a.identity.device_id: 0 for a in agents}
    lock = threading.Lock()
    for a in agents:
        original = a.ota.slots.install

        def install(*args, _original=original, _id=a.identity.device_id, **kwargs):
            with lock:
                counts[_id] += 1
            return _original(*args, **kwargs)

        a.ota.slots.install = install
    return counts


def ota_job_id(stack) -> str:
    return next(j["id"] for j in flink.list_jobs(stack) if j["name"] == "ota" and j["state"] == "RUNNING")


@pytest.mark.parametrize("fault", ["taskmanager", "bridge"])
def test_a_rollout_survives_kill_9(fault, api, keys, ota_job, enroll, firmware, stack, tmp_path):  # noqa: F811
    from devtools.stack.apps import BridgeComponent
    from devtools.stack.process import wait_until

    identities = enroll(8, f"fault-{fault[:2]}-{uuid.uuid4().hex[:6]}")
    agents = start_agents(stack, identities, {}, tmp_path)
    installs = count_installs(agents)
    ids = [i.device_id for i in identities]
    try:
        plan = {"rate_per_minute": 60, "device": {**POLICY, "progress_timeout_ms": 60_000},
                "waves": [{"size": 2, "success_threshold_pct": 100}, {"size": "100%", "success_threshold_pct": 100}]}
        r = create(api, keys, firmware, ids, plan, name=f"fault-{fault}")
        assert r.status_code == 201, r.text
        dep_id = r.json()["deployment_id"]
        # Mid-rollout: the first wave has devices on their way, the rest are not released yet.
        wait_for("the first devices under way", lambda: (
            (d := deployment(api, keys, dep_id))["released"] >= 2 and d["state"] == "RUNNING", d), timeout=30)
        if fault == "taskmanager":
            job_id = ota_job_id(stack)
            killed_at = int(time.time() * 1000)
            flink.kill_taskmanager(stack)
            flink.wait_for_restore(stack, job_id, killed_at, timeout=180)
        else:
            bridge = BridgeComponent(stack)
            bridge.process.kill()
            time.sleep(3)  # notices and reports wait in Kafka and in the broker's sessions meanwhile
            bridge.start()
            wait_until(bridge.healthy, what="bridge restart", timeout=60, process=bridge.process)

        final = wait_final(api, keys, dep_id, timeout=240)
        assert final["state"] == "SUCCEEDED", final
        ex = executions(api, keys, dep_id)
        assert {d: e["state"] for d, e in ex.items()} == {d: "SUCCEEDED" for d in ids}
        assert final["counts"]["SUCCEEDED"] == 8 and final["released"] == 8
        time.sleep(2)  # a replayed notice would arrive by now
        assert installs == {d: 1 for d in ids}, "each device installed the image exactly once"
        assert all(a.ota.running_version == "2.0.0" for a in agents)
    finally:
        for a in agents:
            a.stop()
