"""The commands job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, topics and the keyspace come from Settings (fleet.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.commands import domain as dom
from jobs.commands.logic import DEFAULT_KEEP_FINAL_MS


@dataclass(frozen=True)
class JobOptions:
    rules: dom.CommandRules = field(default_factory=dom.CommandRules)
    # One subtask: the cluster's 4 slots are shared with telemetry (2) and shadow (1).
    parallelism: int = 1
    group_id: str = "fleet-commands-job"
    # Final commands stay whole in the keyed state this long (a late result is still recorded on
    # the command); then only their fingerprint for fleet.commands.domain.REMEMBER_ENDED_MS (a
    # repeated submission, a late cancel). Cassandra keeps the commands themselves.
    keep_final_ms: int = DEFAULT_KEEP_FINAL_MS
    cassandra_max_in_flight: int = 256
    cassandra_dc: str = "datacenter1"
    # Skip Cassandra (benchmarks, partial stacks).
    cassandra: bool = True
