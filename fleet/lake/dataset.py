"""Reading the Parquet lake (layout and columns: schemas/parquet/telemetry.md).

Every reader goes through :func:`telemetry_dataset` so they all agree on what a committed file is
(visible ``*.parquet``; in-progress and compaction temp files are hidden) and on the columns. A
partition directory can exist before its first checkpoint commits a file into it: pyarrow then
discovers no schema at all, and any column filter fails ("No match for FieldRef.Name"). Such a
lake reads here as an empty table with the lake's columns.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

HIDDEN_PREFIXES = [".", "_"]

# The columns TelemetryLakeSink writes, plus the hive partition columns as pyarrow infers them.
TELEMETRY_SCHEMA = pa.schema([
    pa.field("device_id", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ingest_ts", pa.int64(), nullable=False),
    pa.field("metrics", pa.map_(pa.string(), pa.field("value", pa.float64(), nullable=False))),
    pa.field("attrs", pa.string()),
    pa.field("date", pa.string()),
    pa.field("hour", pa.int32()),
])


def telemetry_dataset(path: Path | str) -> ds.Dataset:
    """The committed telemetry files under ``path`` (the table root or one ``date=`` partition)."""
    path = Path(path)
    if path.is_dir():
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive",
                             exclude_invalid_files=True, ignore_prefixes=HIDDEN_PREFIXES)
        if dataset.files:
            return dataset
    return ds.InMemoryDataset(TELEMETRY_SCHEMA.empty_table())
