"""The telemetry job's tuning: ``JobOptions``, what ``job.main``'s command-line flags set.

Endpoints, paths and Cassandra retention are not options: they come from Settings
(fleet.config), which every process reads from the same FLEET_* environment, so the job writes
with the TTLs the API assumes when it picks Cassandra or the lake for a day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.telemetry import domain as dom

CORES = ("java", "python")


@dataclass(frozen=True)
class JobOptions:
    """Tuning of the job (command-line flags of ``main``); endpoints and paths come from Settings."""

    rules: dom.TelemetryRules = field(default_factory=dom.TelemetryRules)
    # Dedup horizon: a device's seq/gap/rollup state expires after this much inactivity.
    state_ttl_ms: int = 7 * 24 * 3600 * 1000
    # Watermarks (fleet-wide event time) only flush silent devices' rollups and gaps.
    out_of_orderness_ms: int = 5_000
    # Also by the wall clock (processing-time timers, dom.wall_clock_timer): a quiet device's last
    # minute appears within the allowed lateness and a few seconds even when no device sends.
    wall_clock_timers: bool = True
    idleness_ms: int = 30_000
    lake_part_mb: int = 128
    # The lake sink's parallelism: 1 writes one file per partition and checkpoint.
    lake_parallelism: int = 1
    # Requests (batches of up to 64 rows) in flight per Cassandra sink subtask. Each checkpoint
    # waits for all of them, so the queue should not be deeper than Cassandra clears in well under
    # a second (512 x 64 rows could take it seconds); 32-512 measured alike within this machine's noise.
    cassandra_max_in_flight: int = 128
    # Rows per UNLOGGED batch request, at most (also kept under ~24 KiB; a partition's rows go
    # together; 1 = one request per row; see CassandraUpsertSink). 64 measured ~35% less Cassandra
    # CPU per row than 16.
    cassandra_batch: int = 64
    cassandra_dc: str = "datacenter1"
    # "payload": event time from the envelope's ts (device time); "kafka": the record timestamp.
    event_time: str = "payload"
    # Decoded per-device states kept in memory per subtask (a read cache; Flink state is the truth).
    state_cache_size: int = 100_000
    group_id: str = "fleet-telemetry-job"
    # Skip Cassandra or the lake (benchmarks, partial stacks).
    cassandra: bool = True
    lake: bool = True
    # The telemetry-core implementation: "java" (fleet.flink.telemetry.TelemetryCore) or "python"
    # (jobs.telemetry.python_core.TelemetryCore).
    core: str = "java"

    def __post_init__(self) -> None:
        if self.core not in CORES:
            raise ValueError(f"core must be one of {', '.join(CORES)}, got {self.core!r}")
