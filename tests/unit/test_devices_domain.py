import pytest

from fleet.identity.devices import (
    CertAction,
    Device,
    DeviceFilter,
    DeviceStatus,
    RegistryError,
    check_groups,
    check_metadata,
    decode_cursor,
    encode_cursor,
    metadata_filters,
    status_change,
)

A, D, R = DeviceStatus.active, DeviceStatus.disabled, DeviceStatus.revoked


@pytest.mark.parametrize("old, new, action", [
    (A, A, CertAction.none), (A, D, CertAction.hold), (A, R, CertAction.revoke),
    (D, A, CertAction.release), (D, D, CertAction.none), (D, R, CertAction.revoke), (R, R, CertAction.none),
])
def test_status_changes_and_what_they_do_to_certificates(old, new, action):
    assert status_change(old, new) is action


@pytest.mark.parametrize("new", [A, D])
def test_a_revoked_device_stays_revoked(new):
    with pytest.raises(RegistryError, match="a revoked device cannot change status") as exc:
        status_change(R, new)
    assert exc.value.code == "conflict"


def dev(**kw) -> Device:
    return Device(kw.pop("device_id", "d1"), **kw)


@pytest.mark.parametrize("flt, device, matches", [
    (DeviceFilter(), dev(), True),
    (DeviceFilter(status=D), dev(status=A), False),
    (DeviceFilter(group="g"), dev(groups=frozenset({"g", "h"})), True),
    (DeviceFilter(group="x"), dev(groups=frozenset({"g"})), False),
    (DeviceFilter(device_type="t"), dev(device_type="t"), True),
    (DeviceFilter(metadata={"site": "a"}), dev(metadata={"site": "a", "x": "y"}), True),
    (DeviceFilter(metadata={"site": "a"}), dev(metadata={"site": "b"}), False),
    (DeviceFilter(visible_groups=frozenset({"g"})), dev(groups=frozenset({"g"})), True),
    (DeviceFilter(visible_groups=frozenset({"g"})), dev(), False),
])
def test_filters(flt, device, matches):
    assert flt.matches(device) is matches


def test_cursor_round_trip():
    assert decode_cursor(encode_cursor("dev-42")) == "dev-42"
    assert decode_cursor(None) is None and decode_cursor("") is None


@pytest.mark.parametrize("cursor", ["!!", "eyJ9", encode_cursor("a/b"), "bm90IGpzb24"])
def test_foreign_cursors_are_refused(cursor):
    with pytest.raises(RegistryError, match="invalid cursor"):
        decode_cursor(cursor)


def test_metadata_filters_come_from_prefixed_query_parameters():
    assert metadata_filters({"metadata.site": "a", "group": "g", "metadata.fw": "1"}) == {"site": "a", "fw": "1"}
    with pytest.raises(RegistryError, match="metadata key 'a b' is not well-formed"):
        metadata_filters({"metadata.a b": "x"})


@pytest.mark.parametrize("groups, message", [
    (["ok", "bad group"], "group 'bad group' is not well-formed"),
    ([f"g{i}" for i in range(33)], "at most 32 groups"),
])
def test_bad_groups(groups, message):
    with pytest.raises(RegistryError, match=message):
        check_groups(groups)


@pytest.mark.parametrize("metadata, message", [
    ({"k": 1}, "metadata value of 'k' must be a string"),
    ({"k": "x" * 1025}, "at most 1024 characters"),
    ({"": "x"}, "metadata key '' is not well-formed"),
])
def test_bad_metadata(metadata, message):
    with pytest.raises(RegistryError, match=message):
        check_metadata(metadata)
