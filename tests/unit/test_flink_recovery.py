"""devtools/stack/flink_recovery.py: what the launcher brings back after a JobManager start."""

from __future__ import annotations

from devtools.stack.flink_recovery import JobRecord, JobRecords, latest_checkpoint, plan_recovery


def _checkpoint(root, job_id, n, complete=True):
    d = root / job_id / f"chk-{n}"
    d.mkdir(parents=True)
    if complete:
        (d / "_metadata").write_bytes(b"x")
    return d


def test_records_remember_forget_and_survive_a_reload(tmp_path):
    records = JobRecords(tmp_path / "run" / "jobs.json")
    assert records.load() == {}
    records.remember(JobRecord("shadow", "/p/jobs/shadow/job.py", ["--core", "java"], None, "a" * 32))
    records.remember(JobRecord("commands", "/p/jobs/commands/job.py", [], 1, "b" * 32))
    records.remember(JobRecord("shadow", "/p/jobs/shadow/job.py", [], None, "c" * 32))  # resubmitted
    loaded = JobRecords(tmp_path / "run" / "jobs.json").load()
    assert sorted(loaded) == ["commands", "shadow"] and loaded["shadow"].job_id == "c" * 32
    assert loaded["commands"].parallelism == 1
    records.forget_job_id("b" * 32)  # cancelled through the launcher
    records.forget("nothing-by-that-name")
    assert sorted(records.load()) == ["shadow"]


def test_a_torn_records_file_restores_nothing_rather_than_failing(tmp_path):
    path = tmp_path / "jobs.json"
    path.write_text('{"shadow": {"name": "sha')
    assert JobRecords(path).load() == {}


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    _checkpoint(tmp_path, "j1", 9)
    newest = _checkpoint(tmp_path, "j1", 12)
    _checkpoint(tmp_path, "j1", 13, complete=False)  # being written when the JobManager died
    (tmp_path / "j1" / "shared").mkdir()
    assert latest_checkpoint(tmp_path, "j1") == newest
    assert latest_checkpoint(tmp_path, "j2") is None
    assert latest_checkpoint(tmp_path, "") is None


def test_plan_restores_what_is_gone_keeps_what_runs_and_forgets_what_ended(tmp_path):
    checkpoints, archive = tmp_path / "checkpoints", tmp_path / "completed-jobs"
    archive.mkdir()
    chk = _checkpoint(checkpoints, "t" * 32, 40)
    (archive / ("c" * 32)).write_text("{}")  # the JobManager archived it: cancelled on purpose
    records = {
        "telemetry": JobRecord("telemetry", "/p/jobs/telemetry/job.py", [], None, "t" * 32),
        "commands": JobRecord("commands", "/p/jobs/commands/job.py", [], None, "c" * 32),
        "shadow": JobRecord("shadow", "/p/jobs/shadow/job.py", [], None, "s" * 32),
        "rules": JobRecord("rules", "/p/jobs/rules/job.py", [], None, "r" * 32),
    }
    plan = plan_recovery(records, {"rules"}, archive, checkpoints)
    assert [(r.name, c) for r, c in plan.restore] == [("telemetry", chk), ("shadow", None)]
    assert [r.name for r in plan.ended] == ["commands"]
    assert [r.name for r in plan.running] == ["rules"]
