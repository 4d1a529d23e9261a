"""The device registry in Cassandra (tables in schemas/cql/001_registry.cql): the source of truth
for who may talk to the platform. The bridge's "is this device active?" check is in
fleet.identity.active_devices.

``devices`` holds one row per device; ``devices_by_status`` and ``devices_by_group`` are kept in
step in the same logged batch, so a list by status or group reads one partition.
"""

from __future__ import annotations

import builtins
import datetime as dt

from cassandra.query import BatchStatement, BatchType

from fleet.identity.devices import Device, DeviceFilter, DeviceStatus, RegistryError
from fleet.infra.cql_values import as_utc

_COLUMNS = ("device_id, status, device_type, cert_fingerprint, cert_serial, metadata, groups, firmware_version, "
            "created_at, updated_at")
# Rows read per round trip while filling a filtered page; bounds the work of one list call.
_SCAN_CHUNK = 200
_MAX_SCANNED = 20000



def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _device(row) -> Device:
    return Device(
        device_id=row.device_id, status=DeviceStatus(row.status or "active"), device_type=row.device_type,
        metadata=dict(row.metadata or {}), groups=frozenset(row.groups or ()), cert_serial=row.cert_serial,
        cert_fingerprint=row.cert_fingerprint, firmware_version=row.firmware_version,
        created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
    )


class DeviceRegistry:
    def __init__(self, session):
        self.session = session
        self._get = session.prepare(f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?")
        self._insert = session.prepare(
            f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self._upsert = session.prepare(f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._delete = session.prepare("DELETE FROM devices WHERE device_id = ?")
        self._add_status = session.prepare("INSERT INTO devices_by_status (status, device_id) VALUES (?, ?)")
        self._del_status = session.prepare("DELETE FROM devices_by_status WHERE status = ? AND device_id = ?")
        self._add_group = session.prepare("INSERT INTO devices_by_group (group_name, device_id) VALUES (?, ?)")
        self._del_group = session.prepare("DELETE FROM devices_by_group WHERE group_name = ? AND device_id = ?")
        self._by_status = session.prepare(
            "SELECT device_id FROM devices_by_status WHERE status = ? AND device_id > ? LIMIT ?")
        self._by_group = session.prepare(
            "SELECT device_id FROM devices_by_group WHERE group_name = ? AND device_id > ? LIMIT ?")
        self._scan_first = session.prepare(f"SELECT {_COLUMNS} FROM devices LIMIT ?")
        self._scan_after = session.prepare(
            f"SELECT {_COLUMNS} FROM devices WHERE token(device_id) > token(?) LIMIT ?")

    def _values(self, d: Device) -> tuple:
        return (d.device_id, d.status.value, d.device_type, d.cert_fingerprint, d.cert_serial,
                dict(d.metadata) or None, set(d.groups) or None, d.firmware_version, d.created_at, d.updated_at)

    def get(self, device_id: str) -> Device | None:
        row = self.session.execute(self._get, (device_id,)).one()
        return _device(row) if row else None

    def get_many(self, device_ids: builtins.list[str]) -> dict[str, Device]:
        """The devices of ``device_ids`` that exist, read concurrently (one round trip's latency)."""
        futures = [(i, self.session.execute_async(self._get, (i,))) for i in device_ids]
        return {i: _device(row) for i, f in futures if (row := f.result().one()) is not None}

    def require(self, device_id: str) -> Device:
        device = self.get(device_id)
        if device is None:
            raise RegistryError("not_found", f"device {device_id!r} not found")
        return device

    def create(self, device: Device) -> Device:
        """Insert a new device (lightweight transaction: an existing id is a conflict)."""
        now = _now()
        device = device.with_changes(created_at=device.created_at or now, updated_at=now)
        if not self.session.execute(self._insert, self._values(device)).was_applied:
            raise RegistryError("conflict", f"device {device.device_id!r} already exists")
        self._write_indexes(None, device)
        return device

    def update(self, old: Device, new: Device) -> Device:
        new = new.with_changes(updated_at=_now())
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        batch.add(self._upsert, self._values(new))
        self._index_changes(batch, old, new)
        self.session.execute(batch)
        return new

    def delete(self, device: Device) -> None:
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        batch.add(self._delete, (device.device_id,))
        self._index_changes(batch, device, None)
        self.session.execute(batch)

    def _write_indexes(self, old: Device | None, new: Device) -> None:
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        self._index_changes(batch, old, new)
        self.session.execute(batch)

    def _index_changes(self, batch, old: Device | None, new: Device | None) -> None:
        old_status = old.status.value if old else None
        new_status = new.status.value if new else None
        subject = new or old
        assert subject is not None, "an index change needs the old or the new device"
        device_id = subject.device_id
        if old_status and old_status != new_status:
            batch.add(self._del_status, (old_status, device_id))
        if new_status and old_status != new_status:
            batch.add(self._add_status, (new_status, device_id))
        old_groups = old.groups if old else frozenset()
        new_groups = new.groups if new else frozenset()
        for g in old_groups - new_groups:
            batch.add(self._del_group, (g, device_id))
        for g in new_groups - old_groups:
            batch.add(self._add_group, (g, device_id))

    # -- listing -----------------------------------------------------------------------------
    def list(self, flt: DeviceFilter, limit: int, after: str | None = None) -> tuple[list[Device], str | None]:
        """Up to ``limit`` matching devices after ``after``; (page, last id if there may be more).

        A status or group filter reads its lookup partition in device-id order; otherwise the
        table is scanned in token order. Other filters apply to the rows read.
        """
        out: list[Device] = []
        scanned = 0
        cursor = after
        while len(out) < limit and scanned < _MAX_SCANNED:
            chunk = self._chunk(flt, cursor)
            if not chunk:
                return out, None
            scanned += len(chunk)
            for device_id, device in chunk:
                cursor = device_id
                if device is not None and flt.matches(device):
                    out.append(device)
                    if len(out) == limit:
                        return out, cursor
            if len(chunk) < _SCAN_CHUNK:
                return out, None
        return out, cursor

    # builtins.list: the method ``list`` above shadows the builtin in this class body.
    def _chunk(self, flt: DeviceFilter, after: str | None) -> builtins.list[tuple[str, Device | None]]:
        if flt.status is not None or flt.group is not None:
            if flt.group is not None:
                ids = self.session.execute(self._by_group, (flt.group, after or "", _SCAN_CHUNK))
            else:
                assert flt.status is not None  # the outer test: a status or a group
                ids = self.session.execute(self._by_status, (flt.status.value, after or "", _SCAN_CHUNK))
            ids = [r.device_id for r in ids]
            futures = [self.session.execute_async(self._get, (i,)) for i in ids]
            # A lookup row without its device (a half-applied delete) yields None: skipped, but
            # paging still advances past it.
            return [(device_id, _device(row) if (row := future.result().one()) else None)
                    for device_id, future in zip(ids, futures, strict=True)]
        if after is None:
            rows = self.session.execute(self._scan_first, (_SCAN_CHUNK,))
        else:
            rows = self.session.execute(self._scan_after, (after, _SCAN_CHUNK))
        return [(r.device_id, _device(r)) for r in rows]
