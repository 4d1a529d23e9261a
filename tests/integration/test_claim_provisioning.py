"""Zero-touch provisioning by claim, and certificate rotation over MQTT, on the real broker.

Conversation under test: an admin creates a template (allow-list or webhook) and a claim
certificate bound to it. A factory-fresh device connects to the provisioning listener with the
claim certificate, subscribes to provisioning/<claim>/<client>/response and publishes its serial
and a CSR (CN = prefix + serial) to .../request. The provisioning service answers with a device
certificate, and the device connects to the device listener with it. The claim certificate
itself can do nothing else: no telemetry, no other device's topics, no device listener.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import paho.mqtt.client as mqtt
import pytest

from fleet.identity.cutoff import mqtt_connects
from fleet.identity.onboarding import Onboarding
from fleet.identity.pki import LocalPKI
from fleet.identity.provisioner import ProvisioningService
from tests.support.identity import csr_pem, new_key, write_identity
from tests.support.mqtt import connect

pytestmark = pytest.mark.integration
NOT_AUTHORIZED = mqtt.ReasonCode(mqtt.PacketTypes.PUBACK, "Not authorized")


@pytest.fixture(scope="module")
def provisioning(api_settings, cassandra):
    """The provisioning service on the test keyspace, in its own share group."""
    settings = api_settings.replace(provisioning_share_group=f"t-{uuid.uuid4().hex[:8]}")
    service = ProvisioningService(settings, Onboarding(settings, cassandra, pki=LocalPKI(settings.pki_dir))).start()
    assert service.wait_ready(10), "the provisioning service did not subscribe"
    yield service
    service.stop()


@pytest.fixture
def claim(api, keys, uid, tmp_path):
    """Create a template and a claim (key made by the CA); returns (claim id, cert path, key path, prefix)."""
    def make(**template):
        name, prefix = uid("tpl"), f"{uid('p')}-"
        r = api.post("/v1/provisioning/templates", headers=keys.admin,
                     json={"name": name, "device_id_prefix": prefix, "groups": ["provisioned"], **template})
        assert r.status_code == 201, r.text
        r = api.post("/v1/provisioning/claims", headers=keys.admin, json={"template": name})
        assert r.status_code == 201, r.text
        body = r.json()
        cert, key = write_identity(tmp_path / "claim", body["claim_id"], body["certificate"], body["private_key"].encode())
        return body["claim_id"], cert, key, prefix
    return make


def claim_client(s, claim_id, cert, key):
    client_id = f"c-{uuid.uuid4().hex[:8]}"
    c = connect(s.mqtt_host, s.mqtt_provisioning_port, s.pki_dir / "ca-chain.crt", cert, key, client_id=client_id)
    return c, client_id


def provision(s, claim_id, cert, key, serial, device_id, *, device_key=None, timeout=10.0) -> dict:
    c, client_id = claim_client(s, claim_id, cert, key)
    try:
        base = f"provisioning/{claim_id}/{client_id}"
        c.subscribe(f"{base}/response")
        c.client.publish(f"{base}/request", json.dumps({"serial": serial, "csr": csr_pem(device_id, device_key)}),
                         qos=1).wait_for_publish(5)
        messages = c.wait_messages(1, timeout)
        assert messages, "no provisioning response"
        topic, payload = messages[0]
        assert topic == f"{base}/response"
        return json.loads(payload)
    finally:
        c.stop()


def test_an_allowed_serial_gets_a_device_certificate_that_works(api, keys, api_settings, provisioning, claim, tmp_path):
    claim_id, cert, key, prefix = claim(allowed_serials=["SN-1", "SN-2"], device_type="meter")
    device_id, device_key = f"{prefix}SN-1", new_key()
    answer = provision(api_settings, claim_id, cert, key, "SN-1", device_id, device_key=device_key)
    assert answer["status"] == "accepted" and answer["device_id"] == device_id
    device = api.get(f"/v1/devices/{device_id}", headers=keys.viewer).json()
    assert (device["status"], device["device_type"], device["groups"], device["cert_serial"]) == \
        ("active", "meter", ["provisioned"], answer["serial"])

    dev_cert, dev_key = write_identity(tmp_path / "dev", device_id, answer["certificate"], device_key)
    c = connect(api_settings.mqtt_host, api_settings.mqtt_device_port, api_settings.pki_dir / "ca-chain.crt",
                dev_cert, dev_key, client_id=device_id)
    try:
        info = c.client.publish(f"devices/{device_id}/telemetry", b'{"ts": 1, "seq": 1, "metrics": {}}', qos=1)
        assert not c.wait_puback(info).is_failure
    finally:
        c.stop()


def test_a_serial_not_on_the_allow_list_is_rejected(api, keys, api_settings, provisioning, claim):
    claim_id, cert, key, prefix = claim(allowed_serials=["SN-1"])
    answer = provision(api_settings, claim_id, cert, key, "SN-666", f"{prefix}SN-666")
    assert answer["status"] == "rejected"
    assert answer["reason"].startswith("serial 'SN-666' is not allowed by template")
    assert api.get(f"/v1/devices/{prefix}SN-666", headers=keys.viewer).status_code == 404


def test_a_csr_for_another_device_id_is_rejected(api_settings, provisioning, claim):
    claim_id, cert, key, prefix = claim(allowed_serials=["SN-1"])
    answer = provision(api_settings, claim_id, cert, key, "SN-1", "not-the-right-id")
    assert answer == {"status": "rejected", "reason": f"the CSR's common name 'not-the-right-id' does not match "
                                                      f"'{prefix}SN-1'"}


class Hook(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.seen.append(body)
        answer = {"allow": body["serial"].startswith("OK-"), "reason": "unknown serial", "groups": ["hooked"]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_a_pre_provisioning_webhook_decides(api, keys, api_settings, provisioning, claim, webhook):
    claim_id, cert, key, prefix = claim(webhook_url=webhook)
    yes = provision(api_settings, claim_id, cert, key, "OK-7", f"{prefix}OK-7")
    no = provision(api_settings, claim_id, cert, key, "BAD-7", f"{prefix}BAD-7")
    assert yes["status"] == "accepted"
    assert no == {"status": "rejected", "reason": "pre-provisioning webhook refused: unknown serial"}
    assert api.get(f"/v1/devices/{prefix}OK-7", headers=keys.viewer).json()["groups"] == ["hooked", "provisioned"]
    assert {"template", "claim_id", "serial", "device_id", "metadata"} <= set(Hook.seen[-1])


def test_a_claim_certificate_cannot_publish_telemetry_or_touch_others(api_settings, claim):
    claim_id, cert, key, _ = claim(allowed_serials=["SN-1"])
    c, client_id = claim_client(api_settings, claim_id, cert, key)
    try:
        denied = [c.client.publish(topic, b"{}", qos=1) for topic in (
            f"devices/{claim_id}/telemetry",                       # as if it were a device
            f"devices/{client_id}/telemetry",
            f"provisioning/other-claim/{client_id}/request",       # another claim's conversation
            f"provisioning/{claim_id}/someone-else/request",       # another device of the same batch
        )]
        allowed = c.client.publish(f"provisioning/{claim_id}/{client_id}/request", b"{}", qos=1)
        assert [c.wait_puback(i) for i in denied] == [NOT_AUTHORIZED] * 4
        assert not c.wait_puback(allowed).is_failure
    finally:
        c.stop()


def test_a_claim_certificate_is_refused_on_the_device_and_service_listeners(api_settings, claim):
    claim_id, cert, key, _ = claim(allowed_serials=["SN-1"])
    ca = api_settings.pki_dir / "ca-chain.crt"
    for port in (api_settings.mqtt_device_port, api_settings.mqtt_service_port):
        assert not mqtt_connects(api_settings.mqtt_host, port, ca, cert, key, claim_id)
    assert mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_provisioning_port, ca, cert, key, "c-probe")


def test_a_revoked_claim_is_cut_off(api, keys, api_settings, provisioning, claim):
    claim_id, cert, key, prefix = claim(allowed_serials=["SN-1"])
    provision(api_settings, claim_id, cert, key, "SN-1", f"{prefix}SN-1")  # the service now knows a client id
    c, client_id = claim_client(api_settings, claim_id, cert, key)
    gone = threading.Event()
    c.client.on_disconnect = lambda *a: gone.set()
    c.subscribe(f"provisioning/{claim_id}/{client_id}/response")
    c.client.publish(f"provisioning/{claim_id}/{client_id}/request", b"{}", qos=1).wait_for_publish(5)
    assert c.wait_messages(1), "the provisioning service did not answer"  # so it has seen this client id
    r = api.post(f"/v1/provisioning/claims/{claim_id}/revoke", headers=keys.admin)
    assert r.status_code == 200 and r.json()["claim"]["status"] == "revoked", r.text
    assert client_id in r.json()["cutoff"]["disconnected"]
    cut_off = gone.wait(5)
    c.client.loop_stop()
    assert cut_off, "the claim's connection was still open 5 s after the revocation"
    assert not mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_provisioning_port,
                             api_settings.pki_dir / "ca-chain.crt", cert, key, "c-again")
    # The device it provisioned keeps its own certificate.
    assert api.get(f"/v1/devices/{prefix}SN-1", headers=keys.viewer).json()["status"] == "active"


def test_a_device_rotates_its_certificate_over_mqtt(api, keys, api_settings, provisioning, uid, tmp_path):
    device, old_key = uid("mqttrot"), new_key()
    r = api.post("/v1/devices", headers=keys.operator, json={"device_id": device, "csr": csr_pem(device, old_key)})
    cert, key = write_identity(tmp_path, device, r.json()["certificate"]["pem"], old_key)
    c = connect(api_settings.mqtt_host, api_settings.mqtt_device_port, api_settings.pki_dir / "ca-chain.crt",
                cert, key, client_id=device)
    fresh = new_key()
    try:
        c.subscribe(f"devices/{device}/certificate/response")
        c.client.publish(f"devices/{device}/certificate/request", json.dumps({"csr": csr_pem(device, fresh)}),
                         qos=1).wait_for_publish(5)
        c.wait_messages(1)
    finally:
        c.stop()
    answer = json.loads(c.messages[0][1])
    assert answer["status"] == "accepted" and answer["grace_s"] == api_settings.cert_rotation_grace_s
    new_cert, new_key_path = write_identity(tmp_path / "new", device, answer["certificate"], fresh)
    assert mqtt_connects(api_settings.mqtt_host, api_settings.mqtt_device_port, api_settings.pki_dir / "ca-chain.crt",
                         new_cert, new_key_path, device)
    statuses = sorted(c["status"] for c in api.get(f"/v1/devices/{device}/certificates", headers=keys.viewer).json())
    assert statuses == ["active", "superseded"]


@pytest.mark.parametrize("body, status, detail", [
    ({"name": "t-open", "device_id_prefix": "x-"}, 400,
     "a template needs allowed_serials or webhook_url (or both); otherwise any holder of the claim certificate "
     "could make devices"),
    ({"name": "t-ftp", "webhook_url": "ftp://x"}, 400, "webhook_url must be an http:// or https:// URL"),
])
def test_unsafe_templates_are_400(api, keys, body, status, detail):
    r = api.post("/v1/provisioning/templates", headers=keys.admin, json=body)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_claims_and_templates_are_for_unscoped_admins(api, keys, uid):
    r = api.post("/v1/provisioning/claims", headers=keys.operator, json={"template": "x"})
    assert (r.status_code, r.json()) == (403, {"detail": "this needs the admin role; the credential has operator"})
    r = api.post("/v1/provisioning/claims", headers=keys.admin, json={"template": "no-such-template"})
    assert (r.status_code, r.json()) == (404, {"detail": "template 'no-such-template' not found"})
    r = api.get("/v1/provisioning/templates/no-such", headers=keys.admin)
    assert (r.status_code, r.json()) == (404, {"detail": "template 'no-such' not found"})
