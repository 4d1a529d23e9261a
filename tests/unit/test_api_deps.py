"""Credentials and role guards of api/deps.py, with an in-memory key store (no Cassandra)."""

import datetime as dt

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from api.deps import (
    Admin,
    CurrentPrincipal,
    Operator,
    UnscopedAdmin,
    Viewer,
    ensure_device_visible,
    ensure_groups_allowed,
    get_api_keys,
)
from fleet.access.apikeys import ApiKey, ApiKeyStore, AuthFailure
from fleet.access.auth import Principal, Role, is_expired, new_secret, parse_secret

NOW = dt.datetime.now(dt.UTC)


class FakeKeys:
    """ApiKeyStore.authenticate's rules over a dict, for keys only."""

    def __init__(self):
        self.rows = {}

    def add(self, role, groups=None, expires_at=None, revoked=False):
        s = new_secret()
        self.rows[s.id] = (s.secret_hash, ApiKey(s.id, f"{role.value}-key", role, groups, NOW, None, expires_at,
                                                 NOW if revoked else None))
        return s.secret

    def authenticate(self, credential):
        parsed = parse_secret(credential)
        row = self.rows.get(parsed.id) if parsed else None
        if row is None or row[0] != parsed.secret_hash:
            raise AuthFailure("invalid credential")
        key = row[1]
        ApiKeyStore._check_usable(key)
        return Principal(key.id, key.name, key.role, key.groups)


@pytest.fixture(scope="module")
def world():
    app = FastAPI()
    keys = FakeKeys()
    app.dependency_overrides[get_api_keys] = lambda: keys
    router = APIRouter()

    @router.get("/me")
    def me(p: CurrentPrincipal):
        return {"id": p.id}

    @router.get("/viewer")
    def viewer(p: Viewer):
        return {"ok": True}

    @router.get("/operator")
    def operator(p: Operator):
        return {"ok": True}

    @router.get("/admin")
    def admin(p: Admin):
        return {"ok": True}

    @router.get("/platform")
    def platform(p: UnscopedAdmin):
        return {"ok": True}

    app.include_router(router)
    return TestClient(app), keys


def test_no_credential_is_401_with_a_challenge(world):
    client, _ = world
    r = client.get("/viewer")
    assert r.status_code == 401
    assert r.json() == {"detail": "missing credential: send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'"}
    assert r.headers["www-authenticate"] == 'Bearer realm="fleet"'


@pytest.mark.parametrize("headers_of, detail", [
    (lambda k: {"X-API-Key": "not-a-key"}, "invalid credential"),
    (lambda k: {"Authorization": "Bearer fk_0123456789ab_" + "a" * 43}, "invalid credential"),
    (lambda k: {"X-API-Key": k.add(Role.admin)[:-1] + "x"}, "invalid credential"),
    (lambda k: {"X-API-Key": k.add(Role.admin, expires_at=NOW - dt.timedelta(seconds=1))}, "API key expired"),
    (lambda k: {"X-API-Key": k.add(Role.admin, revoked=True)}, "API key revoked"),
])
def test_bad_credentials_are_401(world, headers_of, detail):
    client, keys = world
    r = client.get("/me", headers=headers_of(keys))
    assert r.status_code == 401 and r.json() == {"detail": detail}
    assert "invalid_token" in r.headers["www-authenticate"]


def test_bearer_and_x_api_key_both_work(world):
    client, keys = world
    secret = keys.add(Role.viewer)
    assert client.get("/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert client.get("/me", headers={"X-API-Key": secret}).status_code == 200


@pytest.mark.parametrize("role, path, status, detail", [
    (Role.viewer, "/viewer", 200, None),
    (Role.viewer, "/operator", 403, "this needs the operator role; the credential has viewer"),
    (Role.viewer, "/admin", 403, "this needs the admin role; the credential has viewer"),
    (Role.operator, "/operator", 200, None),
    (Role.operator, "/viewer", 200, None),
    (Role.operator, "/admin", 403, "this needs the admin role; the credential has operator"),
    (Role.admin, "/admin", 200, None),
    (Role.admin, "/viewer", 200, None),
])
def test_roles_nest_admin_operator_viewer(world, role, path, status, detail):
    client, keys = world
    r = client.get(path, headers={"X-API-Key": keys.add(role)})
    assert r.status_code == status
    if detail:
        assert r.json() == {"detail": detail}


def test_platform_wide_routes_need_an_unscoped_admin(world):
    client, keys = world
    r = client.get("/platform", headers={"X-API-Key": keys.add(Role.admin, groups=frozenset({"g"}))})
    assert r.status_code == 403 and r.json() == {"detail": "this needs an admin key that is not scoped to groups"}
    assert client.get("/platform", headers={"X-API-Key": keys.add(Role.admin)}).status_code == 200


SCOPED = Principal("k", "scoped", Role.operator, frozenset({"a", "b"}))


def test_a_scoped_key_sees_a_device_outside_its_groups_as_missing():
    ensure_device_visible(SCOPED, ["b", "z"], "d1")
    ensure_device_visible(Principal("k", "all", Role.viewer, None), [], "d1")
    with pytest.raises(Exception) as exc:
        ensure_device_visible(SCOPED, ["z"], "d1")
    assert (exc.value.status_code, exc.value.detail) == (404, "device 'd1' not found")


@pytest.mark.parametrize("groups, detail", [
    (["a", "z"], "this key is scoped to groups [a, b]; it cannot use groups [z]"),
    ([], "this key is scoped to groups [a, b]; the device must be in one of them"),
])
def test_a_scoped_key_cannot_place_devices_outside_its_groups(groups, detail):
    with pytest.raises(Exception) as exc:
        ensure_groups_allowed(SCOPED, groups)
    assert (exc.value.status_code, exc.value.detail) == (403, detail)
    ensure_groups_allowed(SCOPED, ["a"])


def test_expiry_helper_is_used_by_the_store():
    assert is_expired(NOW - dt.timedelta(seconds=1))
