"""End to end on the real stack: device agent --mTLS--> Mosquitto --> bridge --> Kafka --> the
telemetry job on Flink --> Cassandra and the Parquet lake --> the API process (over HTTP).

Each device sends points with timestamps the test chooses (a few minutes in the past, spread
over three whole minutes), then one closing point 61 s after the last minute, which makes the
device's clock close those minutes: their rollups are then final and must equal what the test
computes from what it sent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict

import httpx
import pyarrow.dataset as ds
import pytest

from device.agent import AgentConfig, DeviceAgent, now_ms
from fleet.lake.dataset import telemetry_dataset

pytestmark = pytest.mark.integration

MIN = 60_000
POINTS = 30  # per device, 6 s apart: three whole minutes
DEVICES = 3


@pytest.fixture(scope="module")
def api(stack):
    """The API process the launcher started, over real HTTP: what an operator's client talks to."""
    with httpx.Client(base_url=f"http://{stack.api_host}:{stack.api_port}", timeout=30) as client:
        assert client.get("/health").status_code == 200
        yield client


@pytest.fixture(scope="module")
def viewer(api, stack):
    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(stack)
    _, secret = ApiKeyStore(sessions.get()).create("e2e-viewer", Role.viewer, None)
    yield {"X-API-Key": secret}
    sessions.shutdown()


def wait_for(what: str, check, timeout: float = 180.0, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not there after {timeout:.0f}s; last seen: {str(last)[:2000]}")


def publish(agent: DeviceAgent, metrics: dict, ts: int) -> None:
    agent.loop.call_soon(agent.publish_telemetry, metrics, {"src": "e2e"}, ts)


@pytest.fixture(scope="module")
def sent(stack, enrollment, telemetry_job, tmp_path_factory):
    """Publish the test's points; returns {device_id: [(ts, metrics), ...]} in send order."""
    base = now_ms() - 5 * MIN
    base -= base % MIN
    tag = uuid.uuid4().hex[:6]
    agents, sent = [], {}
    directory = tmp_path_factory.mktemp("e2e")
    for d in range(DEVICES):
        identity = enrollment.enroll(f"e2e-{tag}-{d}", directory / str(d))
        agent = DeviceAgent(identity, AgentConfig.from_settings(stack)).start()
        assert agent.wait_connected(15)
        agents.append(agent)
        sent[identity.device_id] = []
    for i in range(POINTS):
        for d, agent in enumerate(agents):
            ts = base + i * 6000 + d
            metrics = {"i": float(i), "t": round(20 + math.sin(i / 3) * 5 + d, 3)}
            publish(agent, metrics, ts)
            sent[agent.device_id].append((ts, metrics))
    for agent in agents:  # the closing point: a minute and a second after the last whole minute
        ts = base + 3 * MIN + MIN + 1000
        publish(agent, {"i": -1.0}, ts)
        sent[agent.device_id].append((ts, {"i": -1.0}))
    for agent in agents:
        assert agent.wait_acked(30), f"{agent.device_id}: not every message was acknowledged"
        agent.stop()
    return sent


def all_points(api, viewer, device_id, start, end):
    items, token = [], None
    while True:
        params = {"from": start, "to": end, "limit": 50, **({"page_token": token} if token else {})}
        r = api.get(f"/v1/devices/{device_id}/telemetry", params=params, headers=viewer)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        token = r.json()["next_page_token"]
        if not token:
            return items


def test_the_api_returns_exactly_the_points_sent(api, viewer, sent):
    for device_id, points in sent.items():
        start, end = min(t for t, _ in points), max(t for t, _ in points) + 1

        def check(device_id=device_id, start=start, end=end, points=points):
            got = all_points(api, viewer, device_id, start, end)
            return len(got) >= len(points), got

        got = wait_for(f"{device_id}'s points in Cassandra", check)
        assert [(p["ts"], p["metrics"]) for p in reversed(got)] == points
        seqs = [p["seq"] for p in reversed(got)]
        assert seqs == list(range(seqs[0], seqs[0] + len(points)))  # one per message, in order
        assert all(p["attrs"] == {"src": "e2e"} and p["ingest_ts"] >= p["ts"] - 5 * MIN for p in got)


def test_rollups_match_values_computed_from_what_was_sent(api, viewer, sent):
    for device_id, points in sent.items():
        expected = defaultdict(list)
        for ts, metrics in points:
            if "t" in metrics:
                expected[ts - ts % MIN].append(metrics["t"])
        want = [{"start": start, "values": {"min": min(v), "max": max(v), "count": len(v),
                                             "avg": pytest.approx(sum(v) / len(v))}}
                for start, v in sorted(expected.items())]
        params = {"metric": "t", "from": min(expected), "to": max(expected) + MIN, "bucket": "1m",
                  "fn": "min,max,count,avg"}

        def check(device_id=device_id, params=params, want=want):
            r = api.get(f"/v1/devices/{device_id}/telemetry/aggregate", params=params, headers=viewer)
            return r.status_code == 200 and r.json()["buckets"] == want, r.json()

        wait_for(f"{device_id}'s final rollups", check)


def test_the_lake_holds_every_device_seq_exactly_once(stack, sent, api, viewer):
    devices = set(sent)
    expected = sum(len(p) for p in sent.values())

    def check():
        root = stack.lake_path / "telemetry"
        if not root.exists():
            return False, "no lake yet"
        table = telemetry_dataset(root) \
            .to_table(columns=["device_id", "seq", "ts", "metrics"], filter=ds.field("device_id").isin(list(devices)))
        rows = table.to_pylist()
        return len(rows) >= expected, rows

    rows = wait_for("every point in the lake", check, timeout=240)
    keys = [(r["device_id"], r["seq"]) for r in rows]
    assert len(keys) == len(set(keys)) == expected
    by_device = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["seq"]):
        by_device[r["device_id"]].append((round(r["ts"].timestamp() * 1000), dict(r["metrics"])))
    assert dict(by_device) == sent


def test_the_job_reports_its_counts_to_prometheus(stack, sent):
    """Flink's processes expose Prometheus metrics (one port each in flink_metrics_port..+9); the
    TaskManager's include the telemetry core's own counters, e.g. records accepted."""
    import re
    import urllib.request

    def scrape() -> str:
        bodies = []
        for port in range(stack.flink_metrics_port, stack.flink_metrics_port + 10):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    bodies.append(r.read().decode())
            except OSError:
                continue
        return "\n".join(bodies)

    def check():
        text = scrape()
        accepted = [float(v) for v in re.findall(r"^flink_taskmanager_job_task_operator_telemetry_accepted\{[^}]*\} (\S+)$",
                                                text, re.M)]
        return bool(accepted) and sum(accepted) >= sum(len(p) for p in sent.values()), \
            accepted or text[:500]

    wait_for("the telemetry counters on the TaskManager's /metrics", check, timeout=60)
    assert "flink_jobmanager_numRunningJobs" in scrape()


def test_gap_report_says_nothing_went_missing(api, viewer, sent):
    for device_id in sent:
        def check(device_id=device_id):
            body = api.get(f"/v1/devices/{device_id}/telemetry/gaps", headers=viewer).json()
            return body.get("received", 0) >= POINTS + 1, body

        body = wait_for(f"{device_id}'s delivery stats", check)
        assert body["complete"] is True and body["gaps"] == [] and body["lost"] == 0


def test_a_seq_gap_is_reported_as_lost(stack, enrollment, telemetry_job, api, viewer, tmp_path):
    import orjson

    identity = enrollment.enroll(f"e2e-gap-{uuid.uuid4().hex[:6]}", tmp_path / "gap")
    agent = DeviceAgent(identity, AgentConfig.from_settings(stack)).start()
    assert agent.wait_connected(15)
    base = now_ms() - 3 * MIN
    for seq, ts in [(0, base), (1, base + 1000), (2, base + 2000), (5, base + 5000), (6, base + 66_000)]:
        agent.publish_raw("telemetry", orjson.dumps({"ts": ts, "seq": seq, "metrics": {"t": 1.0}}))
    assert agent.wait_acked(15)
    agent.stop()

    def check():
        body = api.get(f"/v1/devices/{identity.device_id}/telemetry/gaps", headers=viewer).json()
        return any(g["status"] == "lost" for g in body.get("gaps", [])), body

    body = wait_for("the lost gap", check)
    assert body["complete"] is False and body["lost"] == 2
    assert [(g["first_seq"], g["last_seq"], g["missing"], g["status"]) for g in body["gaps"]] == [(3, 4, 2, "lost")]


def test_a_quiet_devices_last_minute_appears_without_other_traffic(stack, enrollment, telemetry_job, api, viewer,
                                                                   tmp_path):
    """Nothing else sends during this test, so fleet-wide event time stands still (idle partitions):
    the minute must become visible by the wall clock, within the allowed lateness (60 s) and a few
    seconds, not when some other device next sends."""
    identity = enrollment.enroll(f"e2e-quiet-{uuid.uuid4().hex[:6]}", tmp_path / "quiet")
    agent = DeviceAgent(identity, AgentConfig.from_settings(stack)).start()
    assert agent.wait_connected(15)
    start = now_ms() - 70_000
    start -= start % MIN  # a minute that has ended by the wall clock
    values = [3.0, 1.0, 2.0]
    for i, v in enumerate(values):
        publish(agent, {"q": v}, start + 1000 * (i + 1))
    assert agent.wait_acked(30)
    agent.stop()
    sent_at = time.monotonic()
    params = {"metric": "q", "from": start, "to": start + MIN, "bucket": "1m", "fn": "min,max,count,avg"}
    want = [{"start": start, "values": {"min": 1.0, "max": 3.0, "count": 3, "avg": 2.0}}]

    def check():
        r = api.get(f"/v1/devices/{identity.device_id}/telemetry/aggregate", params=params, headers=viewer)
        return r.status_code == 200 and r.json()["buckets"] == want, r.json()

    wait_for("a quiet device's last minute", check, timeout=60 + 30, interval=1.0)
    assert time.monotonic() - sent_at < 60 + 30
