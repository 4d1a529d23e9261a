"""The bridge's 'is this device active?' check: cached per device, plus the blocked set."""

import pytest

from fleet.identity.active_devices import BLOCKED_STATUSES, ActiveDeviceCheck, BlockedDevices


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


def test_in_background_mode_an_expired_answer_is_served_while_a_refresh_runs_elsewhere(world):
    statuses, calls, clock, _ = world
    tasks = []
    check = ActiveDeviceCheck(lookup=lambda d: (calls.append(d), statuses.get(d))[1], ttl_s=2.0, clock=clock,
                              background=tasks.append)
    assert check.is_active("on") and calls == ["on"]  # never seen: looked up on the spot
    statuses["on"] = "disabled"
    clock.t += 2.1
    assert check.is_active("on")           # expired: the last answer, a refresh queued
    assert check.is_active("on")           # one refresh per device at a time
    assert len(tasks) == 1 and calls == ["on"]
    tasks.pop()()                          # the background worker runs it
    assert calls == ["on", "on"]
    assert not check.is_active("on")       # the change is seen


def test_a_failed_background_refresh_keeps_the_last_answer_and_tries_again(world):
    statuses, calls, clock, _ = world
    tasks = []
    failing = {"on": False}

    def lookup(device_id):
        if failing["on"]:
            raise ConnectionError("cassandra down")
        return statuses.get(device_id)

    check = ActiveDeviceCheck(lookup=lookup, ttl_s=2.0, clock=clock, background=tasks.append)
    assert check.is_active("on")
    failing["on"] = True
    clock.t += 3
    assert check.is_active("on")
    tasks.pop()()                          # fails quietly
    assert check.is_active("on") and len(tasks) == 1  # still stale, so a new refresh is queued


@pytest.fixture
def gated(world):
    """The bridge's set-up: a long per-device TTL, status changes through the blocked set."""
    statuses, calls, clock, _ = world
    blocked = BlockedDevices(list_blocked=lambda: {d for d, s in statuses.items() if s != "active"})
    check = ActiveDeviceCheck(lookup=lambda d: (calls.append(d), statuses.get(d))[1], ttl_s=300.0, clock=clock,
                              blocked=blocked)
    check.refresh_blocked()
    return statuses, calls, clock, check


def test_blocked_devices_are_refused_without_a_lookup(gated):
    statuses, calls, clock, check = gated
    assert not check.is_active("off") and not check.is_active("gone")
    assert calls == []
    assert BLOCKED_STATUSES == ("disabled", "revoked")


def test_a_status_change_is_seen_at_the_next_blocked_refresh_not_at_the_ttl(gated):
    statuses, calls, clock, check = gated
    assert check.is_active("on") and calls == ["on"]
    statuses["on"] = "disabled"
    assert check.is_active("on")            # until the set is re-read
    check.refresh_blocked()
    assert not check.is_active("on")
    statuses["on"] = "active"               # re-enabled: it leaves the set, so it is looked up again
    check.refresh_blocked()
    assert check.is_active("on") and calls == ["on", "on"]
    clock.t += 299
    assert check.is_active("on") and calls == ["on", "on"]  # no per-device reads within the long TTL


def test_a_deleted_device_is_refused_once_its_long_ttl_is_over(gated):
    statuses, calls, clock, check = gated
    assert check.is_active("on")
    del statuses["on"]
    check.refresh_blocked()
    clock.t += 301
    assert not check.is_active("on")


def test_blocked_devices_need_a_source():
    with pytest.raises(ValueError, match="needs a Cassandra session or a list"):
        BlockedDevices()
