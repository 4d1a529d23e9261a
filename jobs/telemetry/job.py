"""The telemetry job's entry point: options, startup checks, the Flink environment, execute.

``main`` parses the tuning flags into JobOptions, builds Settings from the FLEET_* environment
(the submit code, fleet.infra.flink_jobs, passes the caller's settings that way), makes sure the
job runs with exactly-once checkpointing and an absolute lake path, then wires Kafka, the core
and the production sinks with pipeline.build and executes. Flink's CLI runs it on the client
(``flink run --python jobs/telemetry/job.py``); ``python -m jobs.telemetry.job --help`` lists the flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyflink.datastream import StreamExecutionEnvironment

from fleet.config import Settings
from fleet.infra.job_config import JobConfigError, configured_lake_path
from fleet.telemetry import domain as dom
from jobs.checkpointing import exactly_once_problems
from jobs.telemetry.options import CORES, JobOptions
from jobs.telemetry.pipeline import build, kafka_source
from jobs.telemetry.sinks import ProductionSinks

# Not __name__: Flink's CLI runs this file as a top-level module of its own name.
log = logging.getLogger("jobs.telemetry.job")


def parse_args(argv: list[str]) -> JobOptions:
    d = JobOptions()
    r = d.rules
    p = argparse.ArgumentParser(prog="jobs/telemetry/job.py", description=(__doc__ or "").split("\n")[0],
                                epilog="Cassandra TTLs come from Settings (FLEET_TELEMETRY_RAW_TTL_DAYS, "
                                       "FLEET_TELEMETRY_ROLLUP_TTL_DAYS), which the API reads too.")
    p.add_argument("--allowed-lateness-ms", type=int, default=r.allowed_lateness_ms,
                   help="dead-letter a record this far behind its device's newest ts")
    p.add_argument("--max-future-skew-ms", type=int, default=r.max_future_skew_ms,
                   help="dead-letter a record whose ts is this far ahead of its ingest time")
    p.add_argument("--rollup-bucket-ms", type=int, default=r.rollup_bucket_ms)
    p.add_argument("--max-open-gaps", type=int, default=r.max_open_gaps)
    p.add_argument("--state-ttl-ms", type=int, default=d.state_ttl_ms, help="dedup horizon (per-device state TTL)")
    p.add_argument("--out-of-orderness-ms", type=int, default=d.out_of_orderness_ms)
    p.add_argument("--idleness-ms", type=int, default=d.idleness_ms)
    p.add_argument("--no-wall-clock-timers", dest="wall_clock_timers", action="store_false",
                   help="publish quiet devices' rollups and gaps only when fleet-wide event time moves")
    p.add_argument("--lake-part-mb", type=int, default=d.lake_part_mb)
    p.add_argument("--lake-parallelism", type=int, default=d.lake_parallelism)
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--cassandra-batch", type=int, default=d.cassandra_batch)
    p.add_argument("--event-time", choices=("payload", "kafka"), default=d.event_time)
    p.add_argument("--state-cache-size", type=int, default=d.state_cache_size)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    p.add_argument("--no-lake", dest="lake", action="store_false")
    p.add_argument("--core", choices=CORES, default=d.core,
                   help="telemetry-core implementation: java (default, fast) or python (the reference)")
    a = p.parse_args(argv)
    rules = dom.TelemetryRules(a.allowed_lateness_ms, a.max_future_skew_ms, a.rollup_bucket_ms, a.max_open_gaps)
    fields = {f for f in JobOptions.__dataclass_fields__ if f != "rules"}
    return JobOptions(rules=rules, **{name: getattr(a, name) for name in fields})


def ensure_exactly_once(env: StreamExecutionEnvironment, options: JobOptions) -> None:
    """Exactly-once checkpointing set where unset (a bare cluster's defaults are checkpointing
    off), then the effective config and the lake path verified: JobConfigError if wrong."""
    found = exactly_once_problems(env, configured_lake_path(os.environ), lake_enabled=options.lake)
    if found:
        raise JobConfigError("telemetry job refuses to start: " + "; ".join(found))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    try:
        ensure_exactly_once(env, options)
    except JobConfigError as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(settings, options), options)
    log.info("submitting telemetry job: topic %s -> keyspace %s, lake %s; Cassandra TTLs %d/%d days (raw/rollups)",
             settings.topic("telemetry"), settings.cassandra_keyspace, settings.lake_path,
             settings.telemetry_raw_ttl_days, settings.telemetry_rollup_ttl_days)
    env.execute("telemetry")


if __name__ == "__main__":
    main()
