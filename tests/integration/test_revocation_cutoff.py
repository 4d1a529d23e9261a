"""Disable / revoke / delete cut a connected device off the real broker within 5 seconds.

Conversation under test: a device registered through the API connects over mTLS. An operator
disables it: the API puts its certificate on hold in the CRL, makes Mosquitto reload and waits
until the new CRL is in force, then takes over the device's MQTT session from the service
listener. The device sees its connection closed, and its reconnect fails the TLS handshake.
Re-enabling lifts the hold and the same certificate connects again.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from fleet.identity.cutoff import mqtt_connects
from fleet.identity.onboarding import Onboarding
from fleet.identity.pki import LocalPKI
from tests.support.identity import csr_pem, new_key, write_identity
from tests.support.mqtt import connect

pytestmark = pytest.mark.integration
CUTOFF_LIMIT_S = 5.0


@pytest.fixture
def enrolled(api, keys, uid, tmp_path):
    """Register a device through the API with its own key; returns (device id, cert path, key path)."""
    def make(prefix="cut"):
        device, key = uid(prefix), new_key()
        r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": csr_pem(device, key)})
        r.raise_for_status()
        cert, key_path = write_identity(tmp_path, device, r.json()["certificate"]["pem"], key)
        return device, cert, key_path
    return make


def can_connect(s, cert, key, client_id) -> bool:
    return mqtt_connects(s.mqtt_host, s.mqtt_device_port, s.pki_dir / "ca-chain.crt", cert, key, client_id)


def connected(s, device, cert, key):
    client = connect(s.mqtt_host, s.mqtt_device_port, s.pki_dir / "ca-chain.crt", cert, key, client_id=device)
    gone: list[float] = []
    client.client.on_disconnect = lambda *args: gone.append(time.monotonic())
    return client, gone


def wait_for(gone: list[float], t0: float, limit: float = CUTOFF_LIMIT_S) -> float:
    while not gone and time.monotonic() - t0 < limit + 1:
        time.sleep(0.005)
    assert gone, f"the device was still connected {limit + 1:.0f}s after the change"
    return gone[0] - t0


@pytest.mark.parametrize("change", ["disable", "revoke", "delete"])
def test_the_device_is_cut_off_within_5_seconds(api, keys, api_settings, enrolled, change):
    device, cert, key = enrolled()
    client, gone = connected(api_settings, device, cert, key)
    try:
        t0 = time.monotonic()
        if change == "delete":
            r = api.delete(f"/v1/devices/{device}", headers=keys.operator)
        else:
            r = api.patch(f"/v1/devices/{device}", headers=keys.operator,
                          json={"status": "disabled" if change == "disable" else "revoked"})
        assert r.status_code == 200, r.text
        elapsed = wait_for(gone, t0)
    finally:
        client.client.loop_stop()
    cutoff = r.json()["cutoff"]
    print(f"\n{change}: connection dropped {elapsed * 1000:.0f} ms after the API call; "
          f"broker report {cutoff}")
    assert elapsed < CUTOFF_LIMIT_S and cutoff["error"] is None and cutoff["disconnected"] == [device]
    assert not can_connect(api_settings, cert, key, device)


def test_re_enabling_lets_the_same_certificate_back_in(api, keys, api_settings, enrolled):
    device, cert, key = enrolled("reenable")
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "disabled"}).raise_for_status()
    assert not can_connect(api_settings, cert, key, device)
    certs = api.get(f"/v1/devices/{device}/certificates", headers=keys.viewer).json()
    assert [c["status"] for c in certs] == ["on_hold"]
    r = api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "active"})
    assert r.status_code == 200 and r.json()["cutoff"]["error"] is None
    assert can_connect(api_settings, cert, key, device)
    assert [c["status"] for c in api.get(f"/v1/devices/{device}/certificates", headers=keys.viewer).json()] == ["active"]


def test_revoking_one_certificate_drops_it(api, keys, api_settings, enrolled):
    device, cert, key = enrolled("revone")
    serial = api.get(f"/v1/devices/{device}", headers=keys.viewer).json()["cert_serial"]
    r = api.post(f"/v1/devices/{device}/certificates/{serial}/revoke", headers=keys.operator)
    assert r.status_code == 200 and r.json()["certificate"]["status"] == "revoked"
    assert not can_connect(api_settings, cert, key, device)
    r = api.post(f"/v1/devices/{device}/certificates/{serial}/revoke", headers=keys.operator)
    assert (r.status_code, r.json()) == (409, {"detail": f"certificate {serial!r} is already revoked"})
    r = api.post(f"/v1/devices/{device}/certificates/123/revoke", headers=keys.operator)
    assert (r.status_code, r.json()) == (404, {"detail": f"certificate '123' of device {device!r} not found"})


def test_rotation_keeps_the_old_certificate_for_the_grace_period_only(api, keys, api_settings, cassandra, enrolled,
                                                                      tmp_path):
    device, old_cert, old_key = enrolled("rot")
    new_key_ = new_key()
    r = api.post(f"/v1/devices/{device}/certificates", headers=keys.operator,
                 json={"csr": csr_pem(device, new_key_), "grace_s": 60})
    assert r.status_code == 201, r.text
    body = r.json()
    [superseded] = body["superseded"]
    assert body["device"]["cert_serial"] == body["certificate"]["serial"] != superseded["serial"]
    new_cert, new_key_path = write_identity(tmp_path / "new", device, body["certificate"]["pem"], new_key_)
    assert can_connect(api_settings, old_cert, old_key, device)   # still inside the grace period
    assert can_connect(api_settings, new_cert, new_key_path, device)

    onboarding = Onboarding(api_settings, cassandra, pki=LocalPKI(api_settings.pki_dir))
    assert onboarding.run_due_revocations(now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)) >= 1
    assert not can_connect(api_settings, old_cert, old_key, device)
    assert can_connect(api_settings, new_cert, new_key_path, device)
    statuses = {c["serial"]: c["status"] for c in api.get(f"/v1/devices/{device}/certificates",
                                                         headers=keys.viewer).json()}
    assert statuses == {superseded["serial"]: "revoked", body["certificate"]["serial"]: "active"}


def test_rotation_of_a_disabled_device_is_refused(api, keys, enrolled):
    device, _, _ = enrolled("rotdis")
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "disabled"}).raise_for_status()
    r = api.post(f"/v1/devices/{device}/certificates", headers=keys.operator, json={"csr": csr_pem(device)})
    assert (r.status_code, r.json()) == (409, {"detail": f"device {device!r} is disabled; only an active device "
                                                         "can get a new certificate"})


def test_an_expired_certificate_cannot_connect(api_settings, uid, tmp_path):
    pki = LocalPKI(api_settings.pki_dir)
    device, key = uid("expired"), new_key()
    cert = pki._issue(key.public_key(), device, hours=-0.01)  # not_after a few seconds ago
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = write_identity(tmp_path, device, cert.public_bytes(serialization.Encoding.PEM), key)
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)
    assert not can_connect(api_settings, cert_path, key_path, device)


def test_a_device_cannot_take_over_another_devices_session(api_settings, enrolled):
    victim, v_cert, v_key = enrolled("victim")
    attacker, a_cert, a_key = enrolled("attacker")
    client, gone = connected(api_settings, victim, v_cert, v_key)
    try:
        # The broker replaces the attacker's requested client id with its CN: no takeover.
        assert mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_device_port, api_settings.pki_dir / "ca-chain.crt",
                             a_cert, a_key, client_id=victim)
        # A takeover drops the old session before the new one's CONNACK, so a round trip on the
        # victim's connection after it (SUBACK) would come after the disconnect, had there been one.
        client.subscribe(f"devices/{victim}/commands")
        assert gone == []
    finally:
        client.stop()


def test_a_device_certificate_cannot_log_in_where_services_or_claims_do(api_settings, enrolled):
    device, cert, key = enrolled("wrongdoor")
    ca = api_settings.pki_dir / "ca-chain.crt"
    assert not mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_service_port, ca, cert, key, device)
    assert not mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_provisioning_port, ca, cert, key, device)
    assert can_connect(api_settings, cert, key, device)


def test_sync_crl_restores_what_the_registry_says(api, keys, api_settings, cassandra, enrolled):
    """The registry is the source of truth: a CRL that lost an entry is repaired from it."""
    device, cert, key = enrolled("sync")
    serial = int(api.get(f"/v1/devices/{device}", headers=keys.viewer).json()["cert_serial"])
    api.patch(f"/v1/devices/{device}", headers=keys.operator, json={"status": "revoked"}).raise_for_status()
    pki = LocalPKI(api_settings.pki_dir)
    # Simulate a CA directory restored from an older backup: the revocation is missing.
    state = pki._state("issuing")
    del state["revoked"][str(serial)]
    with pki._locked():
        pki._save_state("issuing", state)
        pki._write_crl("issuing")
    Onboarding(api_settings, cassandra, pki=pki).broker.refresh()
    assert can_connect(api_settings, cert, key, device)
    changed = Onboarding(api_settings, cassandra, pki=pki).sync_crl()
    assert changed["revoked"] >= 1 and pki.revocation(serial) == "revoked"
    assert not can_connect(api_settings, cert, key, device)
