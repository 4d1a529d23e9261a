"""The telemetry job's real lake sink (fleet.flink.telemetry.TelemetryLakeSink) in a local Flink with
checkpoints: hive partitions by device time in UTC, the documented schema, each accepted
(device_id, seq) exactly once, readable by pyarrow and DuckDB. Runs on both cores."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

T0 = 1_704_067_200_000 + 59 * 60_000  # 2024-01-01T00:59:00Z: records straddle an hour boundary


def envelope(device: str, seq: int, ts: int, metrics: dict) -> str:
    return json.dumps({"device_id": device, "type": "telemetry", "ts": ts, "ingest_ts": ts + 7,
                       "mqtt_topic": f"devices/{device}/telemetry",
                       "payload": {"ts": ts, "seq": seq, "metrics": metrics, "attrs": {"fw": "2.0"}}},
                      separators=(",", ":"))


# 3 devices x 40 records, 3 s apart (00:59:00 .. 01:00:57), plus a redelivery and a late record.
RECORDS = [envelope(f"d-{d}", s, T0 + s * 3000 + d, {"temp": s + d / 10, "n": s}) for s in range(40) for d in range(3)]
RECORDS.insert(50, RECORDS[10])  # duplicate: dropped
RECORDS.append(envelope("d-0", 99, T0, {"temp": 0}))  # 117 s behind d-0's clock: late, not in the lake


@pytest.fixture(scope="module", params=["java", "python"])
def lake(request, tmp_path_factory):
    from pyflink.common import Types

    from fleet.config import Settings
    from jobs.telemetry.options import JobOptions
    from jobs.telemetry.pipeline import build, envelopes
    from jobs.telemetry.sinks import ProductionSinks
    from tests.pipeline.collect import Collector
    from tests.pipeline.flink_env import local_env

    root = tmp_path_factory.mktemp(f"lake-test-{request.param}")
    env = local_env()
    env.enable_checkpointing(500)  # bulk files commit on checkpoints (and at the end of input)
    settings = Settings.from_env({"FLEET_VAR_DIR": str(root), "FLEET_LAKE_DIR": str(root / "lake")})
    options = JobOptions(cassandra=False, out_of_orderness_ms=3600_000, core=request.param)
    collector = Collector(root / "collected")

    class Sinks(ProductionSinks):
        def dead_letters(self, ds):
            collector.sink(ds, "dead_letters")

    raw = env.from_collection(RECORDS, type_info=Types.STRING())
    build(env, settings, envelopes(raw, options), Sinks(settings, options), options)
    env.execute(f"telemetry-lake-test-{request.param}")
    return root / "lake" / "telemetry", collector


def test_partitions_by_device_time_in_utc(lake):
    base, _ = lake
    partitions = sorted(str(p.relative_to(base)) for p in base.glob("date=*/hour=*"))
    assert partitions == ["date=2024-01-01/hour=00", "date=2024-01-01/hour=01"]
    files = sorted(p.name for p in base.rglob("*") if p.is_file())
    assert files and all(name.startswith("part-") and name.endswith(".parquet") for name in files)


def test_schema_and_exactly_once(lake):
    import pyarrow as pa
    import pyarrow.dataset as ds

    base, _ = lake
    table = ds.dataset(base, format="parquet", partitioning="hive").to_table()
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    metrics = table.schema.field("metrics").type
    assert pa.types.is_map(metrics) and (metrics.key_type, metrics.item_type) == (pa.string(), pa.float64())
    keys = sorted(zip(table["device_id"].to_pylist(), table["seq"].to_pylist(), strict=True))
    assert keys == sorted((f"d-{d}", s) for s in range(40) for d in range(3))
    row = table.filter(ds.field("seq") == 20).filter(ds.field("device_id") == "d-1").to_pylist()[0]
    assert row["ts"].timestamp() * 1000 == T0 + 60_000 + 1
    assert dict(row["metrics"]) == {"temp": 20.1, "n": 20.0}
    assert (row["ingest_ts"], row["attrs"], row["date"], row["hour"]) == (T0 + 60_008, '{"fw":"2.0"}', "2024-01-01", 1)


def test_duckdb_reads_the_lake(lake):
    import duckdb

    base, _ = lake
    rows = duckdb.sql(f"""
        SELECT hour, count(*) AS n, max(metrics['n']) AS max_n
        FROM read_parquet('{base}/*/*/*.parquet', hive_partitioning = true)
        GROUP BY hour ORDER BY hour""").fetchall()
    # 00:59:00 .. 00:59:57 is seq 0..19 per device, 01:00:00 .. 01:00:57 is seq 20..39.
    assert [(int(h), n, m) for h, n, m in rows] == [(0, 60, 19.0), (1, 60, 39.0)]


def test_the_late_record_is_a_dead_letter(lake):
    _, collector = lake
    letters = [json.loads(t) for t in collector.read("dead_letters")]
    assert [(d["reason"], d["device_id"]) for d in letters] == [("late", "d-0")]
