"""The shadow job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, topics, the keyspace and the lake path come from Settings (fleet.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.shadow import domain as dom


@dataclass(frozen=True)
class JobOptions:
    rules: dom.ShadowRules = field(default_factory=dom.ShadowRules)
    # One subtask: ~100-200 us of Python per record is 10-20% of a core at 1,000 updates/s, and
    # the TaskManager's slots are shared with the telemetry job (flink-conf/config.yaml).
    parallelism: int = 1
    group_id: str = "fleet-shadow-job"
    # Cassandra writes in flight per sink subtask; each row goes out at once (no batching), the
    # API must see a change within a few hundred ms.
    cassandra_max_in_flight: int = 256
    cassandra_dc: str = "datacenter1"
    # Skip Cassandra or the lake (benchmarks, partial stacks).
    cassandra: bool = True
    lake: bool = True
