"""The OTA job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, topics, the keyspace and the download-URL key come from Settings (fleet.config).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobOptions:
    # One subtask: the cluster's slots are shared with the telemetry, shadow and commands jobs.
    parallelism: int = 1
    group_id: str = "fleet-ota-job"
    cassandra_max_in_flight: int = 256
    cassandra_dc: str = "datacenter1"
    # Skip Cassandra (benchmarks, partial stacks).
    cassandra: bool = True
    # After a start or a restore, timers wait this long for the backlog of device reports
    # (jobs/ota/core.py _deferred): a health window must not pass on a crash not read yet.
    restore_grace_ms: int = 10_000
