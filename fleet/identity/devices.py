"""Device registry rules: statuses, what a status change does to certificates, filters, paging.

Pure logic (no Cassandra, no FastAPI), so the API and the provisioning service share it and
tests check it with tables.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from fleet.contract.topics import is_valid_device_id
from fleet.infra.page_cursor import decode_after, encode_after

# Groups, device types and metadata keys appear in URLs and CQL partition keys: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE = 1024
MAX_GROUPS = 32


class DeviceStatus(str, Enum):
    active = "active"      # may connect; its messages are accepted
    disabled = "disabled"  # certificates on hold (reversible), connection dropped
    revoked = "revoked"    # certificates revoked for good; the id cannot come back


class CertAction(str, Enum):
    none = "none"
    hold = "hold"          # put current certificates on hold (CRL reason certificateHold)
    release = "release"    # lift the hold
    revoke = "revoke"      # revoke permanently


class RegistryError(ValueError):
    """A registry rule was broken; ``code`` maps to an HTTP status, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # "bad_request" | "not_found" | "conflict" | "forbidden"


@dataclass(frozen=True)
class Device:
    device_id: str
    status: DeviceStatus = DeviceStatus.active
    device_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    cert_serial: str | None = None
    cert_fingerprint: str | None = None
    firmware_version: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def with_changes(self, **changes) -> Device:
        return replace(self, **changes)


def new_device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:12]}"


def check_device_id(device_id: str) -> str:
    if not is_valid_device_id(device_id):
        raise RegistryError("bad_request", f"device id {device_id!r} is not well-formed: 1-64 letters, digits, "
                                           "'-' or '_', starting with a letter or digit")
    return device_id


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise RegistryError("bad_request", f"{kind} {value!r} is not well-formed: 1-64 letters, digits, "
                                           "'_', '.', ':' or '-', starting with a letter or digit")
    return value


def check_groups(groups) -> frozenset[str]:
    groups = frozenset(groups or ())
    if len(groups) > MAX_GROUPS:
        raise RegistryError("bad_request", f"at most {MAX_GROUPS} groups per device")
    for g in groups:
        check_name("group", g)
    return groups


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise RegistryError("bad_request", f"at most {MAX_METADATA_ENTRIES} metadata entries per device")
    for k, v in metadata.items():
        check_name("metadata key", k)
        if not isinstance(v, str) or len(v) > MAX_METADATA_VALUE:
            raise RegistryError("bad_request", f"metadata value of {k!r} must be a string of at most "
                                               f"{MAX_METADATA_VALUE} characters")
    return metadata


def status_change(old: DeviceStatus, new: DeviceStatus) -> CertAction:
    """What happens to the device's certificates when its status changes; RegistryError if not allowed."""
    if old == new:
        return CertAction.none
    if old is DeviceStatus.revoked:
        raise RegistryError("conflict", "a revoked device cannot change status; register a new device")
    if new is DeviceStatus.revoked:
        return CertAction.revoke
    if new is DeviceStatus.disabled:
        return CertAction.hold
    return CertAction.release  # disabled -> active


# -- listing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceFilter:
    status: DeviceStatus | None = None
    group: str | None = None
    device_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # A scoped API key sees only devices in one of these groups (None = all).
    visible_groups: frozenset[str] | None = None

    def matches(self, d: Device) -> bool:
        return ((self.status is None or d.status == self.status)
                and (self.group is None or self.group in d.groups)
                and (self.device_type is None or d.device_type == self.device_type)
                and all(d.metadata.get(k) == v for k, v in self.metadata.items())
                and (self.visible_groups is None or bool(self.visible_groups & d.groups)))


def metadata_filters(query: Mapping[str, str]) -> dict[str, str]:
    """``metadata.k=v`` query parameters as {k: v}; RegistryError for a malformed key."""
    out = {}
    for name, value in query.items():
        if name.startswith("metadata."):
            out[check_name("metadata key", name[len("metadata."):])] = value
    return out


def encode_cursor(last_device_id: str) -> str:
    return encode_after(last_device_id)


def decode_cursor(cursor: str | None) -> str | None:
    """The device id to continue after; RegistryError for anything we did not hand out."""
    if not cursor:
        return None
    try:
        after = decode_after(cursor)
    except ValueError:
        raise RegistryError("bad_request", "invalid cursor: pass back the next_cursor of the previous page") from None
    if not is_valid_device_id(after):
        raise RegistryError("bad_request", "invalid cursor: pass back the next_cursor of the previous page")
    return after
