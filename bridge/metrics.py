"""The bridge's Prometheus metrics and its small HTTP endpoint (/health, /metrics)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class BridgeMetrics:
    """One registry per bridge object (not the global one), so tests can run several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("fleet_bridge_received", "MQTT messages received", registry=r)
        self.produced = Counter("fleet_bridge_produced", "Records confirmed by Kafka", ["topic"], registry=r)
        self.rejected = Counter("fleet_bridge_rejected", "Messages dead-lettered, by reason", ["reason"], registry=r)
        self.produce_errors = Counter("fleet_bridge_produce_errors", "Kafka sends that failed (message redelivered)",
                                      registry=r)
        self.acked = Counter("fleet_bridge_acked", "PUBACKs sent to the broker after Kafka confirmed", registry=r)
        self.inflight = Gauge("fleet_bridge_inflight", "Messages received, not yet confirmed by Kafka", registry=r)
        self.mqtt_connected = Gauge("fleet_bridge_mqtt_connected", "1 while connected to the broker", registry=r)
        self.broker_dropped = Gauge(
            "fleet_broker_publish_dropped", "Messages the broker dropped since it started because a session's "
            "queue was full ($SYS/broker/publish/messages/dropped, broker-wide); lost after the device's PUBACK",
            registry=r)
        self.broker_disconnects = Counter(
            "fleet_broker_disconnects", "Clients the broker threw out, by reason, from its own log "
            "($SYS/broker/log/N): packet_too_large means a device sent a packet above max_packet_size, which the "
            "broker discarded (never dead-lettered). Every bridge replica counts every broker event.",
            ["reason"], registry=r)
        self.produce_latency = Histogram(
            "fleet_bridge_produce_latency_seconds", "From producer.send to Kafka's acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self._produced_children: dict[str, Counter] = {}

    def produced_to(self, topic: str) -> Counter:
        # Bound children: .labels() costs a lookup and a lock on every call of the hot path.
        child = self._produced_children.get(topic)
        if child is None:
            child = self._produced_children[topic] = self.produced.labels(topic)
        return child

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, e.g. value("fleet_bridge_received_total")."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DownlinkMetrics:
    """The downlink's metrics, in the registry of the process's BridgeMetrics (one /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.published = Counter("fleet_downlink_published", "Downlink records handed to the MQTT client (QoS 1)",
                                 registry=r)
        self.acked = Counter("fleet_downlink_acked", "Downlink publishes the broker acknowledged (PUBACK)", registry=r)
        self.no_subscribers = Counter(
            "fleet_downlink_no_subscribers", "PUBACKs saying no session was subscribed (device offline without a "
            "persistent session, or not subscribed to the topic)", registry=r)
        self.expired = Counter("fleet_downlink_expired", "Downlink records past expires_at, never published", registry=r)
        self.dead_lettered = Counter("fleet_downlink_dead_lettered", "Downlink records dead-lettered, by reason",
                                     ["reason"], registry=r)
        self.outstanding = Gauge("fleet_downlink_outstanding", "Downlink publishes waiting for their PUBACK",
                                 registry=r)
        self.paused = Gauge("fleet_downlink_paused", "1 while consuming is paused (too many outstanding)", registry=r)
        self.mqtt_connected = Gauge("fleet_downlink_mqtt_connected", "1 while the downlink client is connected",
                                    registry=r)
        self.commit_errors = Counter("fleet_downlink_commit_errors", "Kafka offset commits that failed", registry=r)
        self.latency = Histogram(
            "fleet_downlink_latency_seconds", "From the record's created_at to the broker's PUBACK",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class HttpEndpoint:
    """GET /health (JSON; 200 healthy, 503 not) and GET /metrics (Prometheus text)."""

    def __init__(self, host: str, port: int, metrics: BridgeMetrics, health: Callable[[], tuple[bool, dict]]):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] == "/metrics":
                    endpoint._reply(self, 200, metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] == "/health":
                    ok, detail = health()
                    endpoint._reply(self, 200 if ok else 503, json.dumps(detail).encode(), "application/json")
                else:
                    endpoint._reply(self, 404, b'{"detail": "not found"}', "application/json")

            def log_message(self, fmt: str, *args) -> None:  # scrapes are not worth a log line
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="bridge-http", daemon=True)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> HttpEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
