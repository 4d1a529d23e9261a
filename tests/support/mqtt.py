"""Raw MQTT clients with chosen certificates, for tests of what the broker allows."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt


def device_credentials(enrollment, device_id: str, directory: Path) -> tuple[Path, Path]:
    """Key made 'on the device', device registered and its CSR signed: (cert path, key path)."""
    identity = enrollment.enroll(device_id, directory / device_id)
    return identity.cert_path, identity.key_path


@dataclass
class MqttTestClient:
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    reason_code: object = None
    messages: list = field(default_factory=list)
    suback: list = field(default_factory=list)
    puback: dict = field(default_factory=dict)

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list:
        """Subscribe and wait for the SUBACK: a fixed sleep races the broker on a busy machine,
        and a response published before the subscription is in force is simply missed."""
        before = len(self.suback)
        self.client.subscribe(topic, qos=qos)
        if not _wait(lambda: len(self.suback) > before, timeout):
            raise TimeoutError(f"no SUBACK for {topic} in {timeout} s")
        return self.suback[before:]

    def wait_puback(self, mid_or_info, timeout: float = 5.0):
        """The PUBACK's reason code for that publish, once on_publish has recorded it.

        paho's ``wait_for_publish`` can return before the ``on_publish`` callback filled
        ``puback``, so wait for the entry itself rather than sleeping after it."""
        mid = getattr(mid_or_info, "mid", mid_or_info)
        if not _wait(lambda: mid in self.puback, timeout):
            raise TimeoutError(f"no PUBACK for mid {mid} in {timeout} s")
        return self.puback[mid]

    def wait_messages(self, count: int = 1, timeout: float = 10.0) -> list:
        """The messages received so far, once there are ``count`` of them (or the timeout)."""
        _wait(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)

    def wait_topic(self, topic: str, timeout: float = 10.0) -> list:
        """The messages received so far, once one on ``topic`` is among them; TimeoutError otherwise."""
        if not _wait(lambda: any(t == topic for t, _ in self.messages), timeout):
            raise TimeoutError(f"nothing on {topic} in {timeout} s")
        return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def connect(host: str, port: int, ca: Path, cert: Path | None, key: Path | None,
            client_id: str | None = None, timeout: float = 5.0) -> MqttTestClient:
    """Connect and wait; raises ConnectionError if the broker (or TLS) refuses."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None, keyfile=str(key) if key else None,
              cert_reqs=ssl.CERT_REQUIRED)
    tc = MqttTestClient(c)

    def on_connect(client, userdata, flags, reason_code, properties):
        tc.reason_code = reason_code
        tc.connected.set()

    c.on_connect = on_connect
    c.on_message = lambda client, userdata, msg: tc.messages.append((msg.topic, msg.payload))
    c.on_subscribe = lambda client, userdata, mid, codes, props: tc.suback.extend(codes)
    c.on_publish = lambda client, userdata, mid, rc, props: tc.puback.__setitem__(mid, rc)
    try:
        c.connect(host, port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        raise ConnectionError(f"refused at connect: {exc}") from exc
    c.loop_start()
    if not tc.connected.wait(timeout) or tc.reason_code is None or tc.reason_code.is_failure:
        c.loop_stop()
        raise ConnectionError(f"refused: {tc.reason_code}")
    return tc
