"""Compaction of the telemetry lake: merge an hour partition's small files into one (or a few).

The telemetry job's FileSink rolls a Parquet file on every checkpoint (every 5 s), so an hour
partition ``<lake>/telemetry/date=YYYY-MM-DD/hour=HH/`` collects ~720 small ``part-*.parquet``
files. ``fleet lake compact`` (hourly, from cron or a Kubernetes CronJob) rewrites the partitions
whose hour ended at least ``min_age`` ago into ``compacted-<utc>-<uuid8>.parquet`` files of up to
``target_bytes``: same Arrow schema, rows sorted by (device_id, ts, seq), Snappy, 128k-row row
groups.

Protocol, per output file (``<id>`` = ``<utc timestamp>-<uuid8>``), all in the partition dir:

1. ``.compaction-<id>.json`` (the manifest: source names, output name, expected row count) is
   written to a temporary name, fsynced and renamed into place, before anything else;
2. the merged rows go to ``.compacted-<id>.parquet.tmp``, which is fsynced and checked (row count,
   schema). Hidden *and* not ending in ``.parquet``: DuckDB's ``*/*/*.parquet`` glob matches dot
   files, pyarrow.dataset ignores them;
3. ``os.replace`` to ``compacted-<id>.parquet`` (atomic), directory fsync;
4. the sources are deleted, directory fsync;
5. the manifest is deleted.

Readers that list the partition between 3 and 4 (a few milliseconds) see the rows twice, and a
reader that listed the sources just before 4 but opens one after it gets "file not found"; both
go away on a retry. Nothing else is ever visible: a crash anywhere is finished (after 3: delete
the sources still present) or rolled back (before 3: delete the temporary file) by the next run's
:func:`recover`, so each (device_id, seq) ends up exactly once. Only files listed when the plan
was made are touched; files the job commits later (late records) wait for the next run. One run
at a time per lake (``.compaction.lock``, ``flock``).

No Flink, Kafka or web imports: this runs from a plain cron job with pyarrow.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from fleet.logs import log_fields

if TYPE_CHECKING:  # pyarrow ships no type hints: Any to mypy, a name for the reader
    import pyarrow as pa

log = logging.getLogger("fleet.lake.compaction")

TABLE = "telemetry"
MIB = 1024 * 1024
DEFAULT_MIN_AGE = dt.timedelta(hours=2)
DEFAULT_TARGET_BYTES = 256 * MIB
ROW_GROUP_ROWS = 128 * 1024
SORT_KEYS = [("device_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")]

OUTPUT_PREFIX = "compacted-"
DATA_SUFFIX = ".parquet"
TEMP_PREFIX = ".compacted-"
TEMP_SUFFIX = ".parquet.tmp"
MANIFEST_PREFIX = ".compaction-"
MANIFEST_SUFFIX = ".json"
MANIFEST_TEMP_SUFFIX = ".json.tmp"
LOCK_NAME = ".compaction.lock"

_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}


class CompactionError(RuntimeError):
    pass


class LakeLocked(CompactionError):
    pass


# -- planning (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int


@dataclass(frozen=True)
class Partition:
    """One ``date=…/hour=…`` directory as listed: ``path`` is relative to the table dir."""

    path: str
    files: tuple[FileInfo, ...]


@dataclass(frozen=True)
class MergeGroup:
    """Source files that become one output file."""

    files: tuple[FileInfo, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class PartitionPlan:
    path: str
    hour_start: dt.datetime
    groups: tuple[MergeGroup, ...]

    @property
    def files(self) -> int:
        return sum(len(g.files) for g in self.groups)

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)


def is_data_file(name: str) -> bool:
    """What a reader sees: visible (no leading ``.``/``_``) ``*.parquet`` files."""
    return not name.startswith((".", "_")) and name.endswith(DATA_SUFFIX)


def partition_hour(path: str) -> dt.datetime | None:
    """Start (UTC) of the hour of ``date=YYYY-MM-DD/hour=HH``; None for anything else."""
    m = _PARTITION.match(path.replace(os.sep, "/"))
    if not m:
        return None
    try:
        day = dt.date.fromisoformat(m.group(1))
    except ValueError:
        return None
    hour = int(m.group(2))
    if hour > 23:
        return None
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


def plan(partitions: Iterable[Partition], *, now: dt.datetime, min_age: dt.timedelta = DEFAULT_MIN_AGE,
         target_bytes: int = DEFAULT_TARGET_BYTES) -> list[PartitionPlan]:
    """Which files of which partitions to merge, oldest partition first.

    A partition qualifies once its hour ended at least ``min_age`` before ``now`` (the job still
    appends late records to recent hours). Its visible ``*.parquet`` files smaller than
    ``target_bytes`` are packed, in name order, into groups of at most ``target_bytes``; each
    group of two or more files becomes one output file. Files at least ``target_bytes`` big are
    left as they are, so an already compacted partition plans nothing (idempotent).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if target_bytes <= 0:
        raise ValueError("target_bytes must be positive")
    if min_age < dt.timedelta(0):
        raise ValueError("min_age must not be negative")
    plans = []
    for part in partitions:
        start = partition_hour(part.path)
        if start is None or now - (start + dt.timedelta(hours=1)) < min_age:
            continue
        small = sorted((f for f in part.files if is_data_file(f.name) and f.size < target_bytes),
                       key=lambda f: f.name)
        groups: list[MergeGroup] = []
        current: list[FileInfo] = []
        for f in small:
            if current and sum(c.size for c in current) + f.size > target_bytes:
                groups.append(MergeGroup(tuple(current)))
                current = []
            current.append(f)
        if current:
            groups.append(MergeGroup(tuple(current)))
        groups = [g for g in groups if len(g.files) > 1]
        if groups:
            plans.append(PartitionPlan(part.path, start, tuple(groups)))
    plans.sort(key=lambda p: p.hour_start)
    return plans


def parse_duration(text: str) -> dt.timedelta:
    """``2h``, ``90m``, ``3600s``, ``1d``; a bare number is hours."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 2h, 90m, 3600s, 1d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


# -- listing -----------------------------------------------------------------------------------
def list_partitions(table_dir: Path) -> list[Partition]:
    """The table's ``date=*/hour=*`` directories and their visible ``*.parquet`` files."""
    out: list[Partition] = []
    if not table_dir.is_dir():
        return out
    for date_dir in sorted(table_dir.glob("date=*")):
        for hour_dir in sorted(date_dir.glob("hour=*")):
            if not hour_dir.is_dir():
                continue
            files = []
            with os.scandir(hour_dir) as entries:
                for e in entries:
                    if is_data_file(e.name) and e.is_file(follow_symlinks=False):
                        files.append(FileInfo(e.name, e.stat(follow_symlinks=False).st_size))
            out.append(Partition(f"{date_dir.name}/{hour_dir.name}", tuple(sorted(files, key=lambda f: f.name))))
    return out


def _fsync(path: Path) -> None:
    """fsync a file or a directory (Linux: a read-only descriptor will do)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        _fsync(directory)


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


def recover(table_dir: Path, *, dry_run: bool = False) -> list[Recovery]:
    """Finish or roll back what a killed run left behind, in every partition.

    - manifest and its output file present: the rename happened, so the output holds every source
      row: delete the sources still present (checking the output's row count first), then the
      manifest;
    - manifest without its output: the rename did not happen, so no source was deleted: delete the
      temporary file and the manifest;
    - a temporary output or manifest file that no manifest names: delete it.
    A manifest that cannot be read is reported and left alone, with its partition (see
    :func:`run`).
    """
    done: list[Recovery] = []
    if not table_dir.is_dir():
        return done
    for hour_dir in sorted(table_dir.glob("date=*/hour=*")):
        rel = f"{hour_dir.parent.name}/{hour_dir.name}"
        names = set(os.listdir(hour_dir))
        claimed: set[str] = set()
        for name in sorted(n for n in names if n.startswith(MANIFEST_PREFIX) and n.endswith(MANIFEST_SUFFIX)):
            path = hour_dir / name
            try:
                m = Manifest.load(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                done.append(Recovery(rel, "error", f"unreadable manifest {name}: {exc}"))
                log.error("unreadable compaction manifest", extra=log_fields(partition=rel, manifest=name, error=str(exc)))
                continue
            claimed.add(m.temp)
            if m.output in names:
                try:
                    rows = _num_rows(hour_dir / m.output)
                except Exception as exc:  # noqa: BLE001 - any read error: leave it to a human
                    rows, why = None, f"unreadable: {exc}"
                else:
                    why = f"{rows} rows, the manifest says {m.rows}"
                if rows != m.rows:
                    done.append(Recovery(rel, "error", f"{m.output} does not match {name} ({why}); left alone"))
                    log.error("compacted file does not match its manifest",
                              extra=log_fields(partition=rel, manifest=name, output=m.output, detail=why))
                    continue
                present = [s for s in m.sources if s in names]
                detail = f"{m.output} is in place; deleted {len(present)} of {len(m.sources)} source files"
                if not dry_run:
                    for s in present:
                        _unlink(hour_dir / s)
                    _unlink(hour_dir / m.temp)
                    _fsync(hour_dir)
                    _unlink(path)
                    _fsync(hour_dir)
                done.append(Recovery(rel, "finished", detail))
            else:
                missing = [s for s in m.sources if s not in names]
                detail = f"{m.output} was never renamed into place; removed the temporary file, sources kept"
                if missing:  # cannot come from this module: sources go only after the rename
                    detail += f" ({len(missing)} sources were already missing)"
                if not dry_run:
                    _unlink(hour_dir / m.temp)
                    _unlink(path)
                    _fsync(hour_dir)
                done.append(Recovery(rel, "rolled back", detail))
            log.warning("leftover compaction " + done[-1].action,
                        extra=log_fields(partition=rel, manifest=name, detail=done[-1].detail, dry_run=dry_run))
        orphans = sorted(n for n in names if n not in claimed and (
            (n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX))
            or (n.startswith(MANIFEST_PREFIX) and n.endswith(MANIFEST_TEMP_SUFFIX))))
        for n in orphans:
            if not dry_run:
                _unlink(hour_dir / n)
            done.append(Recovery(rel, "removed orphan", n))
            log.warning("removed orphan compaction file", extra=log_fields(partition=rel, file=n, dry_run=dry_run))
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


def compact_group(part_dir: Path, group: MergeGroup, *, now: dt.datetime | None = None) -> GroupResult:
    """Merge one group of files of ``part_dir`` into one file (see the module doc's protocol)."""
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

    m = Manifest(_new_id(now or dt.datetime.now(dt.UTC)), tuple(f.name for f in group.files), rows)
    output, temp = part_dir / m.output, part_dir / m.temp
    if output.exists() or temp.exists():  # a uuid collision; never overwrite
        raise _Skip(f"{m.output} exists already")
    m.write(part_dir)
    renamed = False
    try:
        table = pa.concat_tables([_read(part_dir / f.name).replace_schema_metadata(schema.metadata)
                                  for f in group.files])
        order = pc.sort_indices(table, sort_keys=SORT_KEYS)
        # store_schema: the Arrow schema (and the sink's "fleet.table" key) read back unchanged;
        # the Parquet schema is the sink's (same names, repetition, logical types). Sorted one row
        # group at a time: memory is the sources' rows plus one row group, not two sorted copies.
        with pq.ParquetWriter(str(temp), schema, compression="snappy", use_dictionary=True,
                              write_statistics=True, store_schema=True) as writer:
            for start in range(0, len(order), ROW_GROUP_ROWS):
                writer.write_table(table.take(order[start:start + ROW_GROUP_ROWS]), row_group_size=ROW_GROUP_ROWS)
        del table, order
        _fsync(temp)
        written = pq.read_metadata(temp)
        if written.num_rows != rows or not pq.read_schema(temp).equals(schema, check_metadata=True):
            raise CompactionError(f"{m.temp}: {written.num_rows} rows or its schema do not match the sources "
                                  f"({rows} rows)")
        for f in group.files:
            if not (part_dir / f.name).exists():
                raise _Skip(f"{f.name} disappeared during the merge")
        os.replace(temp, output)
        renamed = True
        _fsync(part_dir)
    except BaseException:
        if not renamed:  # roll back: the sources were not touched
            _unlink(temp)
            _unlink(part_dir / m.name)
            _fsync(part_dir)
        raise
    # From here the output holds every source row; a crash is finished by recover().
    for f in group.files:
        _unlink(part_dir / f.name)
    _fsync(part_dir)
    _unlink(part_dir / m.name)
    _fsync(part_dir)
    return GroupResult(len(group.files), group.size, rows, m.output, output.stat().st_size)


def execute(table_dir: Path, plans: Sequence[PartitionPlan], *, out: TextIO | None = None) -> list[PartitionResult]:
    results = []
    for p in plans:
        part_dir = table_dir / p.path
        result = PartitionResult(p.path)
        for group in p.groups:
            try:
                result.groups.append(compact_group(part_dir, group))
            except _Skip as exc:
                result.skipped.append(str(exc))
                log.warning("compaction group skipped", extra=log_fields(partition=p.path, reason=str(exc)))
            except Exception as exc:  # noqa: BLE001 - report, go on with the other partitions
                result.error = f"{type(exc).__name__}: {exc}"
                log.exception("compaction failed", extra=log_fields(partition=p.path))
                break
        results.append(result)
        if out is not None:
            print(_result_line(p, result), file=out, flush=True)
        if result.groups:
            log.info("partition compacted", extra=log_fields(
                partition=p.path, files=sum(g.sources for g in result.groups),
                bytes_in=sum(g.source_bytes for g in result.groups), rows=sum(g.rows for g in result.groups),
                outputs=[g.output for g in result.groups], bytes_out=sum(g.output_bytes for g in result.groups)))
    return results


# -- the command -------------------------------------------------------------------------------
def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _files(n: int) -> str:
    return f"{n} file" + ("" if n == 1 else "s")


def _plan_line(p: PartitionPlan) -> str:
    return f"{p.path}: {_files(p.files)}, {_mib(p.size)} -> {_files(len(p.groups))} (planned)"


def _result_line(p: PartitionPlan, r: PartitionResult) -> str:
    done_in = sum(g.sources for g in r.groups)
    line = (f"{p.path}: {_files(done_in)}, {_mib(sum(g.source_bytes for g in r.groups))} -> "
            f"{_files(len(r.groups))}, {_mib(sum(g.output_bytes for g in r.groups))}")
    if r.skipped:
        line += f"; skipped {len(r.skipped)} group(s): " + "; ".join(r.skipped)
    if r.error:
        line += f"; FAILED: {r.error}"
    return line


class _Lock:
    def __init__(self, table_dir: Path) -> None:
        self.path = table_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        fd = self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LakeLocked(f"another compaction holds {self.path}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.fd is not None  # set by __enter__, which succeeded
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def run(lake_dir: Path, *, min_age: dt.timedelta = DEFAULT_MIN_AGE, target_bytes: int = DEFAULT_TARGET_BYTES,
        dry_run: bool = False, now: dt.datetime | None = None, out: TextIO | None = None) -> int:
    """``fleet lake compact``: recover, plan, execute, print a summary (to ``out``, default stdout).
    0 ok, 1 if anything failed or another run holds the lock."""
    out = sys.stdout if out is None else out
    table_dir = Path(lake_dir) / TABLE
    if not table_dir.is_dir():
        print(f"no {TABLE} table under {lake_dir}: nothing to compact", file=out)
        return 0
    started = time.monotonic()
    try:
        if dry_run:
            return _run(table_dir, min_age, target_bytes, True, now, out, started)
        with _Lock(table_dir):
            return _run(table_dir, min_age, target_bytes, False, now, out, started)
    except LakeLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(table_dir: Path, min_age: dt.timedelta, target_bytes: int, dry_run: bool, now: dt.datetime | None,
         out: TextIO, started: float) -> int:
    failed = False
    recovered = recover(table_dir, dry_run=dry_run)
    blocked = set()
    for r in recovered:
        verb = {"finished": "would finish", "rolled back": "would roll back",
                "removed orphan": "would remove orphan"}.get(r.action, r.action) if dry_run else r.action
        print(f"{r.partition}: leftover compaction {verb}: {r.detail}", file=out)
        if r.action == "error":
            failed = True
            blocked.add(r.partition)
        elif dry_run and r.action == "finished":
            blocked.add(r.partition)  # its sources would be deleted first: the plan would differ
    now = now or dt.datetime.now(dt.UTC)
    partitions = [p for p in list_partitions(table_dir) if p.path not in blocked]
    plans = plan(partitions, now=now, min_age=min_age, target_bytes=target_bytes)
    if dry_run:
        for p in plans:
            print(_plan_line(p), file=out)
        print(f"dry run: {len(plans)} partition(s), {_files(sum(p.files for p in plans))}, "
              f"{_mib(sum(p.size for p in plans))} -> {_files(sum(len(p.groups) for p in plans))}; nothing changed",
              file=out)
        return 1 if failed else 0
    results = execute(table_dir, plans, out=out)
    groups = [g for r in results for g in r.groups]
    errors = [r for r in results if r.error]
    print(f"total: {len([r for r in results if r.groups])} partition(s), {_files(sum(g.sources for g in groups))}, "
          f"{_mib(sum(g.source_bytes for g in groups))} -> {_files(len(groups))}, "
          f"{_mib(sum(g.output_bytes for g in groups))}, {sum(g.rows for g in groups)} rows in "
          f"{time.monotonic() - started:.1f} s" + (f"; {len(errors)} partition(s) FAILED" if errors else ""),
          file=out)
    log.info("lake compaction done", extra=log_fields(
        partitions=len(plans), files_in=sum(g.sources for g in groups), files_out=len(groups),
        bytes_in=sum(g.source_bytes for g in groups), bytes_out=sum(g.output_bytes for g in groups),
        recovered=len(recovered), failed=len(errors)))
    return 1 if failed or errors else 0
