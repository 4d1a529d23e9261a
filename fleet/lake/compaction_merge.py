"""Lake compaction, step 2: the crash-safe merge of a plan's groups and the recovery of a killed
run, for any table (the protocol: fleet/lake/compaction.py). Only the sort keys differ per table."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.infra.durable import fsync_path
from fleet.lake.compaction_plan import DATA_SUFFIX, HOURLY, Layout, MergeGroup, PartitionPlan, is_data_file, partition_dirs
from fleet.logs import log_fields

if TYPE_CHECKING:  # pyarrow ships no type hints: Any to mypy, a name for the reader
    import pyarrow as pa

log = logging.getLogger("fleet.lake.compaction")

ROW_GROUP_ROWS = 128 * 1024
OUTPUT_PREFIX = "compacted-"
TEMP_PREFIX = ".compacted-"
TEMP_SUFFIX = ".parquet.tmp"
MANIFEST_PREFIX = ".compaction-"
MANIFEST_SUFFIX = ".json"
MANIFEST_TEMP_SUFFIX = ".json.tmp"


class CompactionError(RuntimeError):
    pass


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


# -- the manifest ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    id: str
    sources: tuple[str, ...]
    rows: int

    @property
    def output(self) -> str:
        return f"{OUTPUT_PREFIX}{self.id}{DATA_SUFFIX}"

    @property
    def temp(self) -> str:
        return f"{TEMP_PREFIX}{self.id}{TEMP_SUFFIX}"

    @property
    def name(self) -> str:
        return f"{MANIFEST_PREFIX}{self.id}{MANIFEST_SUFFIX}"

    def to_json(self) -> str:
        return json.dumps({"version": 1, "id": self.id, "output": self.output, "temp": self.temp,
                           "sources": list(self.sources), "rows": self.rows}, indent=1)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        doc = json.loads(path.read_text())
        manifest = cls(str(doc["id"]), tuple(str(s) for s in doc["sources"]), int(doc["rows"]))
        if path.name != manifest.name or not all(is_data_file(s) and "/" not in s for s in manifest.sources):
            raise ValueError("inconsistent manifest")
        return manifest

    def write(self, directory: Path) -> None:
        """Atomically: a half-written manifest never exists under its real name."""
        tmp = directory / (self.name[: -len(MANIFEST_SUFFIX)] + MANIFEST_TEMP_SUFFIX)
        with open(tmp, "w") as fh:
            fh.write(self.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / self.name)
        fsync_path(directory)


# -- recovery ----------------------------------------------------------------------------------
@dataclass
class Recovery:
    partition: str
    action: str  # "finished" | "rolled back" | "removed orphan" | "error"
    detail: str


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    rows: int = pq.read_metadata(path).num_rows
    return rows


def _read(path: Path) -> pa.Table:
    """One file's rows, as stored (no partition columns from the path)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        return pf.read()


def recover(table_dir: Path, *, layout: Layout = HOURLY, dry_run: bool = False) -> list[Recovery]:
    """Finish or roll back what a killed run left behind, in every partition of the table.

    - manifest and its output file present: the rename happened, so the output holds every source
      row: delete the sources still present (checking the output's row count first), then the
      manifest;
    - manifest without its output: the rename did not happen, so no source was deleted: delete the
      temporary file and the manifest;
    - a temporary output or manifest file that no manifest names: delete it.
    A manifest that cannot be read is reported and left alone, with its partition (see
    ``fleet.lake.compaction.run``).
    """
    done: list[Recovery] = []
    table = table_dir.name
    for rel, part_dir in partition_dirs(table_dir, layout):
        names = set(os.listdir(part_dir))
        claimed: set[str] = set()
        for name in sorted(n for n in names if n.startswith(MANIFEST_PREFIX) and n.endswith(MANIFEST_SUFFIX)):
            path = part_dir / name
            try:
                m = Manifest.load(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                done.append(Recovery(rel, "error", f"unreadable manifest {name}: {exc}"))
                log.error("unreadable compaction manifest",
                          extra=log_fields(table=table, partition=rel, manifest=name, error=str(exc)))
                continue
            claimed.add(m.temp)
            if m.output in names:
                try:
                    rows = _num_rows(part_dir / m.output)
                except Exception as exc:  # noqa: BLE001 - any read error: leave it to a human
                    rows, why = None, f"unreadable: {exc}"
                else:
                    why = f"{rows} rows, the manifest says {m.rows}"
                if rows != m.rows:
                    done.append(Recovery(rel, "error", f"{m.output} does not match {name} ({why}); left alone"))
                    log.error("compacted file does not match its manifest",
                              extra=log_fields(table=table, partition=rel, manifest=name, output=m.output, detail=why))
                    continue
                present = [s for s in m.sources if s in names]
                detail = f"{m.output} is in place; deleted {len(present)} of {len(m.sources)} source files"
                if not dry_run:
                    for s in present:
                        _unlink(part_dir / s)
                    _unlink(part_dir / m.temp)
                    fsync_path(part_dir)
                    _unlink(path)
                    fsync_path(part_dir)
                done.append(Recovery(rel, "finished", detail))
            else:
                missing = [s for s in m.sources if s not in names]
                detail = f"{m.output} was never renamed into place; removed the temporary file, sources kept"
                if missing:  # cannot come from this module: sources go only after the rename
                    detail += f" ({len(missing)} sources were already missing)"
                if not dry_run:
                    _unlink(part_dir / m.temp)
                    _unlink(path)
                    fsync_path(part_dir)
                done.append(Recovery(rel, "rolled back", detail))
            log.warning("leftover compaction " + done[-1].action,
                        extra=log_fields(table=table, partition=rel, manifest=name, detail=done[-1].detail, dry_run=dry_run))
        orphans = sorted(n for n in names if n not in claimed and (
            (n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX))
            or (n.startswith(MANIFEST_PREFIX) and n.endswith(MANIFEST_TEMP_SUFFIX))))
        for n in orphans:
            if not dry_run:
                _unlink(part_dir / n)
            done.append(Recovery(rel, "removed orphan", n))
            log.warning("removed orphan compaction file", extra=log_fields(table=table, partition=rel, file=n, dry_run=dry_run))
    return done


# -- execution ---------------------------------------------------------------------------------
@dataclass
class GroupResult:
    sources: int
    source_bytes: int
    rows: int
    output: str
    output_bytes: int


@dataclass
class PartitionResult:
    path: str
    groups: list[GroupResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


class _Skip(Exception):
    """The group cannot be merged as planned; nothing was changed."""


def _new_id(now: dt.datetime) -> str:
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def compact_group(part_dir: Path, group: MergeGroup, *, sort_keys: Sequence[str],
                  now: dt.datetime | None = None) -> GroupResult:
    """Merge one group of files of ``part_dir`` into one file, rows sorted by ``sort_keys`` (see
    fleet/lake/compaction.py for the protocol)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f in group.files:
        try:
            size = os.stat(part_dir / f.name).st_size
        except FileNotFoundError:
            raise _Skip(f"{f.name} disappeared since planning") from None
        if size != f.size:
            raise _Skip(f"{f.name} changed size since planning")
    # Footers only, and no file left open (a group can hold thousands of files). The output gets
    # the first file's Arrow schema, metadata included; the others must match it field for field.
    schema = pq.read_schema(part_dir / group.files[0].name)
    rows = 0
    for f in group.files:
        if not pq.read_schema(part_dir / f.name).equals(schema, check_metadata=False):
            raise _Skip(f"{f.name} has a different schema than {group.files[0].name}")
        rows += pq.read_metadata(part_dir / f.name).num_rows
    missing = [k for k in sort_keys if k not in schema.names]
    if missing:  # not this table's files: sorting would fail after the manifest is written
        raise _Skip(f"{group.files[0].name} has no column {', '.join(missing)} to sort by")

    m = Manifest(_new_id(now or dt.datetime.now(dt.UTC)), tuple(f.name for f in group.files), rows)
    output, temp = part_dir / m.output, part_dir / m.temp
    if output.exists() or temp.exists():  # a uuid collision; never overwrite
        raise _Skip(f"{m.output} exists already")
    m.write(part_dir)
    renamed = False
    try:
        table = pa.concat_tables([_read(part_dir / f.name).replace_schema_metadata(schema.metadata)
                                  for f in group.files])
        order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in sort_keys])
        # store_schema: the Arrow schema (and the sink's "fleet.table" key) read back unchanged;
        # the Parquet schema is the sink's (same names, repetition, logical types). Sorted one row
        # group at a time: memory is the sources' rows plus one row group, not two sorted copies.
        with pq.ParquetWriter(str(temp), schema, compression="snappy", use_dictionary=True,
                              write_statistics=True, store_schema=True) as writer:
            for start in range(0, len(order), ROW_GROUP_ROWS):
                writer.write_table(table.take(order[start:start + ROW_GROUP_ROWS]), row_group_size=ROW_GROUP_ROWS)
        del table, order
        fsync_path(temp)
        written = pq.read_metadata(temp)
        if written.num_rows != rows or not pq.read_schema(temp).equals(schema, check_metadata=True):
            raise CompactionError(f"{m.temp}: {written.num_rows} rows or its schema do not match the sources "
                                  f"({rows} rows)")
        for f in group.files:
            if not (part_dir / f.name).exists():
                raise _Skip(f"{f.name} disappeared during the merge")
        os.replace(temp, output)
        renamed = True
        fsync_path(part_dir)
    except BaseException:
        if not renamed:  # roll back: the sources were not touched
            _unlink(temp)
            _unlink(part_dir / m.name)
            fsync_path(part_dir)
        raise
    # From here the output holds every source row; a crash is finished by recover().
    for f in group.files:
        _unlink(part_dir / f.name)
    fsync_path(part_dir)
    _unlink(part_dir / m.name)
    fsync_path(part_dir)
    return GroupResult(len(group.files), group.size, rows, m.output, output.stat().st_size)


def execute(table_dir: Path, plans: Sequence[PartitionPlan], *, sort_keys: Sequence[str],
            on_result: Callable[[PartitionPlan, PartitionResult], None] | None = None) -> list[PartitionResult]:
    """Merge the plans' groups, partition by partition; ``on_result`` hears of each as it is done."""
    results = []
    table = table_dir.name
    for p in plans:
        part_dir = table_dir / p.path
        result = PartitionResult(p.path)
        for group in p.groups:
            try:
                result.groups.append(compact_group(part_dir, group, sort_keys=sort_keys))
            except _Skip as exc:
                result.skipped.append(str(exc))
                log.warning("compaction group skipped", extra=log_fields(table=table, partition=p.path, reason=str(exc)))
            except Exception as exc:  # noqa: BLE001 - report, go on with the other partitions
                result.error = f"{type(exc).__name__}: {exc}"
                log.exception("compaction failed", extra=log_fields(table=table, partition=p.path))
                break
        results.append(result)
        if on_result is not None:
            on_result(p, result)
        if result.groups:
            log.info("partition compacted", extra=log_fields(
                table=table, partition=p.path, files=sum(g.sources for g in result.groups),
                bytes_in=sum(g.source_bytes for g in result.groups), rows=sum(g.rows for g in result.groups),
                outputs=[g.output for g in result.groups], bytes_out=sum(g.output_bytes for g in result.groups)))
    return results


