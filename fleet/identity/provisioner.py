"""The provisioning service: answers claim requests and device certificate rotations over MQTT.

Runs inside the API process (started by its lifespan when ``settings.provisioning_service``) as
one MQTT client on the service listener, with shared subscriptions so several API replicas split
the requests:

    provisioning/<claim id>/<client id>/request  ->  provisioning/<claim id>/<client id>/response
    devices/<id>/certificate/request             ->  devices/<id>/certificate/response

The client runs on its own MqttLoop thread; requests are handled on a small thread pool (a webhook
may take seconds), never on the loop thread, and answers go back to it with ``call_soon``.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from fleet.config import Settings
from fleet.identity.devices import RegistryError
from fleet.identity.onboarding import Onboarding
from fleet.identity.provisioning import (
    RESPONSE_SUFFIX,
    NotOurs,
    Rejected,
    parse_csr_request,
    parse_provisioning_topic,
    parse_rotation_topic,
    provisioning_topic,
)
from fleet.logs import log_fields
from fleet.mqtt.client import Reconnector, tls_client
from fleet.mqtt.loop import MqttLoop

log = logging.getLogger(__name__)


def rotation_response_topic(device_id: str) -> str:
    return f"devices/{device_id}/certificate/response"


class ProvisioningService:
    def __init__(self, settings: Settings, onboarding: Onboarding, workers: int = 2):
        self.settings = settings
        self.onboarding = onboarding
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provisioning")
        self._subscribed = threading.Event()
        group = settings.provisioning_share_group
        self.filters = [f"$share/{group}/provisioning/+/+/request", f"$share/{group}/devices/+/certificate/request"]
        cert, key = onboarding.pki.service_identity(settings.api_service_identity)
        self.loop = MqttLoop(name="provisioning-mqtt")
        self.client = tls_client(f"{settings.api_service_identity}-provisioning-{id(self):x}",
                                 onboarding.pki.ca_chain_path, cert, key)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.loop.attach(self.client)
        self._connection = Reconnector(self.loop, self.client, settings.mqtt_host, settings.mqtt_service_port,
                                       keepalive=30, min_delay=0.5, max_delay=30)
        self._disconnected = threading.Event()
        self._started = False

    def start(self) -> ProvisioningService:
        self._started = True
        self.loop.start()
        self._connection.start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        self._connection.stop()
        if self._started:
            self._disconnected.clear()
            self.loop.call_soon(self._disconnect)
            self._disconnected.wait(5)  # so the DISCONNECT is written before the loop ends
            self.loop.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.loop.close()

    def _disconnect(self) -> None:
        if self.client.socket() is None:
            self._disconnected.set()
        else:
            self.client.disconnect()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the provisioning service", extra=log_fields(reason=str(reason_code)))
            return  # paho then reports a disconnect, which schedules the retry
        self._connection.connected()
        client.subscribe([(f, 1) for f in self.filters])
        log.info("provisioning service subscribed", extra=log_fields(filters=self.filters))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._disconnected.set()
        self._connection.lost()

    def _on_message(self, client, userdata, msg) -> None:
        self._pool.submit(self.handle, msg.topic, bytes(msg.payload))

    def handle(self, topic: str, payload: bytes) -> tuple[str, dict] | None:
        """Answer one request (also called directly by tests); returns (response topic, body)."""
        try:
            answer = self._answer(topic, payload)
        except NotOurs:
            log.debug("request for a claim or device of another registry ignored", extra=log_fields(topic=topic))
            answer = None
        except Exception:  # a bug or an outage must not kill the worker; the device may retry
            log.exception("provisioning request failed", extra=log_fields(topic=topic))
            answer = self._retry_later(topic)
        if answer is not None:
            response_topic, body = answer
            self.loop.call_soon(self.client.publish, response_topic, json.dumps(body), 1)  # paho on its thread
        return answer

    @staticmethod
    def _retry_later(topic: str) -> tuple[str, dict] | None:
        body = {"status": "rejected", "reason": "the provisioning service failed; retry later", "retry": True}
        claim = parse_provisioning_topic(topic)
        if claim is not None:
            return provisioning_topic(*claim, RESPONSE_SUFFIX), body
        device_id = parse_rotation_topic(topic)
        return (rotation_response_topic(device_id), body) if device_id else None

    def _answer(self, topic: str, payload: bytes) -> tuple[str, dict] | None:
        claim = parse_provisioning_topic(topic)
        if claim is not None:
            claim_id, client_id = claim
            response = provisioning_topic(claim_id, client_id, RESPONSE_SUFFIX)
            try:
                issued = self.onboarding.provision(claim_id, client_id, payload)
            except Rejected as exc:
                log.info("provisioning rejected", extra=log_fields(claim_id=claim_id, reason=str(exc)))
                return response, {"status": "rejected", "reason": str(exc)}
            return response, {"status": "accepted", "device_id": issued.device.device_id,
                              "certificate": issued.certificate.pem, "serial": issued.certificate.serial,
                              "not_after": issued.certificate.not_after.isoformat(), "ca_chain": issued.ca_chain}
        device_id = parse_rotation_topic(topic)
        if device_id is not None:
            response = rotation_response_topic(device_id)
            if self.onboarding.devices.get(device_id) is None:
                raise NotOurs(device_id)
            try:
                device, record = self.onboarding.rotate(device_id, parse_csr_request(payload))
            except (Rejected, RegistryError) as exc:
                log.info("rotation rejected", extra=log_fields(device_id=device_id, reason=str(exc)))
                return response, {"status": "rejected", "reason": str(exc)}
            return response, {"status": "accepted", "device_id": device_id, "certificate": record.pem,
                              "serial": record.serial, "not_after": record.not_after.isoformat(),
                              "grace_s": self.settings.cert_rotation_grace_s, "ca_chain": self.onboarding.ca_chain}
        return None
