"""Lake compaction, step 1: list a table's partitions and plan which files to merge (pure, no I/O
except :func:`list_partitions`). The protocol and the command: fleet/lake/compaction.py."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
DEFAULT_MIN_AGE = dt.timedelta(hours=2)
DEFAULT_TARGET_BYTES = 256 * MIB
DATA_SUFFIX = ".parquet"

_HOUR_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}


def is_data_file(name: str) -> bool:
    """What a reader sees: visible (no leading ``.``/``_``) ``*.parquet`` files."""
    return not name.startswith((".", "_")) and name.endswith(DATA_SUFFIX)


def partition_hour(path: str) -> dt.datetime | None:
    """Start (UTC) of the hour of ``date=YYYY-MM-DD/hour=HH``; None for anything else."""
    m = _HOUR_PARTITION.match(path.replace(os.sep, "/"))
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


@dataclass(frozen=True)
class Layout:
    """How a table is partitioned: ``glob`` (relative to the table dir) finds the partition
    directories, ``start`` maps one's relative path to the UTC start of the time it covers (None:
    not a partition), ``span`` is how long that is."""

    glob: str
    start: Callable[[str], dt.datetime | None]
    span: dt.timedelta


# Hive partitions by the UTC hour of the row's ts: every table the lake sink writes.
HOURLY = Layout("date=*/hour=*", partition_hour, dt.timedelta(hours=1))


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int


@dataclass(frozen=True)
class Partition:
    """One partition directory as listed: ``path`` is relative to the table dir."""

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
    start: dt.datetime
    groups: tuple[MergeGroup, ...]

    @property
    def files(self) -> int:
        return sum(len(g.files) for g in self.groups)

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)


def plan(partitions: Iterable[Partition], *, now: dt.datetime, layout: Layout = HOURLY,
         min_age: dt.timedelta = DEFAULT_MIN_AGE, target_bytes: int = DEFAULT_TARGET_BYTES) -> list[PartitionPlan]:
    """Which files of which partitions to merge, oldest partition first.

    A partition qualifies once its time span ended at least ``min_age`` before ``now`` (the job
    still appends late records to recent hours). Its visible ``*.parquet`` files smaller than
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
        start = layout.start(part.path)
        if start is None or now - (start + layout.span) < min_age:
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
    plans.sort(key=lambda p: p.start)
    return plans


def parse_duration(text: str) -> dt.timedelta:
    """``2h``, ``90m``, ``3600s``, ``1d``; a bare number is hours."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 2h, 90m, 3600s, 1d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def partition_dirs(table_dir: Path, layout: Layout = HOURLY) -> list[tuple[str, Path]]:
    """(path relative to the table dir, directory) of every partition directory, in path order."""
    if not table_dir.is_dir():
        return []
    return [(d.relative_to(table_dir).as_posix(), d) for d in sorted(table_dir.glob(layout.glob)) if d.is_dir()]


def list_partitions(table_dir: Path, layout: Layout = HOURLY) -> list[Partition]:
    """The table's partition directories and their visible ``*.parquet`` files."""
    out: list[Partition] = []
    for rel, part_dir in partition_dirs(table_dir, layout):
        files = []
        with os.scandir(part_dir) as entries:
            for e in entries:
                if is_data_file(e.name) and e.is_file(follow_symlinks=False):
                    files.append(FileInfo(e.name, e.stat(follow_symlinks=False).st_size))
        out.append(Partition(rel, tuple(sorted(files, key=lambda f: f.name))))
    return out
