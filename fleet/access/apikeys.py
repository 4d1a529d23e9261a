"""API keys and bearer tokens in Cassandra (tables in schemas/cql/003_security.cql).

Only hashes are stored. ``authenticate`` turns a presented credential into a Principal or
says why not, without ever logging or returning the secret.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.access.auth import KEY_KIND, TOKEN_KIND, Principal, Role, hashes_match, is_expired, new_secret, parse_secret
from fleet.infra.cql_values import as_utc

if TYPE_CHECKING:  # the driver ships no type hints: Any to mypy, a name for the reader
    from cassandra.cluster import Session


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: Role
    groups: frozenset[str] | None
    created_at: dt.datetime
    created_by: str | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class AuthFailure(Exception):
    """Why a credential was refused; ``str(exc)`` is safe to show the caller."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ApiKeyStore:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._get_key = session.prepare(
            "SELECT key_id, name, role, groups, secret_hash, created_at, created_by, expires_at, revoked_at "
            "FROM api_keys WHERE key_id = ?")
        self._put_key = session.prepare(
            "INSERT INTO api_keys (key_id, name, role, groups, secret_hash, created_at, created_by, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self._get_token = session.prepare(
            "SELECT token_id, key_id, role, groups, secret_hash, expires_at FROM api_tokens WHERE token_id = ?")
        self._put_token = session.prepare(
            "INSERT INTO api_tokens (token_id, key_id, role, groups, secret_hash, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?) USING TTL ?")

    # -- keys --------------------------------------------------------------------------------
    def create(self, name: str, role: Role, groups: frozenset[str] | None = None,
               expires_at: dt.datetime | None = None, created_by: str | None = None) -> tuple[ApiKey, str]:
        """(key, the full secret): the secret exists only in this return value."""
        secret = new_secret(KEY_KIND)
        now = _now()
        self.session.execute(self._put_key, (secret.id, name, role.value, set(groups) if groups else None,
                                             secret.secret_hash, now, created_by, expires_at))
        key = ApiKey(secret.id, name, role, frozenset(groups) if groups else None, now, created_by,
                     expires_at, None)
        return key, secret.secret

    def get(self, key_id: str) -> ApiKey | None:
        row = self.session.execute(self._get_key, (key_id,)).one()
        return self._key(row) if row else None

    def list(self) -> list[ApiKey]:
        rows = self.session.execute(
            "SELECT key_id, name, role, groups, created_at, created_by, expires_at, revoked_at FROM api_keys")
        return sorted((self._key(r) for r in rows), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        result = self.session.execute("UPDATE api_keys SET revoked_at = %s WHERE key_id = %s IF EXISTS",
                                      (_now(), key_id))
        return bool(result.was_applied)

    def count_active_admins(self) -> int:
        """Usable admin keys that are not scoped to groups (the ones that can run everything)."""
        return sum(1 for k in self.list() if k.role is Role.admin and k.groups is None and k.revoked_at is None
                   and not is_expired(k.expires_at))

    @staticmethod
    def _key(row: Any) -> ApiKey:
        return ApiKey(row.key_id, row.name, Role(row.role), frozenset(row.groups) if row.groups else None,
                      as_utc(row.created_at), row.created_by, as_utc(row.expires_at), as_utc(row.revoked_at))

    # -- tokens ------------------------------------------------------------------------------
    def mint_token(self, principal: Principal, ttl_s: int, role: Role | None = None) -> tuple[str, dt.datetime]:
        """A bearer token for ``principal`` (optionally with a lower role); (token, expires_at)."""
        role = role or principal.role
        if not principal.role.allows(role):
            raise AuthFailure(f"the {principal.role.value} role cannot mint {role.value} tokens")
        secret = new_secret(TOKEN_KIND)
        expires = _now() + dt.timedelta(seconds=ttl_s)
        self.session.execute(self._put_token, (secret.id, principal.id, role.value,
                                               set(principal.groups) if principal.groups else None,
                                               secret.secret_hash, expires, int(ttl_s)))
        return secret.secret, expires

    # -- authentication ----------------------------------------------------------------------
    def authenticate(self, credential: str) -> Principal:
        parsed = parse_secret(credential)
        if parsed is None:
            raise AuthFailure("invalid credential")
        if parsed.kind == KEY_KIND:
            row = self.session.execute(self._get_key, (parsed.id,)).one()
            if row is None or not hashes_match(row.secret_hash, parsed.secret_hash):
                raise AuthFailure("invalid credential")
            key = self._key(row)
            self._check_usable(key)
            return Principal(key.id, key.name, key.role, key.groups, via="api_key")
        row = self.session.execute(self._get_token, (parsed.id,)).one()
        if row is None or not hashes_match(row.secret_hash, parsed.secret_hash):
            raise AuthFailure("invalid credential")
        if is_expired(row.expires_at):
            raise AuthFailure("token expired")
        owner = self.get(row.key_id)
        if owner is None:
            raise AuthFailure("invalid credential")
        self._check_usable(owner)  # revoking a key also ends the tokens minted from it
        return Principal(owner.id, owner.name, Role(row.role), frozenset(row.groups) if row.groups else None,
                         via="token")

    @staticmethod
    def _check_usable(key: ApiKey) -> None:
        if key.revoked_at is not None:
            raise AuthFailure("API key revoked")
        if is_expired(key.expires_at):
            raise AuthFailure("API key expired")
