"""The telemetry job's options: tuning flags on the command line, retention from Settings.

The Cassandra TTLs the job writes with and the ones the API assumes when it reads older days from
the lake are the same Settings fields, carried to the job as FLEET_* variables by the submit code.
"""

from __future__ import annotations

import pytest

from fleet.config import Settings
from tests.support.require import module


@pytest.fixture(scope="module")
def job():
    module("pyflink", "the job module imports PyFlink (apache-flink)")
    from jobs.telemetry import job

    return job


def test_flags_set_the_tuning(job):
    options = job.parse_args(["--core", "python", "--no-lake", "--allowed-lateness-ms", "60000"])
    assert (options.core, options.lake, options.cassandra) == ("python", False, True)
    assert options.rules.allowed_lateness_ms == 60000


def test_ttls_are_not_job_flags(job, capsys):
    with pytest.raises(SystemExit):
        job.parse_args(["--raw-ttl-s", "60"])
    assert "unrecognized arguments: --raw-ttl-s" in capsys.readouterr().err


def test_the_sinks_write_with_the_ttls_the_api_reads(job):
    from jobs.telemetry.options import JobOptions
    from jobs.telemetry.sinks import ProductionSinks

    given = Settings(telemetry_raw_ttl_days=7, telemetry_rollup_ttl_days=90)
    # What the job's main() sees: Settings rebuilt from the FLEET_* environment the submit code passes.
    on_the_client = Settings.from_env(given.to_env())
    sinks = ProductionSinks(on_the_client, JobOptions())
    assert sinks.raw_ttl_s == 7 * 86400
    assert sinks.rollup_ttl_s == 90 * 86400
    defaults = ProductionSinks(Settings(), JobOptions())
    assert (defaults.raw_ttl_s, defaults.rollup_ttl_s) == (30 * 86400, 400 * 86400)
