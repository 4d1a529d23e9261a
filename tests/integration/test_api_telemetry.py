"""The telemetry query API on real Cassandra (a throwaway keyspace) and a Parquet lake.

Rows are written the way the telemetry job writes them (same tables, same lake layout), so these
tests pin the read side: ordering, paging, hot/cold split, re-bucketing, bounds and access.
The whole path from a device to these routes is covered by test_telemetry_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

UTC = dt.UTC
NOW = int(time.time() * 1000)
MIN = 60_000
LAKE_SCHEMA = pa.schema([
    ("device_id", pa.string()), ("ts", pa.timestamp("ms", tz="UTC")), ("seq", pa.int64()),
    ("ingest_ts", pa.timestamp("ms", tz="UTC")), ("metrics", pa.map_(pa.string(), pa.float64())),
    ("attrs", pa.string()),
])


def _dt(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, UTC)


@pytest.fixture(scope="module")
def client(api_settings, tmp_path_factory):
    """The API with its own lake directory, so cold-data files stay out of the shared lake."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    lake = tmp_path_factory.mktemp("lake")
    with TestClient(create_app(api_settings.replace(lake_dir=lake))) as c:
        c.lake = lake
        yield c


@pytest.fixture
def device(client, keys, uid):
    device_id = uid("tel")
    r = client.post("/v1/devices", json={"device_id": device_id, "groups": ["plant-a"]}, headers=keys.operator)
    assert r.status_code == 201, r.text
    return device_id


def insert_points(cassandra, device_id: str, points: list[tuple[int, int, dict]]):
    stmt = cassandra.prepare("INSERT INTO telemetry (device_id, day, ts, seq, ingest_ts, metrics, attrs) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)")
    for ts, seq, metrics in points:
        cassandra.execute(stmt, (device_id, _dt(ts).date(), _dt(ts), seq, _dt(ts + 5), metrics, '{"fw":"1.0"}'))


def write_lake(lake, device_id: str, points: list[tuple[int, int, dict]]):
    day = _dt(points[0][0]).date()
    part = lake / "telemetry" / f"date={day.isoformat()}" / "hour=00"
    part.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "device_id": [device_id] * len(points), "ts": [p[0] for p in points], "seq": [p[1] for p in points],
        "ingest_ts": [p[0] + 5 for p in points], "metrics": [list(p[2].items()) for p in points],
        "attrs": [None] * len(points),
    }, schema=LAKE_SCHEMA)
    pq.write_table(table, part / f"part-{device_id}.parquet")


def test_points_are_newest_first_and_paginate_across_days(client, cassandra, keys, device):
    yesterday = NOW - 86_400_000
    pts = [(yesterday, 1, {"t": 1.0, "h": 10.0}), (yesterday + MIN, 2, {"t": 2.0}), (NOW - 3 * MIN, 3, {"t": 3.0}),
           (NOW - 2 * MIN, 4, {"t": 4.0}), (NOW - MIN, 5, {"t": 5.0, "h": 50.0})]
    insert_points(cassandra, device, pts)
    seen, token = [], None
    for _ in range(5):
        params = {"from": NOW - 2 * 86_400_000, "to": NOW, "limit": 2, "metrics": "t"}
        if token:
            params["page_token"] = token
        r = client.get(f"/v1/devices/{device}/telemetry", params=params, headers=keys.viewer)
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(body["items"])
        token = body["next_page_token"]
        if not token:
            break
    assert [p["seq"] for p in seen] == [5, 4, 3, 2, 1]
    assert [p["metrics"] for p in seen] == [{"t": 5.0}, {"t": 4.0}, {"t": 3.0}, {"t": 2.0}, {"t": 1.0}]
    assert seen[0]["attrs"] == {"fw": "1.0"} and seen[0]["ingest_ts"] == NOW - MIN + 5


def test_requests_share_one_store(client, keys, device):
    """The telemetry store (and its prepared statements) is made once per app, not per request:
    a per-request cache key once made every GET prepare five statements and grow app state."""
    for _ in range(3):
        assert client.get(f"/v1/devices/{device}/telemetry", headers=keys.viewer).status_code == 200
    stores = client.app.state.stores
    before = len(stores)
    for _ in range(5):
        assert client.get(f"/v1/devices/{device}/telemetry/gaps", headers=keys.viewer).status_code == 200
        assert client.get(f"/v1/devices/{device}/telemetry", headers=keys.viewer).status_code == 200
    assert len(stores) == before


def test_range_bounds_select_points(client, cassandra, keys, device):
    insert_points(cassandra, device, [(NOW - 10 * MIN, 1, {"t": 1.0}), (NOW - 5 * MIN, 2, {"t": 2.0})])
    r = client.get(f"/v1/devices/{device}/telemetry", params={"from": NOW - 6 * MIN, "to": NOW - 5 * MIN},
                   headers=keys.viewer)
    assert r.json()["items"] == []  # 'to' is exclusive
    r = client.get(f"/v1/devices/{device}/telemetry",
                   params={"from": _dt(NOW - 6 * MIN).isoformat(), "to": _dt(NOW).isoformat()}, headers=keys.viewer)
    assert [p["seq"] for p in r.json()["items"]] == [2]


def test_days_older_than_the_ttl_come_from_the_lake(client, cassandra, keys, device):
    old = int(dt.datetime.combine(_dt(NOW).date() - dt.timedelta(days=40), dt.time(0, 10), UTC).timestamp() * 1000)
    write_lake(client.lake, device, [(old, 7, {"t": 7.0}), (old + MIN, 8, {"t": 8.0}), (old + 2 * MIN, 9, {"t": 9.5})])
    # A row in Cassandra for the same old day must not be read: past the TTL, the lake answers.
    insert_points(cassandra, device, [(old + 30 * MIN, 99, {"t": -1.0})])
    r = client.get(f"/v1/devices/{device}/telemetry", params={"from": old - MIN, "to": old + 86_400_000, "limit": 2},
                   headers=keys.viewer)
    body = r.json()
    assert [p["seq"] for p in body["items"]] == [9, 8]
    r = client.get(f"/v1/devices/{device}/telemetry", headers=keys.viewer,
                   params={"from": old - MIN, "to": old + 86_400_000, "page_token": body["next_page_token"]})
    assert [p["seq"] for p in r.json()["items"]] == [7]


def test_rollups_older_than_their_ttl_are_computed_from_the_lake(client, keys, device):
    old = int(dt.datetime.combine(_dt(NOW).date() - dt.timedelta(days=420), dt.time(0, 10), UTC).timestamp() * 1000)
    write_lake(client.lake, device, [(old, 7, {"t": 7.0}), (old + MIN, 8, {"t": 8.0}), (old + 2 * MIN, 9, {"t": 9.5})])
    agg = client.get(f"/v1/devices/{device}/telemetry/aggregate", headers=keys.viewer,
                     params={"metric": "t", "from": old - old % (5 * MIN), "to": old + 86_400_000, "bucket": "1h"}).json()
    assert agg["buckets"] == [{"start": old - old % 3_600_000,
                               "values": {"avg": pytest.approx(8.1666666), "min": 7.0, "max": 9.5, "count": 3}}]


def test_aggregate_rebuckets_rollups_hand_computed(client, cassandra, keys, device):
    base = NOW - NOW % 3_600_000 - 3_600_000  # start of the previous hour
    stmt = cassandra.prepare("INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, "
                             "sum, count) VALUES (?, ?, 't', ?, ?, ?, ?, ?, ?)")
    for minute, (mn, mx, sm, n) in {0: (1.0, 3.0, 4.0, 2), 1: (0.5, 2.0, 2.5, 2), 4: (5.0, 5.0, 5.0, 1),
                                    5: (7.0, 9.0, 16.0, 2)}.items():
        start = base + minute * MIN
        cassandra.execute(stmt, (device, _dt(start).date(), _dt(start), mn, mx, sm / n, sm, n))
    r = client.get(f"/v1/devices/{device}/telemetry/aggregate", headers=keys.viewer,
                   params={"metric": "t", "from": base, "to": base + 3_600_000, "bucket": "5m", "fn": "avg,min,max,count"})
    assert r.status_code == 200, r.text
    assert r.json()["buckets"] == [
        {"start": base, "values": {"avg": 2.3, "min": 0.5, "max": 5.0, "count": 5}},
        {"start": base + 5 * MIN, "values": {"avg": 8.0, "min": 7.0, "max": 9.0, "count": 2}},
    ]


def test_coarse_buckets_are_grouped_by_cassandra_hand_computed(client, cassandra, keys, device):
    # Hourly and daily buckets are pre-aggregated per day partition by Cassandra (GROUP BY floor);
    # a range starting mid-hour counts only the minutes inside it, across a day boundary.
    day0 = int(dt.datetime.combine(_dt(NOW).date() - dt.timedelta(days=1), dt.time(0, 0), UTC).timestamp() * 1000)
    stmt = cassandra.prepare("INSERT INTO telemetry_rollup_1m (device_id, day, metric, bucket_start, min, max, avg, "
                             "sum, count) VALUES (?, ?, 't', ?, ?, ?, ?, ?, ?)")
    for offset, (mn, mx, sm, n) in {-2: (100.0, 100.0, 100.0, 1), -1: (1.0, 3.0, 4.0, 2), 0: (0.5, 2.0, 2.5, 2),
                                    1: (5.0, 5.0, 5.0, 1), 90: (7.0, 9.0, 16.0, 2)}.items():
        start = day0 + offset * MIN
        cassandra.execute(stmt, (device, _dt(start).date(), _dt(start), mn, mx, sm / n, sm, n))

    def buckets(bucket):
        r = client.get(f"/v1/devices/{device}/telemetry/aggregate", headers=keys.viewer,
                       params={"metric": "t", "from": day0 - MIN, "to": day0 + 2 * 3_600_000, "bucket": bucket,
                               "fn": "sum,min,max,count"})
        assert r.status_code == 200, r.text
        return r.json()["buckets"]

    assert buckets("1h") == [
        {"start": day0 - 3_600_000, "values": {"sum": 4.0, "min": 1.0, "max": 3.0, "count": 2}},
        {"start": day0, "values": {"sum": 7.5, "min": 0.5, "max": 5.0, "count": 3}},
        {"start": day0 + 3_600_000, "values": {"sum": 16.0, "min": 7.0, "max": 9.0, "count": 2}},
    ]
    assert buckets("1d") == [
        {"start": day0 - 86_400_000, "values": {"sum": 4.0, "min": 1.0, "max": 3.0, "count": 2}},
        {"start": day0, "values": {"sum": 23.5, "min": 0.5, "max": 9.0, "count": 5}},
    ]


def test_gap_report(client, cassandra, keys, device):
    cassandra.execute("INSERT INTO telemetry_gaps (device_id, first_seq, last_seq, missing, after_ts, before_ts, status) "
                      "VALUES (%s, 5, 7, 3, %s, %s, 'lost')", (device, _dt(NOW - MIN), _dt(NOW)))
    cassandra.execute("INSERT INTO telemetry_device_stats (device_id, max_seq, last_ts, received, duplicates, late, lost) "
                      "VALUES (%s, 10, %s, 8, 2, 0, 3)", (device, _dt(NOW)))
    body = client.get(f"/v1/devices/{device}/telemetry/gaps", headers=keys.viewer).json()
    assert body["complete"] is False and body["lost"] == 3 and body["received"] == 8
    assert body["gaps"] == [{"first_seq": 5, "last_seq": 7, "missing": 3, "after_ts": NOW - MIN, "before_ts": NOW,
                             "status": "lost"}]


def test_a_device_with_nothing_missing_is_complete(client, keys, device):
    body = client.get(f"/v1/devices/{device}/telemetry/gaps", headers=keys.viewer).json()
    assert body == {"device_id": device, "received": 0, "duplicates": 0, "late": 0, "lost": 0, "max_seq": None,
                    "last_ts": None, "complete": True, "gaps": []}


@pytest.mark.parametrize("path, params, detail", [
    ("", {"from": NOW, "to": NOW - 1}, "'from' must be earlier than 'to'"),
    ("", {"from": NOW - 40 * 86_400_000, "to": NOW}, "at most 31 days per request"),
    ("", {"limit": 0}, "'limit' must be between 1 and 1000"),
    ("", {"page_token": "garbage!"}, "'page_token' is not a token this API issued"),
    ("", {"from": "last tuesday"}, "'from' must be epoch milliseconds or an ISO 8601 time"),
    ("/aggregate", {"metric": "t", "bucket": "2m"}, "'bucket' must be one of 1m, 5m, 1h, 1d"),
    ("/aggregate", {"metric": "t", "fn": "median"}, "'fn' must be a comma-separated list"),
    ("/aggregate", {"metric": "t", "from": NOW - 300 * 86_400_000, "to": NOW, "bucket": "1m"},
     "432000 buckets requested; at most 20000"),
    ("/aggregate", {"metric": "t", "from": NOW - 500 * 86_400_000, "to": NOW, "bucket": "1d"}, "at most 400 days"),
])
def test_bad_queries_are_400_with_the_bound(client, keys, device, path, params, detail):
    r = client.get(f"/v1/devices/{device}/telemetry{path}", params=params, headers=keys.viewer)
    assert r.status_code == 400
    assert detail in r.json()["detail"]


def test_access(client, keys, device, uid):
    assert client.get(f"/v1/devices/{device}/telemetry").status_code == 401
    missing = client.get(f"/v1/devices/{uid('nobody')}/telemetry", headers=keys.viewer)
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    outsider = keys.make("viewer", groups=["plant-b"])
    assert client.get(f"/v1/devices/{device}/telemetry/gaps", headers=outsider).status_code == 404
    insider = keys.make("viewer", groups=["plant-a"])
    assert client.get(f"/v1/devices/{device}/telemetry/gaps", headers=insider).status_code == 200
