"""What Mosquitto lets a device do, checked against the real broker and the real bridge.

Conversation under test: a device connects with a certificate from the platform CA, its CN is
its MQTT username, and the ACL lets it touch only devices/<CN>/#. Anything else - a foreign CA,
no certificate, another device's topics - is refused by the broker, so nothing reaches Kafka.
"""

from __future__ import annotations

import json
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.contract.topics import Kafka
from fleet.identity.pki import LocalPKI
from tests.support.kafka import end_offsets, read_json
from tests.support.mqtt import connect, device_credentials

pytestmark = pytest.mark.integration


def telemetry(seq: int) -> bytes:
    return json.dumps({"ts": int(time.time() * 1000), "seq": seq, "metrics": {"t": 21.5}}).encode()


@pytest.fixture
def pki(stack):
    return LocalPKI(stack.pki_dir)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def foreign_ca_credentials(device_id: str, directory):
    """A self-made CA and a device certificate it signed: same CN, wrong issuer."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Evil CA")])
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + __import__("datetime").timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "foreign.crt", directory / "foreign.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_device_of_the_platform_ca_connects_and_its_telemetry_reaches_kafka(stack, pki, enrollment, tmp_path):
    device = new_id("sec-ok")
    cert, key = device_credentials(enrollment, device, tmp_path)
    start = end_offsets(stack, stack.topic(Kafka.TELEMETRY))
    client = connect(stack.mqtt_host, stack.mqtt_device_port, pki.ca_chain_path, cert, key, client_id=device)
    try:
        sent = client.client.publish(f"devices/{device}/telemetry", telemetry(1), qos=1)
        assert not client.wait_puback(sent).is_failure
    finally:
        client.stop()
    got = read_json(stack, stack.topic(Kafka.TELEMETRY), start, keep=lambda r: r["device_id"] == device,
                    until=lambda rs: len(rs) >= 1)
    assert [r["payload"]["seq"] for r in got] == [1]


def test_a_certificate_from_another_ca_is_refused(stack, pki, tmp_path):
    cert, key = foreign_ca_credentials(new_id("sec-foreign"), tmp_path)
    with pytest.raises(ConnectionError):
        connect(stack.mqtt_host, stack.mqtt_device_port, pki.ca_chain_path, cert, key)


def test_a_client_without_a_certificate_is_refused(stack, pki):
    with pytest.raises(ConnectionError):
        connect(stack.mqtt_host, stack.mqtt_device_port, pki.ca_chain_path, None, None)


def test_publishing_on_another_devices_topic_is_denied_and_nothing_reaches_kafka(stack, pki, enrollment, tmp_path):
    intruder, victim = new_id("sec-intruder"), new_id("sec-victim")
    cert, key = device_credentials(enrollment, intruder, tmp_path)
    start = end_offsets(stack, stack.topic(Kafka.TELEMETRY))
    client = connect(stack.mqtt_host, stack.mqtt_device_port, pki.ca_chain_path, cert, key, client_id=intruder)
    try:
        denied = client.client.publish(f"devices/{victim}/telemetry", telemetry(1), qos=1)
        # Control: the intruder's own topic works, so the silence about the victim means something.
        own = client.client.publish(f"devices/{intruder}/telemetry", telemetry(1), qos=1)
        assert client.wait_puback(denied) == mqtt.ReasonCode(mqtt.PacketTypes.PUBACK, "Not authorized")
        assert not client.wait_puback(own).is_failure
    finally:
        client.stop()
    got = read_json(stack, stack.topic(Kafka.TELEMETRY), start,
                    keep=lambda r: r["device_id"] in (intruder, victim),
                    until=lambda rs: any(r["device_id"] == intruder for r in rs))
    assert [r["device_id"] for r in got] == [intruder]


def test_subscribing_to_another_devices_commands_receives_nothing(stack, pki, enrollment, tmp_path):
    spy, victim = new_id("sec-spy"), new_id("sec-victim")
    cert, key = device_credentials(enrollment, spy, tmp_path)
    client = connect(stack.mqtt_host, stack.mqtt_device_port, pki.ca_chain_path, cert, key, client_id=spy)
    svc_cert, svc_key = pki.service_identity(stack.bridge_client_id)
    service = connect(stack.mqtt_host, stack.mqtt_service_port, pki.ca_chain_path, svc_cert, svc_key)
    try:
        client.subscribe(f"devices/{victim}/commands")
        client.subscribe(f"devices/{spy}/commands")
        # The victim's command first, then a control the spy may read, on one connection each
        # way: MQTT keeps their order, so once the control is in, the victim's would be too.
        forbidden = service.client.publish(f"devices/{victim}/commands", b'{"name":"reboot"}', qos=1)
        control = service.client.publish(f"devices/{spy}/commands", b'{"name":"ping"}', qos=1)
        assert not service.wait_puback(forbidden).is_failure and not service.wait_puback(control).is_failure
        received = client.wait_topic(f"devices/{spy}/commands")
    finally:
        client.stop()
        service.stop()
    # Mosquitto grants the SUBACK but its ACL check at delivery withholds the victim's messages.
    assert [t for t, _ in received] == [f"devices/{spy}/commands"]
