"""Shared fixtures. Integration tests share ONE running stack for the whole session.

The ``stack`` fixture reuses a healthy stack if one is up (e.g. from ``fleet stack up``), else
starts it with the project's own launcher and stops what it started at the end. On a developer
machine where it cannot start, integration tests skip; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os

import pytest

from fleet.config import Settings
from tests.support.stack import running

STACK_COMPONENTS = ["mosquitto", "kafka", "cassandra", "flink", "bridge", "api"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    yield from running(settings, STACK_COMPONENTS)


@pytest.fixture(scope="session")
def enrollment(stack: Settings):
    """Registers test devices in the stack's registry (which issues their certificates), so the
    bridge's active-device check lets them through, as it would for a real device."""
    from devtools.enrollment import RegistryEnrollment

    return RegistryEnrollment.open(stack, device_type="test", groups=["test"])


class TelemetryJob:
    """The stack's running telemetry job. Tests may replace it (savepoint and resume, ``fleet jobs``),
    so its id is looked up when asked for, never remembered."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def id(self) -> str:
        from devtools.stack import flink

        running = [job["id"] for job in flink.list_jobs(self.settings)
                   if job["name"] == "telemetry" and job["state"] == "RUNNING"]
        assert len(running) == 1, f"expected one RUNNING telemetry job, found {running}"
        return running[0]


@pytest.fixture(scope="session")
def telemetry_job(stack: Settings):
    """The telemetry job RUNNING on the stack's Flink cluster (submitted if it is not)."""
    from pathlib import Path

    from devtools.stack import flink

    if not any(job["name"] == "telemetry" and job["state"] == "RUNNING" for job in flink.list_jobs(stack)):
        job_py = Path(__file__).resolve().parents[1] / "jobs" / "telemetry" / "job.py"
        job_id = flink.submit_job(stack, job_py)
        flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    yield TelemetryJob(stack)
    if os.environ.get("FLEET_TEST_KEEP_STACK") != "1":
        # Tests may have replaced the job (savepoint and resume): cancel whatever runs now.
        for job in flink.list_jobs(stack):
            if job["name"] == "telemetry" and job["state"] == "RUNNING":
                flink.cancel_job(stack, job["id"])
