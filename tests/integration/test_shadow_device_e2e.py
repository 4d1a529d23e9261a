"""A real device agent and the shadow, end to end: API PATCH --> Kafka --> shadow job --> downlink
--> bridge --> Mosquitto --> the agent over mTLS, and its report back the same way up.

- desired changes made while the device is offline reach it when it reconnects (it ends on the
  last one, the history holds every one), without the device asking;
- a change made while it is online reaches it and comes back as reported, within seconds;
- a stale delta (an older version re-published) changes nothing on the device.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent
from tests.integration.test_shadow_api import api, keys, patch, shadow_job, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def device(enrollment, tmp_path):
    return enrollment.enroll(f"shadow-e2e-{uuid.uuid4().hex[:10]}", tmp_path)


def shadow(http, creds, device_id):
    r = http.get(f"/v1/devices/{device_id}/shadow", headers=creds["viewer"])
    return r.json() if r.status_code == 200 else {"status": r.status_code}


def converged(http, creds, device_id, want: dict):
    def check():
        doc = shadow(http, creds, device_id)
        state = doc.get("state", {})
        ok = all(state.get("reported", {}).get(k) == v for k, v in want.items()) and not state.get("delta")
        return ok, doc
    return check


def test_desired_changes_made_offline_reach_the_device_on_reconnect(api, keys, device, stack):  # noqa: F811
    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    assert agent.wait_connected(15)
    agent.stop()

    # Three changes while it is away; the device must end on the last.
    version = None
    for i, mode in enumerate(["eco", "comfort", "boost"]):
        status, doc, _ = patch(api, keys, device.device_id, {"mode": mode, "step": i})
        assert status == 200, doc
        version = doc["version"]

    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(15)
        doc = wait_for("the device's report of the last desired state",
                       converged(api, keys, device.device_id, {"mode": "boost", "step": 2}), timeout=30)
        assert doc["version"] > version
        assert agent.shadow.reported("")["mode"] == "boost"
        assert agent.shadow.version("") >= version

        history = api.get(f"/v1/devices/{device.device_id}/shadow/history", headers=keys["viewer"],
                          params={"limit": 100}).json()["items"]
        operator = [h for h in history if h["source_kind"] == "operator"]
        assert [h["desired"]["mode"] for h in reversed(operator)][-3:] == ["eco", "comfort", "boost"]
        assert any(h["source_kind"] == "device" and h["reported"].get("mode") == "boost" for h in history)
    finally:
        agent.stop()


def test_a_change_made_while_online_reaches_the_device_and_comes_back_reported(api, keys, device, stack):  # noqa: F811
    agent = DeviceAgent(device, AgentConfig.from_settings(stack)).start()
    try:
        assert agent.wait_connected(15)
        wait_for("the agent online in the job", lambda: (
            ((c := api.get(f"/v1/devices/{device.device_id}", headers=keys["viewer"]).json()["connectivity"]) or {})
            .get("connected") is True, c), timeout=30)
        t0 = time.monotonic()
        status, doc, _ = patch(api, keys, device.device_id, {"fan": "high"})
        assert status == 200, doc
        wait_for("the report of the new desired value", converged(api, keys, device.device_id, {"fan": "high"}),
                 timeout=20, interval=0.1)
        assert time.monotonic() - t0 < 20

        # A stale delta (version 1, an older value) re-published by a service client changes nothing.
        from fleet.identity.ca import pki_from_settings
        from tests.support.mqtt import connect

        held = agent.shadow.version("")
        pki = pki_from_settings(stack)
        svc_cert, svc_key = pki.service_identity(stack.bridge_client_id)
        service = connect(stack.mqtt_host, stack.mqtt_service_port, pki.ca_chain_path, svc_cert, svc_key)
        try:
            info = service.client.publish(f"devices/{device.device_id}/shadow/delta", json.dumps(
                {"version": 1, "state": {"fan": "off"}, "metadata": {}, "timestamp": 0}), qos=1)
            service.wait_puback(info)
        finally:
            service.stop()
        agent.wait_downlink_idle(5)
        time.sleep(0.5)
        assert agent.shadow.reported("")["fan"] == "high" and agent.shadow.version("") == held
    finally:
        agent.stop()
