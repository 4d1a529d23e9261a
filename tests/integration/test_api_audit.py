"""Every mutating call leaves an audit record (who, what, when, outcome); admins read them."""

from __future__ import annotations

import datetime as dt

import pytest

pytestmark = pytest.mark.integration


def _records(api, keys, target=None):
    items = api.get("/v1/audit", headers=keys.admin, params={"limit": 1000}).json()["items"]
    return [i for i in items if target is None or i["target"] == target]


def test_mutations_are_recorded_with_actor_action_target_and_outcome(api, keys, uid):
    device = uid("aud")
    me = api.get("/v1/whoami", headers=keys.operator).json()
    api.post("/v1/devices", headers=keys.operator, json={"device_id": device}).raise_for_status()
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"metadata": {"k": "v"}}).raise_for_status()
    api.get(f"/v1/devices/{device}", headers=keys.operator).raise_for_status()  # reads are not audited
    api.delete(f"/v1/devices/{device}", headers=keys.viewer)                    # refused: still audited
    api.delete(f"/v1/devices/{device}", headers=keys.operator).raise_for_status()
    records = _records(api, keys, device)
    got = [(r["action"], r["outcome"], r["detail"]["http_status"]) for r in reversed(records)]
    assert got == [
        ("POST /v1/devices", "success", 201),
        ("PATCH /v1/devices/{device_id}", "success", 200),
        ("DELETE /v1/devices/{device_id}", "denied", 403),
        ("DELETE /v1/devices/{device_id}", "success", 200),
    ]
    ours = [r for r in records if r["outcome"] == "success"]
    assert all(r["actor"] == f"key:{me['id']} ({me['name']})" for r in ours)
    assert records[-1]["detail"] == {"http_status": 201}
    assert records[-2]["detail"] == {"fields": ["metadata"], "http_status": 200}
    ts = dt.datetime.fromisoformat(records[0]["ts"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - ts) < dt.timedelta(minutes=1)


def test_anonymous_attempts_are_recorded(api, keys, uid):
    device = uid("anon")
    assert api.delete(f"/v1/devices/{device}").status_code == 401
    [record] = _records(api, keys, device)
    assert (record["actor"], record["outcome"]) == ("anonymous", "denied")


@pytest.mark.parametrize("who", ["operator", "viewer"])
def test_only_admins_read_the_audit_log(api, keys, who):
    r = api.get("/v1/audit", headers=getattr(keys, who))
    assert (r.status_code, r.json()) == (403, {"detail": f"this needs the admin role; the credential has {who}"})


def test_a_scoped_admin_cannot_read_the_audit_log(api, keys, uid):
    r = api.get("/v1/audit", headers=keys.make("admin", groups=[uid("g")]))
    assert (r.status_code, r.json()) == (403, {"detail": "this needs an admin key that is not scoped to groups"})


@pytest.mark.parametrize("params, detail", [
    ({"day": "yesterday"}, "day 'yesterday' is not a date like 2024-05-31"),
    ({"day": "2024-02-30"}, "day '2024-02-30' is not a date like 2024-05-31"),
    ({"page_token": "nope"}, "'page_token' is not a token this API issued"),
])
def test_bad_audit_queries_are_400(api, keys, params, detail):
    r = api.get("/v1/audit", headers=keys.admin, params=params)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


def test_audit_pages(api, keys, uid):
    for _ in range(3):
        api.post("/v1/devices", headers=keys.operator, json={"device_id": uid("page")}).raise_for_status()
    first = api.get("/v1/audit", headers=keys.admin, params={"limit": 2}).json()
    second = api.get("/v1/audit", headers=keys.admin, params={"limit": 2, "page_token": first["next_page_token"]}).json()
    assert len(first["items"]) == 2 and second["items"]
    assert first["items"][-1]["ts"] >= second["items"][0]["ts"]
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}
