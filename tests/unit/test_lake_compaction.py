"""fleet.lake.compaction: the plan (pure), the merge on a tmp lake of sink-like files of both tables
(telemetry, shadow_changes), crash recovery, --dry-run, --table, the CLI, and reads through
pyarrow.dataset, DuckDB and TelemetryStore."""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fleet.lake import compaction as lc
from fleet.lake import compaction_merge as merge
from fleet.lake import compaction_plan as planning
from fleet.lake.compaction_plan import FileInfo, Partition, plan
from tests.support import require

UTC = dt.UTC
NOW = dt.datetime(2024, 1, 2, 0, 0, tzinfo=UTC)
H0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _read_back(written: pa.Schema, table: str) -> tuple[pa.Schema, str]:
    """``written`` as pyarrow reads it from a Parquet file (no stored Arrow schema, as the sinks
    write), plus the sink's "fleet.table" key; and the Parquet schema's text."""
    buf = io.BytesIO()
    pq.write_table(written.empty_table(), buf, store_schema=False)
    buf.seek(0)
    parquet_schema = str(pq.ParquetFile(buf).schema)
    buf.seek(0)
    return pq.read_schema(buf).with_metadata({"fleet.table": table}), parquet_schema


def _sink_schema() -> pa.Schema:
    """The Arrow schema pyarrow reads from the sink's files (schemas/parquet/telemetry.md): the
    same Parquet schema as TelemetryLakeSink.SCHEMA, read back, plus its "fleet.table" key."""
    written = pa.schema([
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ingest_ts", pa.int64(), nullable=False),
        pa.field("metrics", pa.map_(pa.field("key", pa.string(), nullable=False),
                                    pa.field("value", pa.float64(), nullable=False))),
        pa.field("attrs", pa.string()),
    ])
    schema, parquet_schema = _read_back(written, "telemetry")
    assert "repeated group field_id=-1 key_value" in parquet_schema and "required double field_id=-1 value" in parquet_schema
    return schema


SCHEMA = _sink_schema()


def _write(hour_dir: Path, name: str, table: pa.Table) -> Path:
    """Snappy, like the sinks."""
    hour_dir.mkdir(parents=True, exist_ok=True)
    path = hour_dir / name
    pq.write_table(table, path, compression="snappy")
    return path


def _build(table_dir: Path, hours, files_per_hour: int, per_file: int, part: str,
           row: Callable[[int, int, int], tuple], write: Callable[[Path, str, list], Path]) -> Path:
    """``table_dir/date=2024-01-01/hour=HH/part-<part>-<n>.parquet``: per hour ``files_per_hour``
    files of ``per_file`` rows, ``row(hour, n, i)`` the i-th row of file n."""
    for hour in hours:
        hour_dir = table_dir / f"date=2024-01-01/hour={hour:02d}"
        for n in range(files_per_hour):
            write(hour_dir, f"part-{part}-{n}.parquet", [row(hour, n, i) for i in range(per_file)])
    return table_dir


def write_part(hour_dir: Path, name: str, rows: list[tuple[str, int, int]]) -> Path:
    """rows: (device_id, seq, ts_ms)."""
    return _write(hour_dir, name, pa.table({
        "device_id": [d for d, _, _ in rows],
        "ts": pa.array([t for _, _, t in rows], pa.timestamp("ms", tz="UTC")),
        "seq": [s for _, s, _ in rows],
        "ingest_ts": [t + 7 for _, _, t in rows],
        "metrics": pa.array([[("temp", s / 10), ("n", float(s))] for _, s, _ in rows], SCHEMA.field("metrics").type),
        "attrs": ['{"fw":"2.0"}' if s % 2 else None for _, s, _ in rows],
    }, schema=SCHEMA))


def build_lake(root: Path, *, hours=(0, 1), devices=3, files_per_hour=6, per_file=5) -> Path:
    """``root/telemetry/date=2024-01-01/hour=HH/part-<uuid>-<n>.parquet``: each (device, seq)
    once; files hold interleaved devices and out-of-order ts, as the sink's do."""
    seq = collections.Counter()

    def row(hour: int, n: int, i: int) -> tuple[str, int, int]:
        d = f"dev-{(n + i) % devices:05d}"
        seq[d] += 1
        return d, seq[d], H0 + hour * 3_600_000 + ((n * 7 + i * 13) % 3_600) * 1000

    return _build(root / "telemetry", hours, files_per_hour, per_file, "5f1c0a2e", row, write_part)


def _shadow_sink_schema() -> pa.Schema:
    """The Arrow schema pyarrow reads from the shadow job's files (schemas/parquet/shadow_changes.md):
    fleet.lake.dataset's columns without the partition columns, through a Parquet file, plus the
    sink's "fleet.table" key. test_the_shadow_test_schema_is_the_sinks checks it against the sink."""
    from fleet.lake.dataset import SHADOW_CHANGES_SCHEMA

    return _read_back(pa.schema([f for f in SHADOW_CHANGES_SCHEMA if f.name not in ("date", "hour")]),
                      "shadow_changes")[0]


SHADOW_SCHEMA = _shadow_sink_schema()


def write_shadow_part(hour_dir: Path, name: str, rows: list[tuple[str, str, int, int]]) -> Path:
    """rows: (device_id, shadow_name, version, ts_ms)."""
    return _write(hour_dir, name, pa.Table.from_pylist([{
        "device_id": d, "shadow_name": s, "version": v, "ts": t, "source_kind": "operator" if v % 2 else "device",
        "actor": "ops-key" if v % 2 else d, "client_token": None if v % 2 else f"tok-{v}",
        "patch": json.dumps({"desired": {"v": v}}), "desired": json.dumps({"v": v}), "reported": "{}",
    } for d, s, v, t in rows], schema=SHADOW_SCHEMA))


def build_shadow_lake(root: Path, *, hours=(0, 1), devices=3, files_per_hour=6, per_file=5) -> Path:
    """``root/shadow_changes/date=2024-01-01/hour=HH/part-<uuid>-<n>.parquet``, like build_lake's:
    each (device, shadow, version) once; a file (one checkpoint) holds several devices' classic and
    named shadows in ts order, so the versions of one shadow are spread over files."""
    version = collections.Counter()

    def row(hour: int, n: int, i: int) -> tuple[str, str, int, int]:
        d, s = f"dev-{(n + i) % devices:05d}", ("", "config", "ota")[(2 * n + i) % 3]
        version[d, s] += 1
        return d, s, version[d, s], H0 + hour * 3_600_000 + n * 5_000 + i

    return _build(root / "shadow_changes", hours, files_per_hour, per_file, "3c9e0b7d", row, write_shadow_part)


# Per table: how the test builds it, what identifies a row, the order compacted rows must have.
BUILD = {"telemetry": build_lake, "shadow_changes": build_shadow_lake}
KEY_COLUMNS = {"telemetry": ("device_id", "seq"), "shadow_changes": ("device_id", "shadow_name", "version")}
ORDER = {"telemetry": ("device_id", "ts", "seq"), "shadow_changes": ("device_id", "shadow_name", "version")}


def keys(table_dir: Path) -> list[tuple]:
    """Every row's identity in the table (from its dir name), sorted: duplicates stay visible."""
    columns = KEY_COLUMNS[table_dir.name]
    t = ds.dataset(table_dir, format="parquet", partitioning="hive").to_table(columns=list(columns))
    return sorted(zip(*(t[c].to_pylist() for c in columns), strict=True))


def in_order(table: pa.Table, table_name: str) -> bool:
    rows = list(zip(*(table[c].to_pylist() for c in ORDER[table_name]), strict=True))
    return rows == sorted(rows)


def visible(hour_dir: Path) -> list[str]:
    return sorted(p.name for p in hour_dir.glob("*.parquet") if not p.name.startswith("."))


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != lc.LOCK_NAME}


def run(lake: Path, **kw) -> tuple[int, str]:
    out = io.StringIO()
    kw.setdefault("now", NOW)
    code = lc.run(lake, out=out, **kw)
    return code, out.getvalue()


def f(name: str, size: int = 1000) -> FileInfo:
    return FileInfo(name, size)


# -- plan --------------------------------------------------------------------------------------
def test_plan_waits_min_age_after_the_end_of_the_hour():
    parts = [Partition(f"date=2024-01-01/hour={h:02d}", (f("part-a-0.parquet"), f("part-a-1.parquet")))
             for h in range(24)]
    now = dt.datetime(2024, 1, 1, 5, 0, tzinfo=UTC)
    planned = [p.path for p in plan(parts, now=now, min_age=dt.timedelta(hours=2))]
    # hour 02 ended at 03:00, exactly 2 h ago; hour 03 ended 1 h ago
    assert planned == ["date=2024-01-01/hour=00", "date=2024-01-01/hour=01", "date=2024-01-01/hour=02"]
    assert [p.path for p in plan(parts, now=now, min_age=dt.timedelta(0))][-1] == "date=2024-01-01/hour=04"  # ended just now
    assert plan(parts, now=now - dt.timedelta(seconds=1), min_age=dt.timedelta(hours=2))[-1].path.endswith("01")


def test_plan_skips_single_file_partitions_and_ignores_hidden_and_foreign_files():
    parts = [
        Partition("date=2024-01-01/hour=00", (f("part-a-0.parquet"),)),
        Partition("date=2024-01-01/hour=01", (f("part-a-0.parquet"), f(".part-a-1.parquet.inprogress.5d1e"),
                                              f(".compacted-x.parquet.tmp"), f(".compaction-x.json"),
                                              f("_SUCCESS"), f("_tmp.parquet"), f(".hidden.parquet"),
                                              f("notes.txt"))),
        Partition("date=2024-01-01/hour=02", (f("part-a-0.parquet"), f("part-a-1.parquet"),
                                              f(".part-a-2.parquet.inprogress.77"))),
        Partition("date=2024-01-01", (f("part-a-0.parquet"), f("part-a-1.parquet"))),
        Partition("date=2024-13-01/hour=00", (f("part-a-0.parquet"), f("part-a-1.parquet"))),
        Partition("date=2024-01-01/hour=24", (f("part-a-0.parquet"), f("part-a-1.parquet"))),
    ]
    plans = plan(parts, now=NOW)
    assert [p.path for p in plans] == ["date=2024-01-01/hour=02"]
    assert [x.name for x in plans[0].groups[0].files] == ["part-a-0.parquet", "part-a-1.parquet"]


def test_plan_packs_files_up_to_the_target_and_leaves_big_files_alone():
    part = Partition("date=2024-01-01/hour=00", (
        f("compacted-big.parquet", 100), f("part-a-0.parquet", 30), f("part-a-1.parquet", 30),
        f("part-a-2.parquet", 30), f("part-a-3.parquet", 30), f("part-a-4.parquet", 95)))
    (p,) = plan([part], now=NOW, target_bytes=100)
    assert [[x.name for x in g.files] for g in p.groups] == [
        ["part-a-0.parquet", "part-a-1.parquet", "part-a-2.parquet"]]  # a-3 + a-4 > 100: a-4 alone, skipped
    (p,) = plan([part], now=NOW, target_bytes=1000)
    assert [len(g.files) for g in p.groups] == [6] and p.size == 315 and p.files == 6
    # an already compacted partition plans nothing
    assert plan([Partition("date=2024-01-01/hour=00", (f("compacted-x.parquet", 50),))], now=NOW) == []
    assert plan([Partition("date=2024-01-01/hour=00", (f("compacted-x.parquet", 100), f("compacted-y.parquet", 100)))],
                now=NOW, target_bytes=100) == []


def test_plan_rejects_a_naive_clock_and_bad_targets():
    with pytest.raises(ValueError):
        plan([], now=dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        plan([], now=NOW, target_bytes=0)


def test_parse_duration():
    assert planning.parse_duration("2h") == dt.timedelta(hours=2)
    assert planning.parse_duration("90m") == dt.timedelta(minutes=90)
    assert planning.parse_duration("3600s") == dt.timedelta(hours=1)
    assert planning.parse_duration("1d") == dt.timedelta(days=1)
    assert planning.parse_duration("1.5") == dt.timedelta(hours=1.5)
    for bad in ("", "-1h", "2 hours", "h"):
        with pytest.raises(ValueError):
            planning.parse_duration(bad)


# -- execution ---------------------------------------------------------------------------------
def test_compaction_keeps_every_row_once_with_the_same_schema(tmp_path):
    table_dir = build_lake(tmp_path)
    before = keys(table_dir)
    assert all(pq.read_schema(p).equals(SCHEMA, check_metadata=True) for p in table_dir.rglob("*.parquet"))

    code, out = run(tmp_path)

    assert code == 0, out
    assert "date=2024-01-01/hour=00: 6 files, " in out and " -> 1 file, " in out
    assert out.splitlines()[-1].startswith("total: 2 partition(s), 12 files")
    assert keys(table_dir) == before and len(before) == len(set(before)) == 60
    for hour in ("00", "01"):
        hour_dir = table_dir / f"date=2024-01-01/hour={hour}"
        (name,) = visible(hour_dir)
        assert name.startswith("compacted-") and name.endswith(".parquet")
        assert sorted(os.listdir(hour_dir)) == [name]  # no manifest or temp file left
        pf = pq.ParquetFile(hour_dir / name)
        assert pf.schema_arrow.equals(SCHEMA, check_metadata=True)
        assert pf.metadata.row_group(0).column(0).compression == "SNAPPY"
        assert "key_value" in str(pf.schema)  # the sink's Parquet layout for the map
        t = pf.read()
        order = list(zip(t["device_id"].to_pylist(), t["ts"].to_pylist(), t["seq"].to_pylist(), strict=True))
        assert order == sorted(order)
    table = ds.dataset(table_dir, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 60 and set(table["hour"].to_pylist()) == {0, 1}
    row = table.filter((ds.field("device_id") == "dev-00001") & (ds.field("seq") == 3)).to_pylist()[0]
    assert row["metrics"] == [("temp", 0.3), ("n", 3.0)] and row["attrs"] == '{"fw":"2.0"}'


@pytest.mark.parametrize("table", list(BUILD))
def test_rows_are_sorted_across_row_groups(tmp_path, monkeypatch, table):
    monkeypatch.setattr(merge, "ROW_GROUP_ROWS", 7)
    table_dir = BUILD[table](tmp_path, hours=(0,))
    assert run(tmp_path)[0] == 0
    (path,) = (table_dir / "date=2024-01-01/hour=00").glob("compacted-*.parquet")
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == 5 and pf.metadata.num_rows == 30
    assert in_order(pf.read(), table)


@pytest.mark.parametrize("table", list(BUILD))
def test_a_second_run_changes_nothing(tmp_path, table):
    BUILD[table](tmp_path)
    assert run(tmp_path)[0] == 0
    before = snapshot(tmp_path)
    code, out = run(tmp_path)
    assert code == 0 and snapshot(tmp_path) == before
    assert out.splitlines()[-1].startswith("total: 0 partition(s), 0 files")


def test_duckdb_reads_the_compacted_lake(tmp_path):
    duckdb = require.module("duckdb", "the [dev] extra")
    table_dir = build_lake(tmp_path)
    run(tmp_path)
    # leftovers of a run that was killed must not be read either (DuckDB's glob matches dot files)
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    (hour_dir / ".compacted-20240101T000000Z-0badc0de.parquet.tmp").write_bytes(b"half a file")
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT device_id, seq, hour, date FROM read_parquet('{table_dir}/*/*/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert sorted((d, s) for d, s, _, _ in rows) == keys(table_dir)
    assert {(str(date), int(hour)) for _, _, hour, date in rows} == {("2024-01-01", 0), ("2024-01-01", 1)}
    ts_type = con.execute(f"DESCRIBE SELECT ts FROM read_parquet('{table_dir}/*/*/*.parquet')").fetchall()[0][1]
    assert ts_type == "TIMESTAMP WITH TIME ZONE"


def test_files_appearing_after_planning_are_left_for_the_next_run(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0,))
    before = keys(table_dir)
    plans = planning.plan(planning.list_partitions(table_dir), now=NOW)
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    write_part(hour_dir, "part-9e7d1b3a-0.parquet", [("dev-00009", 1, H0 + 5)])  # a late record

    results = merge.execute(table_dir, plans, sort_keys=("device_id", "ts", "seq"))

    assert [len(r.groups) for r in results] == [1] and results[0].groups[0].sources == 6
    names = visible(hour_dir)
    assert len(names) == 2 and "part-9e7d1b3a-0.parquet" in names
    assert keys(table_dir) == sorted(before + [("dev-00009", 1)])
    assert run(tmp_path)[0] == 0  # the next run merges it in
    assert len(visible(hour_dir)) == 1 and keys(table_dir) == sorted(before + [("dev-00009", 1)])


def test_recent_hours_are_not_touched(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0, 22, 23))
    before = snapshot(table_dir / "date=2024-01-01/hour=22"), snapshot(table_dir / "date=2024-01-01/hour=23")
    code, _ = run(tmp_path, now=dt.datetime(2024, 1, 2, 0, 30, tzinfo=UTC))  # hour 22 ended 1.5 h ago
    assert code == 0
    assert len(visible(table_dir / "date=2024-01-01/hour=00")) == 1
    assert (snapshot(table_dir / "date=2024-01-01/hour=22"), snapshot(table_dir / "date=2024-01-01/hour=23")) == before


def test_target_size_splits_a_partition_into_several_files(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0,), files_per_hour=8)
    before = keys(table_dir)
    sizes = [p.stat().st_size for p in table_dir.rglob("*.parquet")]
    target = 3 * max(sizes)  # 3 files per group at most
    code, out = run(tmp_path, target_bytes=target)
    assert code == 0, out
    assert len(visible(table_dir / "date=2024-01-01/hour=00")) >= 3
    assert keys(table_dir) == before


def test_dry_run_changes_nothing(tmp_path):
    table_dir = build_lake(tmp_path)
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    (hour_dir / ".compacted-20240101T000000Z-0badc0de.parquet.tmp").write_bytes(b"orphan")
    before = snapshot(tmp_path)
    code, out = run(tmp_path, dry_run=True)
    assert code == 0
    assert snapshot(tmp_path) == before and not (table_dir / lc.LOCK_NAME).exists()
    assert "date=2024-01-01/hour=00: 6 files, " in out and "-> 1 file (planned)" in out
    assert "would remove orphan" in out and "nothing changed" in out


def test_a_partition_with_mixed_schemas_is_skipped(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0,))
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    pq.write_table(pa.table({"device_id": ["dev-x"], "seq": pa.array([1], pa.int64())}), hour_dir / "part-other-0.parquet")
    before = snapshot(tmp_path)
    code, out = run(tmp_path)
    assert code == 0 and "skipped 1 group(s)" in out and "different schema" in out
    assert snapshot(tmp_path) == before


def test_a_second_concurrent_run_is_refused(tmp_path):
    build_lake(tmp_path, hours=(0,))
    with lc._Lock(tmp_path / "telemetry"):
        before = snapshot(tmp_path)
        assert run(tmp_path)[0] == 1
        assert snapshot(tmp_path) == before
    assert run(tmp_path)[0] == 0


# -- shadow_changes and the choice of tables --------------------------------------------------
def test_the_shadow_test_schema_is_the_sinks():
    """SHADOW_SCHEMA's Parquet columns are jobs/shadow/sinks.py SHADOW_CHANGES_PARQUET's (what the
    Java sink writes): names, order, repetition, physical and logical types."""
    require.module("pyflink", "jobs.shadow.sinks imports PyFlink (apache-flink)")
    import re

    from jobs.shadow.sinks import SHADOW_CHANGES_PARQUET

    logical = {"STRING": "String", "TIMESTAMP(MILLIS,true)": "Timestamp(isAdjustedToUTC=true, timeUnit=milliseconds"}
    physical = {"binary": "BYTE_ARRAY", "int64": "INT64"}
    sink = [(rep, physical[typ], name, logical.get(ann or "", "None"))
            for rep, typ, name, ann in re.findall(r"(required|optional) (\w+) (\w+)(?: \((.+)\))?;", SHADOW_CHANGES_PARQUET)]
    buf = io.BytesIO()
    pq.write_table(SHADOW_SCHEMA.empty_table(), buf)
    buf.seek(0)
    ours = pq.ParquetFile(buf).schema
    assert len(sink) == len(ours) == 10
    for (rep, typ, name, ann), i in zip(sink, range(len(ours)), strict=True):
        col = ours.column(i)
        assert (name, typ, rep) == (col.name, col.physical_type, "required" if col.max_definition_level == 0 else "optional")
        assert str(col.logical_type).startswith(ann), (name, col.logical_type)


def test_shadow_changes_are_compacted_like_telemetry_in_the_same_run(tmp_path):
    from fleet.lake.dataset import shadow_changes_dataset

    telemetry_dir, shadow_dir = build_lake(tmp_path), build_shadow_lake(tmp_path)
    before = keys(telemetry_dir), keys(shadow_dir)
    assert len(before[1]) == len(set(before[1])) == 60

    code, out = run(tmp_path)

    assert code == 0, out
    assert "telemetry/date=2024-01-01/hour=00: 6 files, " in out and "shadow_changes/date=2024-01-01/hour=01: 6 files, " in out
    assert out.splitlines()[-1].startswith("total: 4 partition(s), 24 files")
    assert (keys(telemetry_dir), keys(shadow_dir)) == before
    for table_dir in (telemetry_dir, shadow_dir):
        for hour in ("00", "01"):
            hour_dir = table_dir / f"date=2024-01-01/hour={hour}"
            (name,) = os.listdir(hour_dir)  # no manifest, temp or source file left
            assert name.startswith("compacted-") and name.endswith(".parquet")
            pf = pq.ParquetFile(hour_dir / name)
            assert pf.schema_arrow.equals(SCHEMA if table_dir == telemetry_dir else SHADOW_SCHEMA, check_metadata=True)
            assert pf.metadata.row_group(0).column(0).compression == "SNAPPY"
            assert in_order(pf.read(), table_dir.name)
    table = shadow_changes_dataset(shadow_dir).to_table(filter=ds.field("device_id") == "dev-00001")
    assert set(table["hour"].to_pylist()) == {0, 1} and set(table["date"].to_pylist()) == {"2024-01-01"}
    row = table.filter((ds.field("shadow_name") == "config") & (ds.field("version") == 2)).to_pylist()
    assert [(r["source_kind"], r["actor"], r["client_token"], json.loads(r["patch"])) for r in row] == [
        ("device", "dev-00001", "tok-2", {"desired": {"v": 2}})]


def test_table_option_compacts_only_the_tables_named(tmp_path):
    telemetry_dir, shadow_dir = build_lake(tmp_path), build_shadow_lake(tmp_path)
    before = snapshot(telemetry_dir)
    code, out = run(tmp_path, tables=["shadow_changes"])
    assert code == 0, out
    assert "telemetry" not in out and out.splitlines()[-1].startswith("total: 2 partition(s), 12 files")
    assert snapshot(telemetry_dir) == before and not (telemetry_dir / lc.LOCK_NAME).exists()
    assert all(len(visible(d)) == 1 for d in shadow_dir.glob("date=*/hour=*"))
    assert run(tmp_path, tables=["telemetry", "telemetry"])[1].splitlines()[-1].startswith("total: 2 partition(s)")
    with pytest.raises(ValueError, match="unknown lake table"):
        run(tmp_path, tables=["shadows"])


def test_a_missing_table_is_reported_and_the_others_compacted(tmp_path):
    build_shadow_lake(tmp_path)
    code, out = run(tmp_path)
    assert code == 0 and f"telemetry: no such table under {tmp_path}" in out
    assert out.splitlines()[-1].startswith("total: 2 partition(s), 12 files")
    code, out = run(tmp_path, dry_run=True)
    assert code == 0 and out.splitlines()[-1].startswith("dry run: 0 partition(s)")


def test_a_locked_table_fails_the_run_but_the_others_are_compacted(tmp_path):
    telemetry_dir, shadow_dir = build_lake(tmp_path, hours=(0,)), build_shadow_lake(tmp_path, hours=(0,))
    with lc._Lock(shadow_dir):
        before = snapshot(shadow_dir)
        code, out = run(tmp_path)
        assert code == 1 and snapshot(shadow_dir) == before
    assert len(visible(telemetry_dir / "date=2024-01-01/hour=00")) == 1
    assert run(tmp_path)[0] == 0 and len(visible(shadow_dir / "date=2024-01-01/hour=00")) == 1


def test_dry_run_plans_every_table(tmp_path):
    build_lake(tmp_path, hours=(0,)), build_shadow_lake(tmp_path)
    before = snapshot(tmp_path)
    code, out = run(tmp_path, dry_run=True)
    assert code == 0 and snapshot(tmp_path) == before
    assert out.count("(planned)") == 3 and "shadow_changes/date=2024-01-01/hour=01: 6 files, " in out
    assert out.splitlines()[-1].startswith("dry run: 3 partition(s), 18 files")


def test_files_of_another_table_are_not_merged(tmp_path):
    """Shadow changes in a telemetry partition have no ts/seq to sort by: skipped, nothing changed."""
    hour_dir = tmp_path / "telemetry" / "date=2024-01-01" / "hour=00"
    write_shadow_part(hour_dir, "part-a-0.parquet", [("dev-00000", "", 1, H0)])
    write_shadow_part(hour_dir, "part-a-1.parquet", [("dev-00000", "", 2, H0 + 1)])
    before = snapshot(tmp_path)
    code, out = run(tmp_path)
    assert code == 0 and "skipped 1 group(s)" in out and "has no column seq to sort by" in out
    assert snapshot(tmp_path) == before


# -- crash recovery ----------------------------------------------------------------------------
def _crash_after_rename(monkeypatch, table_dir: Path, deleted_before_crash: int) -> Path:
    """Run one compaction and 'kill' it after the rename, once some sources are deleted."""
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    real_unlink, calls = merge._unlink, []

    def dying_unlink(path: Path) -> bool:
        if path.name.startswith("part-"):
            if len(calls) == deleted_before_crash:
                raise KeyboardInterrupt("killed")
            calls.append(path)
        return real_unlink(path)

    monkeypatch.setattr(merge, "_unlink", dying_unlink)
    (p,) = planning.plan(planning.list_partitions(table_dir), now=NOW)
    with pytest.raises(KeyboardInterrupt):
        merge.compact_group(hour_dir, p.groups[0], sort_keys=lc.TABLES[table_dir.name].sort_keys)
    monkeypatch.setattr(merge, "_unlink", real_unlink)
    return hour_dir


@pytest.mark.parametrize("table", list(BUILD))
@pytest.mark.parametrize("deleted_before_crash", [0, 4])
def test_a_run_killed_after_the_rename_is_finished_by_the_next_run(tmp_path, monkeypatch, deleted_before_crash, table):
    table_dir = BUILD[table](tmp_path, hours=(0,))
    before = keys(table_dir)
    hour_dir = _crash_after_rename(monkeypatch, table_dir, deleted_before_crash)
    (manifest,) = hour_dir.glob(".compaction-*.json")
    doc = json.loads(manifest.read_text())
    assert (hour_dir / doc["output"]).exists() and len(doc["sources"]) == 6 and doc["rows"] == 30
    assert len(keys(table_dir)) == 30 + 30 - deleted_before_crash * 5  # the double-visibility window

    code, out = run(tmp_path)

    assert code == 0, out
    assert f"{table}/date=2024-01-01/hour=00: leftover compaction finished" in out
    assert keys(table_dir) == before
    assert sorted(os.listdir(hour_dir)) == [doc["output"]]
    assert in_order(pq.read_table(hour_dir / doc["output"]), table)


@pytest.mark.parametrize("table", list(BUILD))
def test_a_run_killed_before_the_rename_is_rolled_back(tmp_path, table):
    table_dir = BUILD[table](tmp_path, hours=(0,))
    before = keys(table_dir)
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    sources = visible(hour_dir)
    m = merge.Manifest("20240101T020000Z-0badc0de", tuple(sources), 30)
    m.write(hour_dir)
    (hour_dir / m.temp).write_bytes(b"PAR1 half written")
    (hour_dir / ".compaction-20240101T020500Z-12345678.json.tmp").write_text("{")  # killed while writing a manifest
    (hour_dir / ".compacted-20240101T010000Z-87654321.parquet.tmp").write_bytes(b"orphan")  # no manifest

    code, out = run(tmp_path)

    assert code == 0, out
    assert "leftover compaction rolled back" in out and out.count("leftover compaction removed orphan") == 2
    assert keys(table_dir) == before
    (name,) = os.listdir(hour_dir)
    assert name.startswith("compacted-") and name != m.output


def test_an_output_that_does_not_match_its_manifest_is_left_for_a_human(tmp_path):
    table_dir = build_lake(tmp_path, hours=(0, 1))
    hour_dir = table_dir / "date=2024-01-01/hour=00"
    sources = visible(hour_dir)
    m = merge.Manifest("20240101T020000Z-0badc0de", tuple(sources), 999)
    m.write(hour_dir)
    write_part(hour_dir, m.output, [("dev-00000", 1000, H0)])
    before = snapshot(hour_dir)

    code, out = run(tmp_path)

    assert code == 1 and "does not match" in out
    assert snapshot(hour_dir) == before  # sources kept, partition not compacted
    assert len(visible(table_dir / "date=2024-01-01/hour=01")) == 1  # the others are


# -- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def cli_lake(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_LAKE_DIR", str(tmp_path))
    monkeypatch.delenv("FLEET_CONFIG_FILE", raising=False)
    monkeypatch.setattr("fleet.logs.configure_logging", lambda *a, **k: None)
    return build_lake(tmp_path)


def test_cli_dry_run_and_compact(cli_lake, capsys):
    from fleet.cli import main

    before = snapshot(cli_lake)
    assert main(["lake", "compact", "--dry-run"]) == 0
    assert "(planned)" in capsys.readouterr().out and snapshot(cli_lake) == before
    assert main(["lake", "compact", "--min-age", "90m", "--target-mb", "64"]) == 0
    assert "total: 2 partition(s)" in capsys.readouterr().out
    assert all(len(visible(d)) == 1 for d in cli_lake.glob("date=*/hour=*"))


def test_cli_table_option(cli_lake, capsys):
    from fleet.cli import main

    shadow_dir = build_shadow_lake(cli_lake.parent)
    before = snapshot(cli_lake)
    assert main(["lake", "compact", "--table", "shadow_changes"]) == 0
    assert "total: 2 partition(s)" in capsys.readouterr().out and snapshot(cli_lake) == before
    assert all(len(visible(d)) == 1 for d in shadow_dir.glob("date=*/hour=*"))
    assert main(["lake", "compact", "--table", "telemetry", "--table", "shadow_changes"]) == 0
    assert "total: 2 partition(s)" in capsys.readouterr().out
    assert all(len(visible(d)) == 1 for d in cli_lake.glob("date=*/hour=*"))


@pytest.mark.parametrize("args", [["--min-age", "soon"], ["--min-age", "-2h"], ["--target-mb", "0"],
                                  ["--target-mb", "lots"], ["--bogus"], ["--table", "shadows"]])
def test_cli_bad_arguments_exit_2(cli_lake, args):
    from fleet.cli import main

    before = snapshot(cli_lake)
    with pytest.raises(SystemExit) as exc:
        main(["lake", "compact", *args])
    assert exc.value.code == 2 and snapshot(cli_lake) == before


# -- the API's cold reads ----------------------------------------------------------------------
class _NoCassandra:
    def prepare(self, cql):
        return cql

    def execute(self, *a, **k):  # pragma: no cover - cold days never touch Cassandra
        raise AssertionError("Cassandra was queried")


def test_telemetry_store_reads_the_same_points_after_compaction(tmp_path):
    from fleet.telemetry.query import TimeRange
    from fleet.telemetry.store import TelemetryStore

    build_lake(tmp_path)
    store = TelemetryStore(_NoCassandra(), tmp_path, raw_ttl_days=30, rollup_ttl_days=30)
    rng = TimeRange(H0, H0 + 2 * 3_600_000)
    now_ms = H0 + 90 * 86_400_000  # the whole day is beyond the TTLs: read from the lake

    def read():
        pages = {d: store.points(d, rng, limit=1000, cursor=None, metrics=None, now_ms=now_ms)
                 for d in ("dev-00000", "dev-00001", "dev-00002")}
        minutes = store.rollup_buckets("dev-00001", "temp", rng, now_ms=now_ms)
        return pages, minutes

    before = read()
    assert sum(len(points) for points, _ in before[0].values()) == 60
    assert run(tmp_path)[0] == 0
    # a leftover of a killed run is not read either
    (tmp_path / "telemetry/date=2024-01-01/hour=00/.compacted-20240101T000000Z-0badc0de.parquet.tmp").write_bytes(b"x")
    pages, minutes = read()
    assert pages == before[0]
    # the same buckets; sums may differ in the last bit (rows are added up in another order)
    assert [(b.start_ms, b.min, b.max, b.count) for b in minutes] == [(b.start_ms, b.min, b.max, b.count) for b in before[1]]
    assert [b.sum for b in minutes] == pytest.approx([b.sum for b in before[1]])
