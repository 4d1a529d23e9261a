"""Shared fixtures. Integration tests share ONE running stack for the whole session.

The ``stack`` fixture reuses a healthy stack if one is up (e.g. from ``fleet stack up``), else
starts it with the project's own launcher and stops what it started at the end. On a developer
machine where it cannot start, integration tests skip; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os

import pytest

from fleet.settings import Settings
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
    from fleet.enrollment import RegistryEnrollment

    return RegistryEnrollment.open(stack, device_type="test", groups=["test"])


@pytest.fixture(scope="session")
def telemetry_job(stack: Settings):
    """The telemetry job RUNNING on the stack's Flink cluster (submitted if it is not)."""
    from pathlib import Path

    from fleet.stack import flink

    for job in flink.list_jobs(stack):
        if job["name"] == "telemetry" and job["state"] == "RUNNING":
            yield job["id"]
            return
    job_py = Path(__file__).resolve().parents[1] / "jobs" / "telemetry_job.py"
    job_id = flink.submit_job(stack, job_py)
    flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    yield job_id
    if os.environ.get("FLEET_TEST_KEEP_STACK") != "1":
        # Tests may have replaced the job (savepoint and resume): cancel whatever runs now.
        for job in flink.list_jobs(stack):
            if job["name"] == "telemetry" and job["state"] == "RUNNING":
                flink.cancel_job(stack, job["id"])
