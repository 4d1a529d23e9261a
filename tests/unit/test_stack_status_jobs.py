"""`fleet stack status` says when a job the platform runs is not running on a healthy cluster."""

import pytest

from devtools.stack import flink, launcher
from fleet.config import Settings


@pytest.mark.parametrize("jobs,state", [
    ([], "NOT RUNNING"),
    ([{"name": "telemetry", "state": "CANCELED"}], "CANCELED"),
    ([{"name": "telemetry", "state": "CANCELED"}, {"name": "telemetry", "state": "RUNNING"}], "RUNNING"),
    ([{"name": "other", "state": "RUNNING"}], "NOT RUNNING"),
])
def test_job_states(monkeypatch, jobs, state):
    monkeypatch.setattr(flink, "list_jobs", lambda settings: jobs)
    assert "telemetry" in launcher.expected_jobs()
    assert launcher.job_states(Settings())["telemetry"] == state
