"""OTA end to end on the real stack: firmware upload -> deployment (API) -> OTA job (rollout and
executions, through Kafka) -> ota/notify (bridge, Mosquitto, mTLS) -> real device agents that
download with the signed URL (Range), verify, install into an A/B slot, reboot and report back.

- a staged rollout of 24 devices in three waves with injected failures: wave 2 starts only once
  wave 1 met its 100% threshold; a crash-looping device is never a success; a tampered image and
  a bad signature are refused by the device and never installed; a stalled device times out; a
  failed download is retried and resumes; the deployment ends SUCCEEDED with every count right;
- the failure threshold aborts a deployment: it stops releasing, cancels the rest, and rolls the
  devices it updated back to their previous version in a rollback deployment;
- pause, resume and cancel through the API, and the 409 of a second active deployment.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from device.agent import AgentConfig, DeviceAgent
from device.ota_faults import OtaFaults
from tests.integration.test_shadow_api import api, keys, shadow_job, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

HEALTH_MS = 3_000
POLICY = {"health_window_ms": HEALTH_MS, "progress_timeout_ms": 8_000, "timeout_ms": 120_000, "max_boots": 2,
          "retries": {"download": 1, "install": 0, "verify": 0}}


@pytest.fixture(scope="module")
def ota_job(stack):
    """The OTA job RUNNING on the stack's Flink cluster (submitted if it is not)."""
    from pathlib import Path

    from devtools.stack import flink

    if not any(job["name"] == "ota" and job["state"] == "RUNNING" for job in flink.list_jobs(stack)):
        job_py = Path(__file__).resolve().parents[2] / "jobs" / "ota" / "job.py"
        job_id = flink.submit_job(stack, job_py)
        flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    yield


@pytest.fixture(scope="module")
def device_type():
    return f"ota-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def enroll(stack, device_type, tmp_path_factory):
    from devtools.enrollment import RegistryEnrollment

    enrollment = RegistryEnrollment.open(stack, device_type=device_type, groups=["ota-test"])
    root = tmp_path_factory.mktemp("ota-devices")

    def make(n: int, prefix: str) -> list[Any]:
        return [enrollment.enroll(f"{prefix}-{i:02d}", root / f"{prefix}-{i:02d}") for i in range(n)]

    return make


@pytest.fixture(scope="module")
def firmware(api, keys, device_type):  # noqa: F811
    image = os.urandom(300_000)
    r = api.post("/v1/firmware", content=image, params={"version": "2.0.0", "device_type": device_type},
                 headers={**keys["operator"], "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def start_agents(stack, identities, faults: dict[int, str], tmp_path) -> list[DeviceAgent]:
    agents = []
    for i, identity in enumerate(identities):
        config = AgentConfig.from_settings(stack, firmware_version="1.0.0", reboot_delay=0.5,
                                           ota_faults=OtaFaults.parse(faults.get(i, "")))
        agents.append(DeviceAgent(identity, config).start())
    for a in agents:
        assert a.wait_connected(20)
    return agents


def create(api, keys, firmware, device_ids, plan, name="e2e"):  # noqa: F811
    return api.post("/v1/ota/deployments", headers=keys["operator"], json={
        "name": name, "firmware_id": firmware["firmware_id"], "target": {"device_ids": device_ids}, "plan": plan})


def deployment(api, keys, dep_id) -> dict[str, Any]:  # noqa: F811
    r = api.get(f"/v1/ota/deployments/{dep_id}", headers=keys["viewer"])
    assert r.status_code == 200, r.text
    return r.json()


def executions(api, keys, dep_id) -> dict[str, dict[str, Any]]:  # noqa: F811
    out: dict[str, dict[str, Any]] = {}
    token = None
    while True:
        r = api.get(f"/v1/ota/deployments/{dep_id}/devices", headers=keys["viewer"],
                    params={"limit": 100, **({"page_token": token} if token else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        out.update({e["device_id"]: e for e in body["items"]})
        token = body.get("next_page_token")
        if not token:
            return out


def wait_final(api, keys, dep_id, timeout=150.0) -> dict[str, Any]:  # noqa: F811
    return wait_for(f"deployment {dep_id} final", lambda: ((d := deployment(api, keys, dep_id))["final"], d),
                    timeout=timeout, interval=1.0)


def changes(execution: dict[str, Any]) -> list[tuple[str, int]]:
    return [(h["to"], h["ts"]) for h in execution["execution"]["history"]]


def test_a_staged_rollout_with_injected_failures(api, keys, ota_job, enroll, firmware, stack, tmp_path):  # noqa: F811
    identities = enroll(24, f"roll-{uuid.uuid4().hex[:6]}")
    faults = {4: "crash_loop", 6: "corrupt_download", 8: "stall", 10: "download_failure_once",
              15: "install_failure", 18: "bad_signature"}
    agents = start_agents(stack, identities, faults, tmp_path)
    ids = [i.device_id for i in identities]
    try:
        plan = {"rate_per_minute": 600, "device": POLICY, "waves": [
            {"size": 3, "success_threshold_pct": 100},
            {"size": "40%", "success_threshold_pct": 60, "failure_threshold": {"count": 4}},
            {"size": "100%", "success_threshold_pct": 60, "failure_threshold": {"count": 4}}]}
        r = create(api, keys, firmware, ids, plan)
        assert r.status_code == 201, r.text
        dep_id = r.json()["deployment_id"]

        # A second deployment for any of these devices while this one is active: 409 naming it.
        again = create(api, keys, firmware, ids[:1], plan)
        assert again.status_code == 409 and dep_id in again.json()["detail"], again.text

        final = wait_final(api, keys, dep_id)
        assert final["state"] == "SUCCEEDED", final
        ex = executions(api, keys, dep_id)
        states = {i: ex[d]["state"] for i, d in enumerate(ids)}
        assert states[4] in ("FAILED", "ROLLED_BACK")  # a crash loop is never a success
        assert states[6] == "REJECTED" and states[18] == "REJECTED"  # tampered image, bad signature
        assert states[8] == "TIMED_OUT"  # stalled
        assert states[15] == "FAILED"  # install failure, no retries for install in this policy
        assert states[10] == "SUCCEEDED" and ex[ids[10]]["attempt"] == 2  # download retried
        ok = [i for i in range(24) if i not in (4, 6, 8, 15, 18)]
        assert all(states[i] == "SUCCEEDED" for i in ok), states
        assert final["counts"]["SUCCEEDED"] == len(ok)
        assert [w["size"] for w in final["waves"]] == [3, 10, 11] and all(w["met"] for w in final["waves"])

        # Success only after the health window: VERIFYING first, SUCCEEDED >= HEALTH_MS later.
        for i in ok:
            moves = dict(changes(ex[ids[i]]))
            assert moves["SUCCEEDED"] - moves["VERIFYING"] >= HEALTH_MS - 50, changes(ex[ids[i]])
        # Wave 2 was released only after all of wave 1 succeeded.
        wave1_done = max(dict(changes(ex[ids[i]]))["SUCCEEDED"] for i in range(3))
        wave2_first = min(changes(ex[ids[i]])[0][1] for i in range(3, 13))
        assert wave2_first >= wave1_done

        # The devices agree: the updated run 2.0.0, the refused and failed still run 1.0.0.
        for i, agent in enumerate(agents):
            want = "2.0.0" if i in ok else "1.0.0"
            assert agent.ota.running_version == want, (i, agent.ota.running_version)
    finally:
        for a in agents:
            a.stop()


@pytest.fixture(scope="module")
def previous_firmware(api, keys, device_type):  # noqa: F811
    """The image of the version the agents run before the update (their factory 1.0.0)."""
    r = api.post("/v1/firmware", content=os.urandom(100_000), params={"version": "1.0.0", "device_type": device_type},
                 headers={**keys["operator"], "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def test_the_failure_threshold_aborts_cancels_the_rest_and_rolls_back(api, keys, ota_job, enroll,  # noqa: F811
                                                                      firmware, previous_firmware, stack, tmp_path):
    identities = enroll(10, f"abort-{uuid.uuid4().hex[:6]}")
    agents = start_agents(stack, identities, {2: "install_failure", 3: "install_failure"}, tmp_path)
    ids = [i.device_id for i in identities]
    try:
        plan = {"rate_per_minute": 30, "device": POLICY, "rollback_on_abort": True,  # one device every 2 s
                "waves": [{"size": "100%", "success_threshold_pct": 50, "failure_threshold": {"count": 2}}]}
        r = create(api, keys, firmware, ids, plan)
        assert r.status_code == 201, r.text
        dep_id = r.json()["deployment_id"]
        final = wait_final(api, keys, dep_id, timeout=90)
        assert final["state"] == "ABORTED" and "2 failed" in final["reason"], final
        ex = executions(api, keys, dep_id)
        assert ex[ids[2]]["state"] == "FAILED" and ex[ids[3]]["state"] == "FAILED"
        assert len(ex) < 10  # it stopped releasing
        assert all(e["state"] in ("FAILED", "CANCELED", "SUCCEEDED", "VERIFYING", "INSTALLING", "REBOOTING")
                   for e in ex.values()), {d: e["state"] for d, e in ex.items()}

        # Once every released device is final, the updated ones go back to 1.0.0 in a rollback
        # deployment that names this one.
        started = wait_for("the rollback started", lambda: (
            ((d := deployment(api, keys, dep_id)).get("rollback") or {}).get("state") == "STARTED", d), timeout=60)
        ex = executions(api, keys, dep_id)
        updated = sorted(d for d, e in ex.items() if e["state"] == "SUCCEEDED")
        assert updated, ex  # the first two finished before the failures
        [rb_id] = started["rollback"]["deployments"]
        rollback = wait_final(api, keys, rb_id, timeout=90)
        assert rollback["state"] == "SUCCEEDED" and rollback["rollback_of"] == dep_id, rollback
        assert rollback["version"] == "1.0.0" and rollback["target_count"] == len(updated)
        assert sorted(executions(api, keys, rb_id)) == updated
        for i, agent in enumerate(agents):
            assert agent.ota.running_version == "1.0.0", (i, ids[i] in updated)
    finally:
        for a in agents:
            a.stop()


def test_pause_resume_and_cancel(api, keys, ota_job, enroll, firmware, stack, tmp_path):  # noqa: F811
    identities = enroll(6, f"ctl-{uuid.uuid4().hex[:6]}")
    agents = start_agents(stack, identities, {}, tmp_path)
    ids = [i.device_id for i in identities]
    try:
        plan = {"rate_per_minute": 12, "device": POLICY}  # one device every 5 s
        r = create(api, keys, firmware, ids, plan)
        assert r.status_code == 201, r.text
        dep_id = r.json()["deployment_id"]
        wait_for("running", lambda: ((d := deployment(api, keys, dep_id))["state"] == "RUNNING", d), timeout=30)
        r = api.post(f"/v1/ota/deployments/{dep_id}/pause", headers=keys["operator"])
        assert r.status_code == 202, r.text
        paused = wait_for("paused", lambda: ((d := deployment(api, keys, dep_id))["state"] == "PAUSED", d), timeout=20)
        released = paused["released"]
        time.sleep(6)  # longer than the release interval
        assert deployment(api, keys, dep_id)["released"] == released
        assert api.post(f"/v1/ota/deployments/{dep_id}/resume", headers=keys["operator"]).status_code == 202
        wait_for("released more", lambda: ((d := deployment(api, keys, dep_id))["released"] > released, d),
                 timeout=20)
        assert api.post(f"/v1/ota/deployments/{dep_id}/cancel", headers=keys["operator"]).status_code == 202
        final = wait_final(api, keys, dep_id, timeout=30)
        assert final["state"] == "CANCELED"
        # A final deployment refuses further control.
        assert api.post(f"/v1/ota/deployments/{dep_id}/resume", headers=keys["operator"]).status_code == 409
        assert api.post(f"/v1/ota/deployments/{dep_id}/pause", headers=keys["viewer"]).status_code == 403
        r = api.get(f"/v1/devices/{ids[0]}/ota", headers=keys["viewer"])
        assert r.status_code == 200 and r.json()["items"][0]["deployment_id"] == dep_id, r.text
    finally:
        for a in agents:
            a.stop()
