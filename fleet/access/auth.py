"""API credentials and roles: pure logic, no storage and no web framework.

Two kinds of secret, both ``<kind>_<id>_<secret>``:

- API keys ``fk_<id>_<secret>``: long-lived, created by an admin (or ``fleet admin bootstrap``),
  shown once, stored as a SHA-256 hash; ``<id>`` is the lookup key and safe to log.
- Bearer tokens ``ft_<id>_<secret>``: short-lived, minted from an API key (``POST /v1/tokens``),
  carry the key's role and groups (or less).

The secret part is 256 random bits, so a plain SHA-256 is enough (no password stretching is
needed for a secret nobody chose); comparison is constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

KEY_KIND = "fk"
TOKEN_KIND = "ft"
_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


class Role(str, Enum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """admin > operator > viewer: a role allows everything a lower one may do."""
        return self.rank >= needed.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (or a token minted from one)."""

    id: str                        # key id, e.g. "3f9a0c1d2e4b" (safe to log)
    name: str                      # human label given at creation
    role: Role
    groups: frozenset[str] | None  # None = every device; else only devices in one of these groups
    via: str = "api_key"           # "api_key" | "token"

    def sees_groups(self, device_groups: Iterable[str] | None) -> bool:
        return self.groups is None or bool(self.groups & set(device_groups or ()))


@dataclass(frozen=True)
class NewSecret:
    id: str
    secret: str      # the full credential, shown to the caller exactly once
    secret_hash: str


@dataclass(frozen=True)
class ParsedSecret:
    kind: str
    id: str
    secret_hash: str


def new_secret(kind: str = KEY_KIND) -> NewSecret:
    key_id = secrets.token_hex(6)
    raw = secrets.token_urlsafe(32)
    return NewSecret(key_id, f"{kind}_{key_id}_{raw}", hash_secret(raw))


def hash_secret(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def parse_secret(credential: str) -> ParsedSecret | None:
    """Split a presented credential; None when it is not one of ours (never raises)."""
    parts = credential.strip().split("_", 2)
    if len(parts) != 3:
        return None
    kind, key_id, raw = parts
    if kind not in (KEY_KIND, TOKEN_KIND) or not _ID_RE.match(key_id) or not _SECRET_RE.match(raw):
        return None
    return ParsedSecret(kind, key_id, hash_secret(raw))


def hashes_match(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())


def is_expired(expires_at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    if expires_at is None:
        return False
    now = now or dt.datetime.now(dt.UTC)
    if expires_at.tzinfo is None:  # Cassandra returns naive UTC datetimes
        expires_at = expires_at.replace(tzinfo=dt.UTC)
    return expires_at <= now
