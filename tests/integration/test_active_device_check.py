"""The bridge's registry check on the real registry: only active devices pass, changes seen within the TTL."""

from __future__ import annotations

import pytest

from fleet.identity.active_devices import ActiveDeviceCheck, BlockedDevices

pytestmark = pytest.mark.integration


def test_active_check_follows_the_registry(api, keys, cassandra, uid):
    device = uid("chk")
    api.post("/v1/devices", headers=keys.operator, json={"device_id": device}).raise_for_status()
    now = [0.0]  # injected clock: the TTL expires when the test says so, not after a sleep
    check = ActiveDeviceCheck(cassandra, ttl_s=0.5, clock=lambda: now[0])
    assert check.is_active(device) and not check.is_active(uid("never-registered"))
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "disabled"}).raise_for_status()
    assert check.is_active(device)  # the cached answer stands until the TTL has passed
    now[0] += 0.6
    assert not check.is_active(device)
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "active"}).raise_for_status()
    now[0] += 0.6
    assert check.is_active(device)
    api.delete(f"/v1/devices/{device}", headers=keys.operator).raise_for_status()
    check.invalidate(device)
    assert not check.is_active(device)


def test_the_blocked_set_follows_the_status_index(api, keys, cassandra, uid):
    """The bridge's set-up: status changes come from devices_by_status, not per-device reads."""
    device = uid("blk")
    api.post("/v1/devices", headers=keys.operator, json={"device_id": device}).raise_for_status()
    reads = []
    check = ActiveDeviceCheck(cassandra, ttl_s=300, blocked=BlockedDevices(cassandra))
    lookup = check._lookup
    check._lookup = lambda d: (reads.append(d), lookup(d))[1]
    check.refresh_blocked()
    assert check.is_active(device)
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "disabled"}).raise_for_status()
    check.refresh_blocked()
    assert not check.is_active(device)
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "active"}).raise_for_status()
    check.refresh_blocked()
    assert check.is_active(device) and check.is_active(device)
    assert reads == [device, device]  # once at first sight, once after it left the blocked set
