"""paho clients the platform's way: TLS, driven by an MqttLoop, reconnected with backoff.

Every paho client in production runs on an :class:`~fleet.mqtt.loop.MqttLoop` (no ``loop_start``
thread per client, no hand-built packets). Two shapes:

- a long-lived client (bridge, device agent, provisioning service): ``tls_client`` plus
  :class:`Reconnector` on a loop thread;
- one short exchange on the caller's thread: :func:`connect_once`, which connects with a
  clean session and disconnects at once. Connecting with a live client's id takes over its
  session and ends it (how fleet.identity.cutoff drops a revoked device).
"""

from __future__ import annotations

import logging
import random
import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleet.logs import log_fields
from fleet.mqtt.loop import MqttLoop, Timer

log = logging.getLogger(__name__)


def tls_client(client_id: str, ca: Path, cert: Path, key: Path, *,
               protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5, **kwargs: Any) -> mqtt.Client:
    """A paho client (callback API 2) that verifies the broker against ``ca`` and logs in with ``cert``."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
    c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
    return c


class Reconnector:
    """Connects ``client`` on ``loop`` and again after each loss, with jittered exponential backoff.

    The owner calls ``connected()`` from its on_connect (success) and ``lost()`` from its
    on_disconnect; everything runs on the loop thread except ``start`` and ``stop``.
    """

    def __init__(self, loop: MqttLoop, client: mqtt.Client, host: str, port: int, *, keepalive: int,
                 min_delay: float = 0.5, max_delay: float = 30.0, **connect_kwargs: Any):
        self.loop, self.client = loop, client
        self.host, self.port, self.keepalive = host, port, keepalive
        self.min_delay, self.max_delay = min_delay, max_delay
        self.connect_kwargs = connect_kwargs
        self.delay = min_delay
        self.stopping = False
        self._attempted = False
        self._timer: Timer | None = None

    def start(self) -> None:
        self.loop.call_soon(self._connect)

    def stop(self) -> None:
        """No more attempts (safe from any thread); the owner disconnects the client."""
        self.stopping = True

    def connected(self) -> None:
        self.delay = self.min_delay

    def lost(self) -> None:
        if self.stopping or self._timer is not None:
            return
        delay = self.delay * random.uniform(0.5, 1.5)
        self.delay = min(self.delay * 2, self.max_delay)
        self._timer = self.loop.call_later(delay, self._connect)

    def _connect(self) -> None:
        self._timer = None
        if self.stopping:
            return
        try:
            if not self._attempted:
                self._attempted = True
                self.client.connect(self.host, self.port, keepalive=self.keepalive, **self.connect_kwargs)
            else:
                self.client.reconnect()
        except (OSError, ssl.SSLError) as exc:  # TCP or TLS refused: paho reports no disconnect
            log.warning("MQTT connect failed", extra=log_fields(host=self.host, port=self.port, error=str(exc)))
            self.lost()


def connect_once(host: str, port: int, ca_file: Path, cert: Path, key: Path, client_id: str, *,
                 timeout: float = 2.0, keepalive: int = 10) -> bool:
    """True when TLS and an MQTT 3.1.1 clean-session CONNECT succeed with this certificate.

    Then disconnects at once (a DISCONNECT, so no will message is sent for the id). The clean
    session also discards the session of a client that was connected with ``client_id``. Waits
    at most ``timeout`` for the TCP connection, the TLS handshake and the CONNACK each; any
    refusal (TLS alert, closed socket, CONNACK with an error) or timeout is False.
    """
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311,
                         clean_session=True)
    client.tls_set_context(ctx)
    client.connect_timeout = timeout
    loop = MqttLoop(name=f"connect-once-{client_id}", misc_interval=timeout)
    accepted: list[bool] = []

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        accepted.append(not reason_code.is_failure)
        if reason_code.is_failure:
            loop.stop()
        else:
            c.disconnect()  # written at the end of this loop iteration; on_disconnect then stops

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: loop.stop()
    loop.attach(client)
    try:
        try:
            client.connect(host, port, keepalive=keepalive)  # TCP + TLS handshake, blocking
        except (OSError, ssl.SSLError):
            return False
        loop.call_later(timeout, loop.stop)
        loop.run()  # on this thread, until the CONNACK has been answered, refused or timed out
        return bool(accepted and accepted[0])
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
        loop.close()
