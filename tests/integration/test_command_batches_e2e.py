"""Bulk commands end to end on the real stack: POST /v1/command-batches --> the API's fan-out -->
Kafka command-requests --> the commands job --> downlink --> bridge --> Mosquitto --> real device
agents over mTLS, their results back up, and the batch's progress counted from the member rows
the job writes to Cassandra.

- a bulk command to 200 online devices (plus two ids that do not exist) completes: 200 SUCCEEDED,
  2 skipped, every member listed, each member an ordinary command with its batch id;
- by a registry group, with one device offline and a short TTL: the online ones SUCCEED, the
  offline one EXPIRES, and the batch is done with those counts;
- cancelling a bulk command to offline devices: every member ends CANCELED (each an ordinary
  command canceled by the caller), the batch reads canceled and done; cancelling again is 200
  with the same batch, a viewer may not cancel, an unknown batch is 404;
- a target with neither ids nor a filter is a 400, nothing created.

Needs 007_command_batch_cancel.cql applied for the cancellation.
"""

from __future__ import annotations

import uuid

import pytest

from device.agent import AgentConfig, DeviceAgent
from fleet.mqtt.loop import MqttLoop
from tests.integration.test_commands_e2e import api, commands_job  # noqa: F401 - fixtures
from tests.integration.test_shadow_api import keys, shadow_job, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def agents(stack):
    """Start agents on one shared MQTT loop (200 devices, one thread); all stopped at the end."""
    loop = MqttLoop(name="bulk-agents").start()
    started: list[DeviceAgent] = []

    def start(identities):
        for identity in identities:
            agent = DeviceAgent(identity, AgentConfig.from_settings(stack), loop, persist_seq=False)
            agent.commands.register("ping", lambda params: {"pong": params.get("n")})
            started.append(agent.start())
        assert all(a.wait_connected(60) for a in started[-len(identities):])
        return started[-len(identities):]

    yield start
    for agent in started:
        agent.stop(timeout=2)
    loop.stop()


def batch(api, keys, body):  # noqa: F811
    return api.post("/v1/command-batches", json=body, headers=keys["operator"])


def finished(api, keys, batch_id, timeout=90.0):  # noqa: F811
    return wait_for(f"batch {batch_id} done", lambda: (
        (b := api.get(f"/v1/command-batches/{batch_id}", headers=keys["viewer"]).json()).get("done") is True, b),
        timeout=timeout)


def test_a_bulk_command_to_200_devices_completes_with_the_right_counts(api, keys, enrollment, agents,  # noqa: F811
                                                                       tmp_path):
    run = uuid.uuid4().hex[:8]
    ids = [f"bulk-{run}-{i:03d}" for i in range(200)]
    agents([enrollment.enroll(i, tmp_path / i) for i in ids])
    r = batch(api, keys, {"name": "ping", "params": {"n": 7}, "timeout_s": 30, "ttl_s": 300,
                          "target": {"device_ids": [*ids, f"bulk-{run}-missing-1", f"bulk-{run}-missing-2"]}})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    assert r.headers["location"] == f"/v1/command-batches/{batch_id}"
    done = finished(api, keys, batch_id)
    assert (done["state"], done["targeted"], done["submitted"], done["skipped"]) == ("submitted", 200, 200, 2)
    assert sorted(done["skipped_sample"]) == [f"bulk-{run}-missing-1", f"bulk-{run}-missing-2"]
    assert (done["counts"]["SUCCEEDED"], done["final"], done["pending"]) == (200, 200, 0)
    assert sum(done["counts"].values()) == 200
    # Every member, page by page, and each one an ordinary command carrying the batch id.
    members, token = [], None
    while True:
        page = api.get(f"/v1/command-batches/{batch_id}/commands", headers=keys["viewer"],
                       params={"limit": 64, **({"page_token": token} if token else {})}).json()
        members += page["items"]
        if not (token := page["next_page_token"]):
            break
    assert sorted(m["device_id"] for m in members) == ids
    assert {m["state"] for m in members} == {"SUCCEEDED"}
    one = api.get(f"/v1/commands/{members[0]['command_id']}", headers=keys["viewer"]).json()
    assert (one["batch_id"], one["state"], one["result"]) == (batch_id, "SUCCEEDED", {"pong": 7})


def test_a_bulk_command_by_group_counts_an_offline_device_as_expired(api, keys, enrollment, agents,  # noqa: F811
                                                                     tmp_path):
    from devtools.enrollment import RegistryEnrollment

    group = f"bulk-{uuid.uuid4().hex[:8]}"
    grouped = RegistryEnrollment(enrollment.onboarding, device_type="test", groups=["test", group])
    online = [grouped.enroll(f"{group}-on-{i}", tmp_path / f"on-{i}") for i in range(2)]
    grouped.enroll(f"{group}-off", tmp_path / "off")  # never connects
    agents(online)
    r = batch(api, keys, {"name": "ping", "params": {}, "timeout_s": 30, "ttl_s": 4, "target": {"group": group}})
    assert r.status_code == 202, r.text
    done = finished(api, keys, r.json()["batch_id"])
    assert done["target"] == {"group": group}
    assert (done["targeted"], done["counts"]["SUCCEEDED"], done["counts"]["EXPIRED"]) == (3, 2, 1)
    expired = api.get(f"/v1/command-batches/{done['batch_id']}/commands", headers=keys["viewer"],
                      params={"state": "EXPIRED"}).json()["items"]
    assert [m["device_id"] for m in expired] == [f"{group}-off"]


def test_cancelling_a_bulk_command_to_offline_devices_cancels_every_member(api, keys, enrollment,  # noqa: F811
                                                                          tmp_path):
    run = uuid.uuid4().hex[:8]
    ids = [f"bulk-cancel-{run}-{i}" for i in range(5)]
    for i in ids:
        enrollment.enroll(i, tmp_path / i)  # never connected: each command waits QUEUED
    r = batch(api, keys, {"name": "ping", "params": {}, "timeout_s": 30, "ttl_s": 600, "target": {"device_ids": ids}})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    wait_for(f"batch {batch_id} queued", lambda: (
        (b := api.get(f"/v1/command-batches/{batch_id}", headers=keys["viewer"]).json()).get("state") == "submitted"
        and b["counts"]["QUEUED"] == 5, b))
    assert api.post(f"/v1/command-batches/{batch_id}/cancel", headers=keys["viewer"]).status_code == 403

    r = api.post(f"/v1/command-batches/{batch_id}/cancel", headers=keys["operator"])
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["batch_id"], first["state"], first["canceled_by"]) == (batch_id, "canceled", "shadow-operator")
    assert first["canceled_at"] >= first["created_at"]
    done = finished(api, keys, batch_id, timeout=60)
    assert (done["state"], done["submitted"], done["counts"]["CANCELED"], done["final"], done["pending"]) == (
        "canceled", 5, 5, 5, 0)
    assert (done["canceled_at"], done["canceled_by"]) == (first["canceled_at"], first["canceled_by"])
    members = api.get(f"/v1/command-batches/{batch_id}/commands", headers=keys["viewer"]).json()["items"]
    assert sorted(m["device_id"] for m in members) == ids and {m["state"] for m in members} == {"CANCELED"}
    one = api.get(f"/v1/commands/{members[0]['command_id']}", headers=keys["viewer"]).json()
    assert (one["batch_id"], one["state"]) == (batch_id, "CANCELED")
    assert one["history"][-1]["reason"] == "canceled by shadow-operator"

    again = api.post(f"/v1/command-batches/{batch_id}/cancel", headers=keys["operator"])
    assert again.status_code == 200, again.text
    assert (again.json()["state"], again.json()["canceled_at"], again.json()["canceled_by"]) == (
        "canceled", first["canceled_at"], first["canceled_by"])
    assert again.json()["counts"]["CANCELED"] == 5
    assert api.post("/v1/command-batches/nope/cancel", headers=keys["operator"]).status_code == 404


@pytest.mark.parametrize("target", [{}, {"device_ids": []}, {"device_ids": ["a"], "group": "g"}])
def test_a_target_that_selects_nothing_well_defined_is_a_400(api, keys, target):  # noqa: F811
    r = batch(api, keys, {"name": "ping", "target": target})
    assert r.status_code == 400 and r.json()["code"] == "invalid_target", r.text
    assert api.get("/v1/command-batches/nope", headers=keys["viewer"]).status_code == 404
