"""Bridge pieces without a broker: subscriptions, metrics endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from bridge.metrics import BridgeMetrics, HttpEndpoint
from bridge.uplink import shared_filters
from fleet.topics import Uplink


def test_one_shared_subscription_per_uplink_kind():
    assert shared_filters("bridge") == [
        "$share/bridge/devices/+/telemetry",
        "$share/bridge/devices/+/shadow/update",
        "$share/bridge/devices/+/shadow/get",
        "$share/bridge/devices/+/commands/+/result",
        "$share/bridge/devices/+/ota/status",
        "$share/bridge/devices/+/status",
    ]
    assert len(shared_filters("g")) == len(Uplink)


@pytest.mark.parametrize("healthy,status", [(True, 200), (False, 503)])
def test_health_and_metrics_endpoint(healthy, status):
    metrics = BridgeMetrics()
    metrics.received.inc(3)
    metrics.rejected.labels("invalid_json").inc()
    metrics.produced_to("fleet.telemetry").inc(2)
    metrics.produce_latency.observe(0.004)
    http = HttpEndpoint("127.0.0.1", 0, metrics, lambda: (healthy, {"status": "x"})).start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        try:
            resp = urllib.request.urlopen(base + "/health", timeout=5)
            code, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            code, body = err.code, err.read()
        assert code == status and json.loads(body) == {"status": "x"}
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "fleet_bridge_received_total 3.0" in text
        assert 'fleet_bridge_rejected_total{reason="invalid_json"} 1.0' in text
        assert 'fleet_bridge_produced_total{topic="fleet.telemetry"} 2.0' in text
        assert "fleet_bridge_produce_latency_seconds_bucket" in text
        assert metrics.value("fleet_bridge_received_total") == 3
    finally:
        http.stop()
