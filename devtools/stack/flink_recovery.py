"""Bringing the local stack's jobs back after its JobManager died.

The local cluster has no high availability: a JobManager that is killed forgets every job
("recovered 0 persisted job graphs"), and a plain restart would leave Flink healthy and empty
while the TaskManager's orphaned tasks run on for a heartbeat timeout. So the launcher keeps its
own small record of what it submitted (``var/run/flink/jobs.json``: name, script, arguments, the
last job id) and, when ``fleet stack up`` starts a JobManager, resubmits every recorded job that
no longer runs from its latest retained checkpoint (``<checkpoints>/<job id>/chk-N/_metadata``,
retained on cancellation, three kept).

A job that ended on purpose (cancelled, stopped with a savepoint, from this launcher, ``fleet jobs
stop``, the web UI or REST) is not brought back: the JobManager archives every job that reaches a
terminal state to ``jobmanager.archive.fs.dir`` (``var/data/flink/completed-jobs/<job id>``), and
a recorded job with an archive is forgotten instead. Clusters use Flink's own HA services
(ZooKeeper or Kubernetes) for the same thing: docs/deploy.md.

Pure bookkeeping here; the REST calls and the submission are devtools/stack/flink.py's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

_CHECKPOINT = re.compile(r"^chk-(\d+)$")


@dataclass(frozen=True)
class JobRecord:
    name: str  # the Flink job name, jobs/<name>/job.py's
    script: str  # absolute path of the job's entry point
    args: list[str] = field(default_factory=list)
    parallelism: int | None = None
    job_id: str = ""  # the last id this launcher saw for it


class JobRecords:
    """``jobs.json``: the jobs the launcher submitted and has not seen end on purpose, by name."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, JobRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a torn write: nothing to restore is better than refusing to start
        return {name: JobRecord(**rec) for name, rec in raw.items()}

    def _save(self, records: dict[str, JobRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({n: asdict(r) for n, r in sorted(records.items())}, indent=2))
        os.replace(tmp, self.path)

    def remember(self, record: JobRecord) -> None:
        records = self.load()
        records[record.name] = record
        self._save(records)

    def forget(self, name: str) -> None:
        records = self.load()
        if records.pop(name, None) is not None:
            self._save(records)

    def forget_job_id(self, job_id: str) -> None:
        records = self.load()
        kept = {n: r for n, r in records.items() if r.job_id != job_id}
        if kept != records:
            self._save(kept)


def latest_checkpoint(checkpoint_dir: Path, job_id: str) -> Path | None:
    """The newest completed checkpoint of ``job_id`` (a ``chk-N`` directory with its
    ``_metadata``: one without it was still being written when the job died)."""
    job_dir = checkpoint_dir / job_id
    if not job_id or not job_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for entry in job_dir.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and (entry / "_metadata").is_file():
            n = int(match.group(1))
            if best is None or n > best[0]:
                best = (n, entry)
    return best[1] if best else None


@dataclass(frozen=True)
class Plan:
    restore: list[tuple[JobRecord, Path | None]]  # (job, checkpoint to restore from or None: fresh)
    ended: list[JobRecord]  # archived by the JobManager: stopped on purpose, forget them
    running: list[JobRecord]  # already known to the cluster under their name


def plan_recovery(records: dict[str, JobRecord], live_names: set[str], archive_dir: Path,
                  checkpoint_dir: Path) -> Plan:
    """What to do with each recorded job, given the names of the jobs the cluster runs now."""
    restore, ended, running = [], [], []
    for record in records.values():
        if record.name in live_names:
            running.append(record)
        elif record.job_id and (archive_dir / record.job_id).exists():
            ended.append(record)
        else:
            restore.append((record, latest_checkpoint(checkpoint_dir, record.job_id)))
    return Plan(restore, ended, running)
