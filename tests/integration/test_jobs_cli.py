"""The data engineer's documented recipe (docs/deploy.md), run as documented, against the stack:

    fleet jobs stop telemetry                          # stop with a savepoint, prints its path
    fleet jobs submit telemetry --from-savepoint PATH  # resubmit from it

then checks over Flink's REST API, independently of what the CLI says, that the new job RUNS with
exactly-once checkpointing, restored from that savepoint, and that records sent afterwards reach
the Parquet lake, exactly once.

This replaces the shared stack's telemetry job. The suite has no ordering mechanism, so the test
works at any point: it does not use the session's ``telemetry_job`` id (the job it replaces), it
submits the job first if none runs, and whatever happens it leaves exactly one telemetry job
RUNNING, which later tests' ``telemetry_job`` fixture finds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devtools.stack import flink
from devtools.stack.apps import settings_env
from devtools.stack.process import StackError
from fleet.infra.flink_jobs import CHECKPOINTING_OFF_MS
from tests.integration.test_telemetry_faults import expected_keys, lake_keys, publish, wait_exactly_once

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]
JOB_PY = PROJECT_ROOT / "jobs" / "telemetry" / "job.py"
_VENV_FLEET = Path(sys.executable).with_name("fleet")
FLEET = [str(_VENV_FLEET)] if _VENV_FLEET.exists() else [sys.executable, "-m", "fleet.cli"]


def fleet(settings, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    """The documented command, as a separate process with the stack's FLEET_* environment."""
    return subprocess.run([*FLEET, *args], env=settings_env(settings), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def running_telemetry_jobs(settings) -> list[str]:
    return [j["id"] for j in flink.list_jobs(settings) if j["name"] == "telemetry" and j["state"] == "RUNNING"]


def cluster_runs_current_jars(settings) -> bool:
    """The local cluster refuses new jobs while it runs jars older than var/data/flink/lib."""
    layout = flink.FlinkLayout(settings)
    started_with = layout.pid_dir / "cluster.lib"
    return not started_with.exists() or started_with.read_text() == flink.lib_fingerprint(layout)


def leave_one_running(settings, savepoint: str | None) -> None:
    """Exactly one telemetry job RUNNING, resumed from ``savepoint`` when the recipe broke midway."""
    running = running_telemetry_jobs(settings)
    for extra in running[1:]:
        flink.cancel_job(settings, extra)
    if running:
        return
    try:
        job_id = flink.submit_job(settings, JOB_PY, savepoint=savepoint)
    except StackError:
        from fleet.infra import flink_jobs as deploy

        # The launcher's own checks refused; the production path does not have them.
        job_id = deploy.submit_to(settings, deploy.Cluster.local(settings.flink_rest_port), "telemetry",
                                  savepoint=savepoint)
    flink.wait_for_job_state(settings, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)


def test_stop_with_savepoint_then_submit_from_it_runs_exactly_once_and_writes_the_lake(stack, enrollment,
                                                                                       tmp_path):
    if not cluster_runs_current_jars(stack):
        pytest.fail("the stack's Flink cluster runs jars older than var/data/flink/lib; restart it first "
                    "(fleet jobs stop telemetry; fleet stack down flink && fleet stack up flink; "
                    "fleet jobs submit telemetry --from-savepoint PATH)", pytrace=False)
    if not running_telemetry_jobs(stack):
        first = fleet(stack, "jobs", "submit", "telemetry")
        assert first.returncode == 0, first.stdout + first.stderr
    assert len(running_telemetry_jobs(stack)) == 1, flink.list_jobs(stack)
    old_job = running_telemetry_jobs(stack)[0]
    savepoint = None
    try:
        stop = fleet(stack, "jobs", "stop", "telemetry")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        savepoint = stop.stdout.strip().splitlines()[-1]
        assert savepoint.startswith("file:") and Path(savepoint.removeprefix("file:")).is_dir(), stop.stdout
        assert flink.job_details(stack, old_job)["state"] == "FINISHED"

        submit = fleet(stack, "jobs", "submit", "telemetry", "--from-savepoint", savepoint)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        new_job = submit.stdout.strip().splitlines()[0]
        assert re.fullmatch(r"[0-9a-f]{32}", new_job), submit.stdout

        # What the CLI claims, checked over REST by the test itself.
        assert running_telemetry_jobs(stack) == [new_job]
        config = flink.rest(stack, "GET", f"/jobs/{new_job}/checkpoints/config")
        assert config["mode"] == "exactly_once", config
        assert 0 < config["interval"] < CHECKPOINTING_OFF_MS, config
        assert config["externalization"] == {"enabled": True, "delete_on_cancellation": False}, config
        restored = flink.rest(stack, "GET", f"/jobs/{new_job}/checkpoints")["latest"]["restored"]
        assert restored and restored["is_savepoint"] and restored["external_path"] == savepoint, restored

        # Records sent after the resubmission reach the lake, exactly once.
        tag = uuid.uuid4().hex[:6]
        identities = [enrollment.enroll(f"jobs-cli-{tag}-{i}", tmp_path / str(i)) for i in range(3)]
        thread, result = publish(stack, identities, rate=10.0, seconds=5.0)
        thread.join(120)
        assert not thread.is_alive(), "the simulated devices did not finish publishing"
        expected = expected_keys(result["report"])
        assert len(expected) >= 100
        wait_exactly_once("lake", lambda: lake_keys(stack, {i.device_id for i in identities}), expected)
    finally:
        leave_one_running(stack, savepoint)
    assert len(running_telemetry_jobs(stack)) == 1
