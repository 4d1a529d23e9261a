"""The bridge's 'is this device active?' check: cached per device for a short TTL."""

import pytest

from fleet.registry import ActiveDeviceCheck


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def world():
    statuses = {"on": "active", "off": "disabled", "gone": "revoked"}
    calls = []

    def lookup(device_id):
        calls.append(device_id)
        return statuses.get(device_id)

    clock = Clock()
    return statuses, calls, clock, ActiveDeviceCheck(lookup=lookup, ttl_s=2.0, clock=clock)


@pytest.mark.parametrize("device_id, active", [("on", True), ("off", False), ("gone", False), ("unknown", False)])
def test_only_active_devices_pass(world, device_id, active):
    assert world[3].is_active(device_id) is active


def test_answers_are_cached_for_the_ttl_then_looked_up_again(world):
    statuses, calls, clock, check = world
    assert check.is_active("on") and check.is_active("on")
    assert calls == ["on"]
    statuses["on"] = "disabled"
    clock.t += 1.9
    assert check.is_active("on")          # still cached
    clock.t += 0.2
    assert not check.is_active("on")      # TTL over: the change is seen
    assert calls == ["on", "on"]


def test_invalidate_forgets_at_once(world):
    statuses, calls, clock, check = world
    assert check.is_active("on")
    statuses["on"] = "revoked"
    check.invalidate("on")
    assert not check.is_active("on")


def test_needs_a_source():
    with pytest.raises(ValueError, match="needs a Cassandra session or a lookup"):
        ActiveDeviceCheck()


def test_a_registry_outage_falls_back_to_the_last_answer_or_raises(world):
    statuses, calls, clock, check = world
    assert check.is_active("on")
    statuses.clear()
    check._lookup = lambda device_id: (_ for _ in ()).throw(ConnectionError("cassandra down"))
    clock.t += 10
    assert check.is_active("on")  # stale but known
    with pytest.raises(ConnectionError):
        check.is_active("never-seen")
