"""Compaction of the lake's tables: merge each finished hour partition's small files into one (or a few).

The lake sink (java/flink-fleet ParquetLakeSink) rolls a Parquet file on every checkpoint (every
5 s), so an hour partition ``<lake>/<table>/date=YYYY-MM-DD/hour=HH/`` collects up to ~720 small
``part-*.parquet`` files. ``fleet lake compact`` (hourly, from cron or a Kubernetes CronJob)
compacts every table of :data:`TABLES` (or those named with ``--table``): ``telemetry`` (the
telemetry job) and ``shadow_changes`` (the shadow job). It rewrites the partitions whose hour
ended at least ``min_age`` ago into ``compacted-<utc>-<uuid8>.parquet`` files of up to
``target_bytes``: same Arrow schema, rows sorted by the table's sort keys (telemetry: device_id,
ts, seq; shadow_changes: device_id, shadow_name, version), Snappy, 128k-row row groups.

Protocol, the same for every table, per output file (``<id>`` = ``<utc timestamp>-<uuid8>``), all
in the partition dir:

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
recovery, so each row (telemetry: (device_id, seq); shadow_changes: (device_id, shadow_name,
version)) ends up exactly once. Only files listed when the plan was made are touched; files the
job commits later (late records) wait for the next run. One run at a time per table
(``<lake>/<table>/.compaction.lock``, ``flock``).

Modules: :mod:`fleet.lake.compaction_plan` lists partitions and plans the merges (pure),
:mod:`fleet.lake.compaction_merge` runs steps 1-5 and the recovery; this one holds the tables and
the command. No Flink, Kafka or web imports: this runs from a plain cron job with pyarrow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

from fleet.lake.compaction_merge import CompactionError, PartitionResult, execute, recover
from fleet.lake.compaction_plan import (
    DEFAULT_MIN_AGE,
    DEFAULT_TARGET_BYTES,
    HOURLY,
    MIB,
    Layout,
    PartitionPlan,
    list_partitions,
    plan,
)
from fleet.logs import log_fields

log = logging.getLogger("fleet.lake.compaction")

LOCK_NAME = ".compaction.lock"


class LakeLocked(CompactionError):
    pass


@dataclass(frozen=True)
class TableSpec:
    """A lake table as compaction sees it: its directory under the lake, how it is partitioned and
    the order of the compacted rows (device first: a reader's device filter skips row groups)."""

    name: str
    layout: Layout
    sort_keys: tuple[str, ...]


# Columns and layout: schemas/parquet/telemetry.md, schemas/parquet/shadow_changes.md.
TABLES = {t.name: t for t in (
    TableSpec("telemetry", HOURLY, ("device_id", "ts", "seq")),
    TableSpec("shadow_changes", HOURLY, ("device_id", "shadow_name", "version")),
)}


# -- the summary -------------------------------------------------------------------------------
def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _files(n: int) -> str:
    return f"{n} file" + ("" if n == 1 else "s")


def _plan_line(table: str, p: PartitionPlan) -> str:
    return f"{table}/{p.path}: {_files(p.files)}, {_mib(p.size)} -> {_files(len(p.groups))} (planned)"


def _result_line(table: str, p: PartitionPlan, r: PartitionResult) -> str:
    done_in = sum(g.sources for g in r.groups)
    line = (f"{table}/{p.path}: {_files(done_in)}, {_mib(sum(g.source_bytes for g in r.groups))} -> "
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


@dataclass
class _Outcome:
    """One table's run: what was planned and, unless a dry run, what was done."""

    plans: list[PartitionPlan] = field(default_factory=list)
    results: list[PartitionResult] = field(default_factory=list)
    failed: bool = False


def run(lake_dir: Path, *, tables: Sequence[str] | None = None, min_age: dt.timedelta = DEFAULT_MIN_AGE,
        target_bytes: int = DEFAULT_TARGET_BYTES, dry_run: bool = False, now: dt.datetime | None = None,
        out: TextIO | None = None) -> int:
    """``fleet lake compact``: per table (default: all of :data:`TABLES`) recover, plan, execute;
    then print a summary (to ``out``, default stdout). 0 ok, 1 if anything failed or another run
    holds a table's lock (the other tables are still compacted)."""
    unknown = [t for t in tables or () if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown lake table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
    specs = [TABLES[t] for t in dict.fromkeys(tables)] if tables else list(TABLES.values())
    out = sys.stdout if out is None else out
    now = now or dt.datetime.now(dt.UTC)
    started = time.monotonic()
    outcomes = []
    for spec in specs:
        table_dir = Path(lake_dir) / spec.name
        if not table_dir.is_dir():
            print(f"{spec.name}: no such table under {lake_dir}, nothing to compact", file=out)
            continue
        try:
            with contextlib.nullcontext() if dry_run else _Lock(table_dir):
                outcomes.append(_run_table(spec, table_dir, min_age, target_bytes, dry_run, now, out))
        except LakeLocked as exc:
            print(f"error: {exc}", file=sys.stderr)
            outcomes.append(_Outcome(failed=True))
    plans = [p for o in outcomes for p in o.plans]
    failed = any(o.failed for o in outcomes)
    if dry_run:
        print(f"dry run: {len(plans)} partition(s), {_files(sum(p.files for p in plans))}, "
              f"{_mib(sum(p.size for p in plans))} -> {_files(sum(len(p.groups) for p in plans))}; nothing changed",
              file=out)
        return 1 if failed else 0
    results = [r for o in outcomes for r in o.results]
    groups = [g for r in results for g in r.groups]
    errors = [r for r in results if r.error]
    print(f"total: {len([r for r in results if r.groups])} partition(s), {_files(sum(g.sources for g in groups))}, "
          f"{_mib(sum(g.source_bytes for g in groups))} -> {_files(len(groups))}, "
          f"{_mib(sum(g.output_bytes for g in groups))}, {sum(g.rows for g in groups)} rows in "
          f"{time.monotonic() - started:.1f} s" + (f"; {len(errors)} partition(s) FAILED" if errors else ""),
          file=out)
    return 1 if failed or errors else 0


def _run_table(spec: TableSpec, table_dir: Path, min_age: dt.timedelta, target_bytes: int, dry_run: bool,
               now: dt.datetime, out: TextIO) -> _Outcome:
    outcome = _Outcome()
    recovered = recover(table_dir, layout=spec.layout, dry_run=dry_run)
    blocked = set()
    for r in recovered:
        verb = {"finished": "would finish", "rolled back": "would roll back",
                "removed orphan": "would remove orphan"}.get(r.action, r.action) if dry_run else r.action
        print(f"{spec.name}/{r.partition}: leftover compaction {verb}: {r.detail}", file=out)
        if r.action == "error":
            outcome.failed = True
            blocked.add(r.partition)
        elif dry_run and r.action == "finished":
            blocked.add(r.partition)  # its sources would be deleted first: the plan would differ
    partitions = [p for p in list_partitions(table_dir, spec.layout) if p.path not in blocked]
    outcome.plans = plan(partitions, now=now, layout=spec.layout, min_age=min_age, target_bytes=target_bytes)
    if dry_run:
        for p in outcome.plans:
            print(_plan_line(spec.name, p), file=out)
        return outcome
    outcome.results = execute(table_dir, outcome.plans, sort_keys=spec.sort_keys,
                              on_result=lambda p, r: print(_result_line(spec.name, p, r), file=out, flush=True))
    groups = [g for r in outcome.results for g in r.groups]
    log.info("lake compaction done", extra=log_fields(
        table=spec.name, partitions=len(outcome.plans), files_in=sum(g.sources for g in groups), files_out=len(groups),
        bytes_in=sum(g.source_bytes for g in groups), bytes_out=sum(g.output_bytes for g in groups),
        recovered=len(recovered), failed=len([r for r in outcome.results if r.error])))
    return outcome
