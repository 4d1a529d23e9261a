"""The shadow API end to end on the real stack: the API process (over HTTP) --> Kafka shadow-desired
--> the shadow job on Flink --> shadow-verdicts --> the API; documents, history and connectivity
read back from Cassandra where the job wrote them.

Needs the whole stack and the shadow job (submitted here if it is not running).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from device.agent import AgentConfig, DeviceAgent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shadow_job(stack):
    """The shadow job RUNNING on the stack's Flink cluster (submitted if it is not)."""
    from pathlib import Path

    from devtools.stack import flink

    if not any(job["name"] == "shadow" and job["state"] == "RUNNING" for job in flink.list_jobs(stack)):
        job_py = Path(__file__).resolve().parents[2] / "jobs" / "shadow" / "job.py"
        job_id = flink.submit_job(stack, job_py)
        flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    yield


@pytest.fixture(scope="module")
def api(stack, shadow_job):
    """The API process the launcher started: what an operator's client talks to."""
    with httpx.Client(base_url=f"http://{stack.api_host}:{stack.api_port}", timeout=30) as client:
        assert client.get("/health").status_code == 200
        yield client


@pytest.fixture(scope="module")
def keys(stack):
    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(stack)
    store = ApiKeyStore(sessions.get())
    made = {role: {"X-API-Key": store.create(f"shadow-{role}", Role(role), None)[1]} for role in ("operator", "viewer")}
    yield made
    sessions.shutdown()


@pytest.fixture
def device(enrollment, tmp_path):
    """A registered device (its identity, for the tests that connect it)."""
    return enrollment.enroll(f"shadow-{uuid.uuid4().hex[:10]}", tmp_path)


def wait_for(what, check, timeout=60.0, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not there after {timeout:.0f}s; last seen: {str(last)[:2000]}")


def patch(api, keys, device_id, desired, *, if_match=None, name=None, timeout_ok=False):
    """A PATCH; a 202 (the job slower than the bound, e.g. just after it started) is polled to its end."""
    headers = {**keys["operator"], **({"If-Match": if_match} if if_match is not None else {})}
    r = api.patch(f"/v1/devices/{device_id}/shadow", json={"desired": desired}, headers=headers,
                  params={"name": name} if name else {})
    if r.status_code != 202 or timeout_ok:
        return r.status_code, r.json(), r.headers.get("ETag")
    url = r.json()["status_url"]
    done = wait_for("the shadow request's verdict",
                    lambda: ((b := api.get(url, headers=keys["viewer"]).json())["state"] != "pending", b))
    return done["status"], done["document"] if done["status"] == 200 else done, None


def test_a_patch_answers_with_the_jobs_verdict_and_the_document_is_readable(api, keys, device):
    status, doc, etag = patch(api, keys, device.device_id, {"fan": "on", "limits": {"max": 30}})
    assert status == 200, doc
    assert (doc["version"], doc["state"]["desired"], doc["state"]["delta"]) == \
        (1, {"fan": "on", "limits": {"max": 30}}, {"fan": "on", "limits": {"max": 30}})
    assert etag in (None, '"1"')
    r = api.get(f"/v1/devices/{device.device_id}/shadow", params={"min_version": 1}, headers=keys["viewer"])
    assert r.status_code == 200 and r.headers["ETag"] == '"1"'
    assert r.json()["state"] == doc["state"]
    names = api.get(f"/v1/devices/{device.device_id}/shadows", headers=keys["viewer"]).json()["items"]
    assert [(n["name"], n["version"]) for n in names] == [("", 1)]


def test_two_concurrent_patches_on_one_version_exactly_one_wins(api, keys, device):
    assert patch(api, keys, device.device_id, {"mode": "idle"})[0] == 200
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda v: patch(api, keys, device.device_id, {"mode": v}, if_match='"1"'),
                                ["eco", "boost"]))
    assert sorted(a[0] for a in answers) == [200, 409], answers
    won = next(a[1] for a in answers if a[0] == 200)
    lost = next(a[1] for a in answers if a[0] == 409)
    assert won["version"] == 2 and lost["code"] == "version_conflict" and lost["version"] == 2
    r = api.get(f"/v1/devices/{device.device_id}/shadow", params={"min_version": 2}, headers=keys["viewer"])
    assert r.json()["state"]["desired"] == won["state"]["desired"]


def test_history_holds_every_version_newest_first_in_pages(api, keys, device):
    for i, value in enumerate(["a", "b", "c"], start=1):
        assert patch(api, keys, device.device_id, {"v": value}, if_match=str(i - 1))[0] == 200

    def read():
        r = api.get(f"/v1/devices/{device.device_id}/shadow/history", params={"limit": 2}, headers=keys["viewer"])
        items = r.json()["items"]  # the job writes history rows as it goes: wait for the newest one
        return len(items) == 2 and items[0]["version"] == 3, r.json()
    first = wait_for("the history up to version 3", read)
    second = api.get(f"/v1/devices/{device.device_id}/shadow/history", headers=keys["viewer"],
                     params={"limit": 2, "page_token": first["next_page_token"]}).json()
    items = first["items"] + second["items"]
    assert [i["version"] for i in items] == [3, 2, 1] and second["next_page_token"] is None
    assert [i["desired"]["v"] for i in items] == ["c", "b", "a"]
    assert {(i["source_kind"], i["actor"]) for i in items} == {("operator", "shadow-operator")}
    assert items[0]["patch"] == {"desired": {"v": "c"}}


def test_local_checks_roles_and_unknown_devices(api, keys, device):
    r = api.patch(f"/v1/devices/{device.device_id}/shadow", json={"desired": {"big": "x" * 9000}},
                  headers=keys["operator"])
    assert (r.status_code, r.json()["code"]) == (413, "state_too_large")
    r = api.patch(f"/v1/devices/{device.device_id}/shadow", json={"desired": {"a": 1}}, headers=keys["viewer"])
    assert r.status_code == 403
    r = api.patch("/v1/devices/no-such-device/shadow", json={"desired": {"a": 1}}, headers=keys["operator"])
    assert (r.status_code, r.json()) == (404, {"detail": "device 'no-such-device' not found"})
    r = api.get(f"/v1/devices/{device.device_id}/shadow", params={"name": "never"}, headers=keys["viewer"])
    assert r.status_code == 404
    assert api.get("/v1/shadow-requests/nope", headers=keys["viewer"]).status_code == 404


def test_connectivity_follows_the_devices_status(api, keys, device, stack):
    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(15)
        url = f"/v1/devices/{device.device_id}"
        online = wait_for("connected", lambda: (
            ((c := api.get(url, headers=keys["viewer"]).json()["connectivity"]) or {}).get("connected") is True, c))
        assert online["connected_since"] and online["last_seen"]

        def listed(connected):
            token, seen = None, []
            while True:  # a post-filter: pages may be short, follow them to the end
                page = api.get("/v1/devices", headers=keys["viewer"], params={
                    "connected": connected, "group": "test", "limit": 1000, **({"page_token": token} if token else {})
                }).json()
                seen += [d["device_id"] for d in page["items"]]
                token = page["next_page_token"]
                if not token:
                    return seen

        assert device.device_id in listed("true") and device.device_id not in listed("false")
    finally:
        agent.stop()
    offline = wait_for("disconnected", lambda: (
        (c := api.get(url, headers=keys["viewer"]).json()["connectivity"])["connected"] is False, c))
    assert offline["disconnect_reason"] == "shutdown"
