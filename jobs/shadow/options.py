"""The shadow job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, topics, the keyspace and the lake path come from Settings (fleet.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.shadow import domain as dom

CORES = ("java", "python")


@dataclass(frozen=True)
class JobOptions:
    rules: dom.ShadowRules = field(default_factory=dom.ShadowRules)
    # One subtask: the Java core's per-record cost (~130 us with its state, see __init__) fits one
    # task at 1,000 updates/s, and the TaskManager's slots are shared with the telemetry job
    # (flink-conf/config.yaml).
    parallelism: int = 1
    group_id: str = "fleet-shadow-job"
    # Cassandra writes in flight per sink subtask; each row goes out at once (no batching), the
    # API must see a change within a few hundred ms.
    cassandra_max_in_flight: int = 256
    cassandra_dc: str = "datacenter1"
    # Skip Cassandra or the lake (benchmarks, partial stacks).
    cassandra: bool = True
    lake: bool = True
    # The shadow-core implementation: "java" (fleet.flink.shadow.ShadowCore) or "python"
    # (jobs.shadow.core.ShadowCore); see jobs/shadow/__init__.py.
    core: str = "java"

    def __post_init__(self) -> None:
        if self.core not in CORES:
            raise ValueError(f"core must be one of {', '.join(CORES)}, got {self.core!r}")
