"""Reading the Parquet lake (layout and columns: schemas/parquet/telemetry.md, shadow_changes.md).

Every reader goes through :func:`telemetry_dataset` or :func:`shadow_changes_dataset` so they all
agree on what a committed file is (visible ``*.parquet``; in-progress and compaction temp files are
hidden) and on the columns. A partition directory can exist before its first checkpoint commits a
file into it: pyarrow then discovers no schema at all, and any column filter fails ("No match for
FieldRef.Name"). Such a lake reads here as an empty table with the table's columns.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

HIDDEN_PREFIXES = [".", "_"]

# The hive partition columns of every lake table, as pyarrow infers them.
_PARTITIONS = [pa.field("date", pa.string()), pa.field("hour", pa.int32())]

# The columns TelemetryLakeSink writes, plus the partition columns.
TELEMETRY_SCHEMA = pa.schema([
    pa.field("device_id", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ingest_ts", pa.int64(), nullable=False),
    pa.field("metrics", pa.map_(pa.string(), pa.field("value", pa.float64(), nullable=False))),
    pa.field("attrs", pa.string()),
    *_PARTITIONS,
])

# The columns the shadow job writes (jobs/shadow/sinks.py SHADOW_CHANGES_PARQUET), plus the partition columns.
SHADOW_CHANGES_SCHEMA = pa.schema([
    pa.field("device_id", pa.string(), nullable=False),
    pa.field("shadow_name", pa.string(), nullable=False),
    pa.field("version", pa.int64(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("source_kind", pa.string(), nullable=False),
    pa.field("actor", pa.string(), nullable=False),
    pa.field("client_token", pa.string()),
    pa.field("patch", pa.string(), nullable=False),
    pa.field("desired", pa.string(), nullable=False),
    pa.field("reported", pa.string(), nullable=False),
    *_PARTITIONS,
])


def lake_dataset(path: Path | str, schema: pa.Schema) -> ds.Dataset:
    """The committed files of a lake table under ``path`` (the table root or one ``date=``
    partition); an empty table of ``schema`` when there are none."""
    path = Path(path)
    if path.is_dir():
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive",
                             exclude_invalid_files=True, ignore_prefixes=HIDDEN_PREFIXES)
        if dataset.files:
            return dataset
    return ds.InMemoryDataset(schema.empty_table())


def telemetry_dataset(path: Path | str) -> ds.Dataset:
    """The committed telemetry files under ``path`` (``<lake>/telemetry`` or one ``date=`` partition)."""
    return lake_dataset(path, TELEMETRY_SCHEMA)


def shadow_changes_dataset(path: Path | str) -> ds.Dataset:
    """The committed shadow changes under ``path`` (``<lake>/shadow_changes`` or one ``date=`` partition)."""
    return lake_dataset(path, SHADOW_CHANGES_SCHEMA)
