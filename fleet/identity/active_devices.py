"""The bridge's "may this device's messages enter the pipeline?" check, against the registry.

The broker already refuses a disabled, revoked or deleted device within milliseconds (CRL reload
and session takeover, fleet.identity.cutoff); this is defence in depth, on the bridge's hot path. Two
sources, so that its cost does not grow with the size of the fleet:

* ``BlockedDevices``: the ids of devices that are registered but not active, read whole from the
  status index (``devices_by_status``) every few seconds. A status change reaches the bridge
  within that interval; the cost is one query per non-active status and grows with the number of
  blocked devices, not with the fleet.
* ``ActiveDeviceCheck``'s per-device cache: whether the registry lists a device at all, looked up
  the first time a device is seen and trusted for ``ttl_s`` (refreshed off the caller's thread
  with ``background``). With a blocked set this only has to catch deletions, so it can be long;
  without one it is the status check itself and must be short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleet.identity.devices import DeviceStatus

log = logging.getLogger(__name__)

BLOCKED_STATUSES = tuple(s.value for s in DeviceStatus if s is not DeviceStatus.active)


class BlockedDevices:
    """The registered devices that are not active, as of the last ``refresh()``."""

    def __init__(self, session=None, *, list_blocked: Callable[[], set[str]] | None = None):
        if list_blocked is None:
            if session is None:
                raise ValueError("BlockedDevices needs a Cassandra session or a list function")
            statement = session.prepare("SELECT device_id FROM devices_by_status WHERE status = ?")

            def list_blocked() -> set[str]:
                # One partition per status; the driver pages through a large one.
                return {row.device_id for status in BLOCKED_STATUSES for row in session.execute(statement, (status,))}

        self._list = list_blocked
        self.ids: frozenset[str] = frozenset()

    def __contains__(self, device_id: str) -> bool:
        return device_id in self.ids

    def refresh(self) -> frozenset[str]:
        """Re-read the set; returns the ids that left it (re-enabled, or deleted)."""
        fresh = frozenset(self._list())
        left, self.ids = self.ids - fresh, fresh
        return left


class ActiveDeviceCheck:
    """``is_active(device_id)``: may this device's messages enter the pipeline? Thread-safe.

    Unknown devices count as not active. Answers are cached per device for ``ttl_s`` seconds. With
    ``blocked`` (a ``BlockedDevices`` that ``refresh_blocked()`` keeps current), a blocked device
    is refused at once and the per-device answer only says whether the registry lists it.

    With ``background`` (a function that runs a task elsewhere, e.g. an executor's ``submit``),
    an expired answer is served once more while a refresh runs off the caller's thread: the
    bridge's MQTT loop then blocks on the registry only for a device it has never seen, instead
    of once per device and TTL.
    """

    def __init__(self, session=None, ttl_s: float = 2.0, *, lookup: Callable[[str], str | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 200_000,
                 background: Callable[[Callable[[], None]], object] | None = None,
                 blocked: BlockedDevices | None = None):
        if lookup is None:
            if session is None:
                raise ValueError("ActiveDeviceCheck needs a Cassandra session or a lookup function")
            statement = session.prepare("SELECT status FROM devices WHERE device_id = ?")

            def lookup(device_id: str) -> str | None:
                row = session.execute(statement, (device_id,)).one()
                return row.status if row else None

        self._lookup = lookup
        self.ttl_s = ttl_s
        self._clock = clock
        self._max = max_entries
        self._cache: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()
        self._background = background
        self._refreshing: set[str] = set()
        self._blocked = blocked

    def is_active(self, device_id: str) -> bool:
        """Raises what the lookup raises (e.g. Cassandra unavailable) only without a previous answer."""
        if self._blocked is not None and device_id in self._blocked:
            return False
        now = self._clock()
        hit = self._cache.get(device_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        if hit is not None and self._background is not None:
            with self._lock:
                start = device_id not in self._refreshing
                self._refreshing.add(device_id)
            if start:
                self._background(lambda: self._refresh(device_id))
            return hit[0]
        try:
            return self._fetch(device_id, now)
        except Exception:
            if hit is None:
                raise
            # The registry is briefly unreachable: the last answer beats stopping the pipeline.
            return hit[0]

    def refresh_blocked(self) -> None:
        """Re-read the blocked set; a device that left it is looked up afresh (it may have been
        re-enabled, or deleted)."""
        if self._blocked is None:
            return
        for device_id in self._blocked.refresh():
            self.invalidate(device_id)

    def _fetch(self, device_id: str, now: float) -> bool:
        active = self._lookup(device_id) == DeviceStatus.active.value
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache.clear()  # crude bound; a miss only costs one read
            self._cache[device_id] = (active, now + self.ttl_s)
        return active

    def _refresh(self, device_id: str) -> None:
        try:
            self._fetch(device_id, self._clock())
        except Exception:  # noqa: BLE001 - unreachable registry: keep serving the last answer
            log.warning("registry lookup failed; keeping the last answer", extra={"device_id": device_id})
        finally:
            with self._lock:
                self._refreshing.discard(device_id)

    def invalidate(self, device_id: str | None = None) -> None:
        with self._lock:
            if device_id is None:
                self._cache.clear()
            else:
                self._cache.pop(device_id, None)
