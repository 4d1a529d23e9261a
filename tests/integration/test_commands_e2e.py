"""Remote commands end to end on the real stack: API --> Kafka command-requests --> the commands job
on Flink --> downlink --> bridge --> Mosquitto --> the real device agent over mTLS, and its receipt
and result back up (commands/{id}/result --> bridge --> command-results --> job --> command-events
and Cassandra --> the API).

- ``?wait=`` returns the device's result (request/response like a direct method);
- a command with ``timeout_s=2`` to a device that never answers ends TIMED_OUT, by the job's timer;
- a command whose TTL passes while the device is offline is EXPIRED and never delivered;
- one queued while the device is offline is delivered on reconnect;
- the same idempotency key and body is the same command, another body 409; cancel; the list.

Needs the whole stack (with 005_commands.cql applied and the command topics created) and the
commands job (submitted here if it is not running).
"""

from __future__ import annotations

import time
import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent
from tests.integration.test_shadow_api import keys, shadow_job, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def commands_job(stack):
    """The commands job RUNNING on the stack's Flink cluster (submitted if it is not)."""
    from pathlib import Path

    from devtools.stack import flink

    if not any(job["name"] == "commands" and job["state"] == "RUNNING" for job in flink.list_jobs(stack)):
        job_py = Path(__file__).resolve().parents[2] / "jobs" / "commands" / "job.py"
        job_id = flink.submit_job(stack, job_py)
        flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    yield


@pytest.fixture(scope="module")
def api(stack, commands_job, shadow_job):  # noqa: F811 - connectivity (online_in_the_job) is the shadow job's
    import httpx

    with httpx.Client(base_url=f"http://{stack.api_host}:{stack.api_port}", timeout=60) as client:
        assert client.get("/health").status_code == 200
        yield client


@pytest.fixture
def device(enrollment, tmp_path):
    return enrollment.enroll(f"cmd-e2e-{uuid.uuid4().hex[:10]}", tmp_path)


def submit(api, keys, device_id, name, params=None, *, timeout_s=10, ttl_s=60, wait=None, key=None):  # noqa: F811
    body = {"name": name, "params": params or {}, "timeout_s": timeout_s, "ttl_s": ttl_s}
    if key is not None:
        body["idempotency_key"] = key
    return api.post(f"/v1/devices/{device_id}/command", json=body, headers=keys["operator"],
                    params={"wait": wait} if wait is not None else {})


def command(api, keys, command_id):  # noqa: F811
    r = api.get(f"/v1/commands/{command_id}", headers=keys["viewer"])
    return r.json() if r.status_code == 200 else {"state": None, "status": r.status_code}


def ends(api, keys, command_id, state, timeout=30.0):  # noqa: F811
    return wait_for(f"command {command_id} {state}",
                    lambda: ((c := command(api, keys, command_id))["state"] == state, c), timeout=timeout)


def online_in_the_job(api, keys, device_id):  # noqa: F811
    # The shadow job's connectivity row: the status message went through the bridge (the
    # commands job reads the same device-events topic).
    wait_for("the agent online", lambda: (
        ((c := api.get(f"/v1/devices/{device_id}", headers=keys["viewer"]).json().get("connectivity")) or {})
        .get("connected") is True, c), timeout=30)


def test_wait_returns_the_devices_result(api, keys, device, stack):  # noqa: F811
    agent = DeviceAgent(device, AgentConfig.from_settings(stack))
    agent.commands.register("echo", lambda params: {"echo": params})
    agent.start()
    try:
        assert agent.wait_connected(15)
        online_in_the_job(api, keys, device.device_id)
        time.sleep(1)  # the commands job may read device-events a moment after the shadow job
        r = submit(api, keys, device.device_id, "echo", {"x": 1}, wait=20)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["state"], body["result"], body["final"]) == ("SUCCEEDED", {"echo": {"x": 1}}, True)
        assert [t["to"] for t in body["history"]][:2] == ["QUEUED", "SENT"]
        assert body["history"][-1]["to"] == "SUCCEEDED"
        # The same row in Cassandra, and in the device's list.
        assert ends(api, keys, body["command_id"], "SUCCEEDED")["result"] == {"echo": {"x": 1}}
        items = api.get(f"/v1/devices/{device.device_id}/commands", headers=keys["viewer"]).json()["items"]
        assert items[0]["command_id"] == body["command_id"]
    finally:
        agent.stop()


def test_a_device_that_never_answers_times_out(api, keys, device, stack):  # noqa: F811
    agent = DeviceAgent(device, AgentConfig.from_settings(stack))
    started = []
    # A handler that does not return within the timeout (the agent's receipt still goes up first).
    agent.commands.register("hang", lambda params: started.append(1) or time.sleep(5))
    agent.start()
    try:
        assert agent.wait_connected(15)
        online_in_the_job(api, keys, device.device_id)
        time.sleep(1)
        r = submit(api, keys, device.device_id, "hang", timeout_s=2)
        assert r.status_code == 202, r.text
        command_id = r.json()["command_id"]
        done = ends(api, keys, command_id, "TIMED_OUT", timeout=20)
        assert [t["to"] for t in done["history"]][-1] == "TIMED_OUT"
        assert done["deadline"] - done["sent_at"] == 2000
    finally:
        agent.stop()


def test_an_expired_command_is_never_delivered_and_a_queued_one_is_on_reconnect(api, keys, device, stack):  # noqa: F811
    agent = DeviceAgent(device, AgentConfig.from_settings(stack))
    ran: list[str] = []
    agent.commands.register("mark", lambda params: ran.append(params["tag"]) or {"tag": params["tag"]})
    agent.start()
    assert agent.wait_connected(15)
    agent.stop()  # offline now (its last will / offline status)
    time.sleep(1)
    short = submit(api, keys, device.device_id, "mark", {"tag": "short"}, ttl_s=1)
    long = submit(api, keys, device.device_id, "mark", {"tag": "long"}, ttl_s=120)
    assert short.status_code == long.status_code == 202
    assert short.json()["state"] == "QUEUED"
    ends(api, keys, short.json()["command_id"], "EXPIRED", timeout=15)  # by the timer, the device still away
    agent = DeviceAgent(device, AgentConfig.from_settings(stack))
    agent.commands.register("mark", lambda params: ran.append(params["tag"]) or {"tag": params["tag"]})
    agent.start()
    try:
        assert agent.wait_connected(15)
        done = ends(api, keys, long.json()["command_id"], "SUCCEEDED", timeout=30)
        assert done["result"] == {"tag": "long"}
        assert "short" not in ran
        assert command(api, keys, short.json()["command_id"])["state"] == "EXPIRED"
    finally:
        agent.stop()


def test_idempotency_cancel_and_refusals(api, keys, device):  # noqa: F811
    key = uuid.uuid4().hex
    first = submit(api, keys, device.device_id, "reboot", key=key, ttl_s=600)
    again = submit(api, keys, device.device_id, "reboot", key=key, ttl_s=600)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["command_id"] == again.json()["command_id"]
    other = submit(api, keys, device.device_id, "reboot", {"delay_s": 9}, key=key, ttl_s=600)
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    command_id = first.json()["command_id"]
    ends(api, keys, command_id, "QUEUED")  # the device was never connected
    r = api.post(f"/v1/commands/{command_id}/cancel", headers=keys["operator"])
    assert (r.status_code, r.json()["state"]) == (200, "CANCELED"), r.text
    r = api.post(f"/v1/commands/{command_id}/cancel", headers=keys["operator"])
    assert (r.status_code, r.json()["code"]) == (409, "not_cancelable")
    r = submit(api, keys, device.device_id, "reboot", timeout_s=0.1)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_command")
    assert api.post(f"/v1/devices/{device.device_id}/command", json={"name": "reboot"},
                    headers=keys["viewer"]).status_code == 403
