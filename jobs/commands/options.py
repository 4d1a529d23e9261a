"""The commands job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, topics and the keyspace come from Settings (fleet.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.commands import domain as dom


@dataclass(frozen=True)
class JobOptions:
    rules: dom.CommandRules = field(default_factory=dom.CommandRules)
    # One subtask: the cluster's 4 slots are shared with telemetry (2) and shadow (1).
    parallelism: int = 1
    group_id: str = "fleet-commands-job"
    # Final commands stay in the keyed state this long (a repeated or late result is still
    # recognised; after it, such a result is an unknown command). Cassandra keeps them longer.
    keep_final_ms: int = 24 * 3_600_000
    cassandra_max_in_flight: int = 256
    cassandra_dc: str = "datacenter1"
    # Skip Cassandra (benchmarks, partial stacks).
    cassandra: bool = True
