import datetime as dt

import pytest

from fleet.access.auth import KEY_KIND, TOKEN_KIND, Principal, Role, hash_secret, is_expired, new_secret, parse_secret


def test_a_new_key_parses_back_to_its_id_and_hash():
    s = new_secret(KEY_KIND)
    parsed = parse_secret(s.secret)
    assert (parsed.kind, parsed.id, parsed.secret_hash) == (KEY_KIND, s.id, s.secret_hash)
    assert s.secret.startswith(f"fk_{s.id}_") and s.secret_hash not in s.secret


def test_tokens_have_their_own_kind():
    assert parse_secret(new_secret(TOKEN_KIND).secret).kind == TOKEN_KIND


def test_secrets_are_unique_and_hashes_deterministic():
    a, b = new_secret(), new_secret()
    assert a.secret != b.secret and a.id != b.id
    assert hash_secret("x") == hash_secret("x") != hash_secret("y")


@pytest.mark.parametrize("credential", [
    "", "junk", "fk_", "fk__", "xx_0123456789ab_" + "a" * 43, "fk_0123456789AB_" + "a" * 43,
    "fk_0123456789ab_" + "a" * 42, "fk_0123456789ab_" + "a" * 44, "fk_0123456789ab_" + "a" * 42 + "!",
])
def test_malformed_credentials_are_not_ours(credential):
    assert parse_secret(credential) is None


@pytest.mark.parametrize("have, need, allowed", [
    (Role.admin, Role.admin, True), (Role.admin, Role.operator, True), (Role.admin, Role.viewer, True),
    (Role.operator, Role.admin, False), (Role.operator, Role.operator, True), (Role.operator, Role.viewer, True),
    (Role.viewer, Role.admin, False), (Role.viewer, Role.operator, False), (Role.viewer, Role.viewer, True),
])
def test_roles_nest(have, need, allowed):
    assert have.allows(need) is allowed


@pytest.mark.parametrize("groups, device_groups, sees", [
    (None, [], True), (None, ["a"], True), (frozenset({"a"}), ["a", "b"], True),
    (frozenset({"a"}), ["b"], False), (frozenset({"a"}), [], False),
])
def test_group_scope(groups, device_groups, sees):
    assert Principal("k", "n", Role.viewer, groups).sees_groups(device_groups) is sees


def test_expiry_handles_naive_cassandra_timestamps():
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert is_expired(None, now) is False
    assert is_expired(dt.datetime(2024, 12, 31), now) is True  # naive = UTC
    assert is_expired(dt.datetime(2025, 1, 2, tzinfo=dt.UTC), now) is False
