"""fleet.lake.dataset.telemetry_dataset: a lake whose partition directories exist before their first
committed file (only hidden in-progress files) reads as empty, with the lake's columns, instead
of failing every column filter; committed files read as before, hidden files never."""

from __future__ import annotations

import json

import pyarrow.dataset as ds

from fleet.lake.dataset import TELEMETRY_SCHEMA, telemetry_dataset
from tests.unit.test_lake_compaction import H0, build_lake, write_part


def _ids(dataset, device_ids):
    table = dataset.to_table(columns=["device_id", "seq"], filter=ds.field("device_id").isin(device_ids))
    return sorted(zip(table["device_id"].to_pylist(), table["seq"].to_pylist(), strict=True))


def test_a_missing_or_empty_lake_reads_as_an_empty_table_with_the_lake_columns(tmp_path):
    assert _ids(telemetry_dataset(tmp_path / "nowhere"), ["dev-00000"]) == []
    hour = tmp_path / "telemetry" / "date=2024-01-01" / "hour=00"
    hour.mkdir(parents=True)
    (hour / ".part-1f-0.inprogress.7a").write_bytes(b"PAR1 half written")
    for path in (tmp_path / "telemetry", tmp_path / "telemetry" / "date=2024-01-01"):
        dataset = telemetry_dataset(path)
        assert dataset.schema.names == TELEMETRY_SCHEMA.names
        assert _ids(dataset, ["dev-00000"]) == [] and dataset.count_rows() == 0


def test_committed_files_are_read_and_hidden_ones_ignored(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0,), devices=2, files_per_hour=2, per_file=2)
    hour = table_dir / "date=2024-01-01" / "hour=00"
    write_part(hour, ".part-9-9.inprogress.parquet", [("dev-00000", 99, H0)])
    (hour / "_SUCCESS").write_text("")
    rows = _ids(telemetry_dataset(table_dir), ["dev-00000", "dev-00001"])
    assert rows == [("dev-00000", 1), ("dev-00000", 2), ("dev-00001", 1), ("dev-00001", 2)]
    day = telemetry_dataset(table_dir / "date=2024-01-01").to_table(filter=ds.field("hour") == 0)
    assert day.num_rows == 4


def _shadow_part(hour_dir, name, versions):
    """A file as the shadow job's sink writes it (jobs/shadow/sinks.py SHADOW_CHANGES_PARQUET)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleet.lake.dataset import SHADOW_CHANGES_SCHEMA

    written = pa.schema([f for f in SHADOW_CHANGES_SCHEMA if f.name not in ("date", "hour")])
    rows = [{"device_id": "dev-00000", "shadow_name": "", "version": v, "ts": H0 + v, "source_kind": "operator",
             "actor": "ops-key", "client_token": None, "patch": json.dumps({"desired": {"v": v}}),
             "desired": json.dumps({"v": v}), "reported": "{}"} for v in versions]
    hour_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=written), hour_dir / name)


def test_shadow_changes_read_like_telemetry(tmp_path):
    from fleet.lake.dataset import SHADOW_CHANGES_SCHEMA, shadow_changes_dataset

    table_dir = tmp_path / "shadow_changes"
    empty = shadow_changes_dataset(table_dir)
    assert empty.schema == SHADOW_CHANGES_SCHEMA and empty.count_rows() == 0
    hour = table_dir / "date=2024-01-01" / "hour=00"
    hour.mkdir(parents=True)
    (hour / ".part-1f-0.inprogress.7a").write_bytes(b"PAR1 half written")
    assert shadow_changes_dataset(table_dir).to_table(filter=ds.field("device_id") == "dev-00000").num_rows == 0
    _shadow_part(hour, "part-a-0.parquet", [1, 2])
    _shadow_part(hour, "part-a-1.parquet", [3])
    _shadow_part(hour, ".part-a-2.inprogress.parquet", [4])
    table = shadow_changes_dataset(table_dir).to_table(filter=ds.field("device_id") == "dev-00000")
    assert sorted(table["version"].to_pylist()) == [1, 2, 3]
    assert set(table.schema.names) == set(SHADOW_CHANGES_SCHEMA.names)
    row = min(table.to_pylist(), key=lambda r: r["version"])
    assert (row["date"], row["hour"], row["ts"].timestamp() * 1000) == ("2024-01-01", 0, H0 + 1)
