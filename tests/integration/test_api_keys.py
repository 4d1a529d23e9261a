"""API keys and bearer tokens: shown once, stored hashed, roles, expiry, revocation, delegation."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.access.apikeys import ApiKeyStore
from fleet.access.auth import Role, hash_secret

pytestmark = pytest.mark.integration


def test_a_key_is_shown_once_and_stored_only_as_a_hash(api, keys, cassandra):
    r = api.post("/v1/keys", headers=keys.admin, json={"name": "ops-bot", "role": "operator"})
    assert r.status_code == 201
    created = r.json()
    secret = created["key"]
    assert secret.startswith(f"fk_{created['id']}_") and created["role"] == "operator" and created["groups"] is None
    row = cassandra.execute("SELECT * FROM api_keys WHERE key_id = %s", (created["id"],)).one()
    assert row.secret_hash == hash_secret(secret.split("_", 2)[2])
    assert secret not in str(row)
    assert "key" not in api.get(f"/v1/keys/{created['id']}", headers=keys.admin).json()
    assert all("key" not in k for k in api.get("/v1/keys", headers=keys.admin).json())
    me = api.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).json()
    assert (me["id"], me["role"], me["via"]) == (created["id"], "operator", "api_key")


@pytest.mark.parametrize("who", ["operator", "viewer"])
def test_only_admins_manage_keys(api, keys, who):
    headers = getattr(keys, who)
    for method, path in (("POST", "/v1/keys"), ("GET", "/v1/keys"), ("DELETE", "/v1/keys/0123456789ab")):
        r = api.request(method, path, headers=headers, json={"name": "x", "role": "viewer"} if method == "POST" else None)
        assert (r.status_code, r.json()) == (403, {"detail": f"this needs the admin role; the credential has {who}"})


def test_revoking_a_key_ends_it_and_its_tokens(api, keys):
    created = api.post("/v1/keys", headers=keys.admin, json={"name": "temp", "role": "viewer"}).json()
    headers = {"X-API-Key": created["key"]}
    token = api.post("/v1/tokens", headers=headers, json={}).json()["token"]
    assert api.get("/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = api.delete(f"/v1/keys/{created['id']}", headers=keys.admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    for h in (headers, {"Authorization": f"Bearer {token}"}):
        r = api.get("/v1/devices", headers=h)
        assert (r.status_code, r.json()) == (401, {"detail": "API key revoked"})
    r = api.delete(f"/v1/keys/{created['id']}", headers=keys.admin)
    assert (r.status_code, r.json()) == (409, {"detail": f"API key {created['id']!r} is already revoked"})


def test_an_expired_key_is_refused(api, cassandra):
    _, secret = ApiKeyStore(cassandra).create("old", Role.admin,
                                              expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    r = api.get("/v1/whoami", headers={"X-API-Key": secret})
    assert (r.status_code, r.json()) == (401, {"detail": "API key expired"})


def test_a_key_with_expiry_reports_it(api, keys):
    created = api.post("/v1/keys", headers=keys.admin, json={"name": "x", "role": "viewer", "expires_in_days": 7}).json()
    expires = dt.datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(days=6, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)


def test_tokens_carry_the_key_role_or_less(api, keys):
    r = api.post("/v1/tokens", headers=keys.operator, json={"role": "viewer", "ttl_s": 120})
    assert r.status_code == 201 and r.json()["role"] == "viewer" and r.json()["token"].startswith("ft_")
    bearer = {"Authorization": f"Bearer {r.json()['token']}"}
    assert api.get("/v1/whoami", headers=bearer).json()["via"] == "token"
    r = api.post("/v1/devices", headers=bearer, json={})
    assert (r.status_code, r.json()) == (403, {"detail": "this needs the operator role; the credential has viewer"})
    r = api.post("/v1/tokens", headers=keys.operator, json={"role": "admin"})
    assert (r.status_code, r.json()) == (403, {"detail": "the operator role cannot mint admin tokens"})
    r = api.post("/v1/tokens", headers=keys.operator, json={"ttl_s": 10 ** 7})
    assert (r.status_code, r.json()) == (400, {"detail": "ttl_s may be at most 86400"})


def test_a_tampered_token_is_refused(api, keys):
    token = api.post("/v1/tokens", headers=keys.viewer, json={}).json()["token"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    r = api.get("/v1/whoami", headers={"Authorization": f"Bearer {forged}"})
    assert (r.status_code, r.json()) == (401, {"detail": "invalid credential"})


def test_no_key_can_create_a_more_powerful_one(api, keys, uid):
    group = uid("g")
    scoped_admin = keys.make("admin", groups=[group])
    r = api.post("/v1/keys", headers=scoped_admin, json={"name": "wider", "role": "viewer"})
    assert (r.status_code, r.json()) == (403, {"detail": f"this key is scoped to groups [{group}]; "
                                                         "a key it creates must be scoped within them"})
    r = api.post("/v1/keys", headers=scoped_admin, json={"name": "same", "role": "operator", "groups": [group]})
    assert r.status_code == 201


@pytest.mark.parametrize("body, status, detail", [
    ({"name": "x", "role": "viewer", "groups": []}, 400, "groups must not be empty; omit it for an unscoped key"),
    ({"name": "x", "role": "viewer", "groups": ["a b"]}, 400,
     "group 'a b' is not well-formed: 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"),
])
def test_bad_key_requests(api, keys, body, status, detail):
    r = api.post("/v1/keys", headers=keys.admin, json=body)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_unknown_key_is_404(api, keys):
    r = api.get("/v1/keys/0123456789ab", headers=keys.admin)
    assert (r.status_code, r.json()) == (404, {"detail": "API key '0123456789ab' not found"})


def test_the_last_admin_key_cannot_be_revoked(api_settings, security_stack):
    """On a keyspace of its own, so other tests' admin keys do not count."""
    import uuid

    from fastapi.testclient import TestClient

    from api.main import create_app
    from fleet.infra.cassandra import open_session
    from fleet.infra.migrations import apply_migrations

    keyspace = f"t_sec_{uuid.uuid4().hex[:10]}"
    session = open_session(security_stack)
    try:
        apply_migrations(security_stack, session=session, keyspace=keyspace)
        session.set_keyspace(keyspace)
        key, secret = ApiKeyStore(session).create("only-admin", Role.admin)
        with TestClient(create_app(api_settings.replace(cassandra_keyspace=keyspace))) as client:
            r = client.delete(f"/v1/keys/{key.id}", headers={"X-API-Key": secret})
        assert (r.status_code, r.json()) == (409, {"detail": "cannot revoke the last active admin key; create another first"})
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        session.cluster.shutdown()
