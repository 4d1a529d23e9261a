"""An invariant over generated data: every bucket the aggregate API returns is a possible one.

Hypothesis generates a device's points; they go through the telemetry domain exactly as the job
runs them (provisional rollups first, then final ones as the device's clock closes each minute)
and every version is written to the real Cassandra rollup table in that order (hot), or the raw
points go to the Parquet lake at a date older than the rollup TTL (cold). Then, at every bucket
size the API offers, each bucket must have ``count >= 1`` and ``min <= avg <= max``, and equal
what the points themselves give.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.telemetry.domain import DeviceState, Point, TelemetryRules, observe, on_time
from fleet.telemetry.query import BUCKETS_MS
from tests.integration.test_api_telemetry import _dt, write_lake

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = int(time.time() * 1000)
HOT_DAY = NOW - NOW % DAY - DAY  # yesterday 00:00 UTC: inside the rollup TTL
COLD_DAY = HOT_DAY - 420 * DAY  # older than the rollup TTL: only the lake has it

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
# (ms into the hour, value): clustered in a few minutes so buckets hold several points, equal
# values included (an all-equal bucket is where a rounded average slips outside [min, max]).
points = st.lists(st.tuples(st.integers(0, 7 * MIN - 1), st.one_of(values, st.sampled_from([0.1, 1 / 3, 21.047]))),
                  min_size=1, max_size=40)


@pytest.fixture(scope="module")
def client(api_settings, tmp_path_factory):
    from fastapi.testclient import TestClient

    from api.main import create_app

    lake = tmp_path_factory.mktemp("lake")
    with TestClient(create_app(api_settings.replace(lake_dir=lake))) as c:
        c.lake = lake
        yield c


def point(ts: int, seq: int, metrics: dict) -> Point:
    return Point("d", ts, seq, ts, metrics, "{}", "devices/d/telemetry")


def rollup_versions(samples: list[tuple[int, float]]):
    """Every rollup version the job's domain publishes for these points, in publishing order."""
    rules, state, out = TelemetryRules(), DeviceState(), []
    for seq, (ts, value) in enumerate(samples, start=1):
        out += observe(state, point(ts, seq, {"t": value}), rules).rollups
        if seq % 5 == 0:  # the fleet's event time moves on meanwhile: provisional versions
            out += on_time(state, ts, rules).rollups
    close = max(ts for ts, _ in samples) + 2 * MIN + rules.allowed_lateness_ms
    out += observe(state, point(close, len(samples) + 1, {}), rules).rollups
    return out


def expected(samples: list[tuple[int, float]], bucket_ms: int) -> dict[int, tuple[float, float, float, int]]:
    grouped: dict[int, list[float]] = {}
    for ts, v in samples:
        grouped.setdefault(ts - ts % bucket_ms, []).append(v)
    return {start: (min(vs), max(vs), math.fsum(vs), len(vs)) for start, vs in grouped.items()}


def check_buckets(client, keys, device_id: str, start: int, samples) -> None:
    for name, bucket_ms in BUCKETS_MS.items():
        r = client.get(f"/v1/devices/{device_id}/telemetry/aggregate", headers=keys.viewer,
                       params={"metric": "t", "from": start, "to": start + DAY, "bucket": name,
                               "fn": "avg,min,max,count,sum"})
        assert r.status_code == 200, r.text
        got = {b["start"]: b["values"] for b in r.json()["buckets"]}
        want = expected(samples, bucket_ms)
        assert sorted(got) == sorted(want), name
        for key, v in got.items():
            assert v["count"] >= 1 and v["min"] <= v["avg"] <= v["max"], (name, key, v)
            mn, mx, total, n = want[key]
            scale = sum(abs(x) for _, x in samples) or 1.0
            assert (v["min"], v["max"], v["count"]) == (mn, mx, n), (name, key, v)
            assert v["sum"] == pytest.approx(total, abs=1e-9 * scale), (name, key, v)


def register(client, keys) -> str:
    device_id = f"inv-{uuid.uuid4().hex[:10]}"
    r = client.post("/v1/devices", json={"device_id": device_id}, headers=keys.operator)
    assert r.status_code == 201, r.text
    return device_id


# Three equal values in one minute: their float sum rounds, so sum / count falls below the minimum.
ROUNDING = [(1000, 0.7), (2000, 0.7), (3000, 0.7)]
SETTINGS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_hot_buckets_are_possible_at_every_size(client, cassandra, keys):
    insert = cassandra.prepare("INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, "
                               "sum, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

    @SETTINGS
    @given(generated=points)
    @example(generated=ROUNDING)
    def run(generated):
        device_id = register(client, keys)
        samples = sorted((HOT_DAY + offset, value) for offset, value in generated)
        for r in rollup_versions(samples):  # each version its own write, newest last, as the sink does
            cassandra.execute(insert, (device_id, _dt(r.bucket_start).date(), r.metric, _dt(r.bucket_start),
                                       r.min, r.max, r.avg, r.sum, r.count))
        check_buckets(client, keys, device_id, HOT_DAY, samples)

    run()


def test_cold_buckets_are_possible_at_every_size(client, keys):
    @SETTINGS
    @given(generated=points)
    @example(generated=ROUNDING)
    def run(generated):
        device_id = register(client, keys)
        samples = sorted((COLD_DAY + offset, value) for offset, value in generated)
        write_lake(client.lake, device_id, [(ts, seq, {"t": v}) for seq, (ts, v) in enumerate(samples, start=1)])
        check_buckets(client, keys, device_id, COLD_DAY, samples)

    run()
