"""The shadow job's entry point: options, startup checks, the Flink environment, execute.

Like the telemetry job's (jobs/telemetry/job.py): Settings from the FLEET_* environment, and the
job refuses to start without exactly-once checkpointing with retained checkpoints (its state, the
shadow documents, must survive a TaskManager's kill -9) and, unless ``--no-lake``, without an
absolute lake path. ``python -m jobs.shadow.job --help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyflink.datastream import StreamExecutionEnvironment

from fleet.config import Settings
from fleet.infra.job_config import configured_lake_path
from jobs.checkpointing import exactly_once_problems
from jobs.latency import flush_buffers_quickly
from jobs.shadow.options import CORES, JobOptions
from jobs.shadow.pipeline import INPUT_TOPICS, build, kafka_source
from jobs.shadow.sinks import ProductionSinks

# Not __name__: Flink's CLI runs this file as a top-level module of its own name.
log = logging.getLogger("jobs.shadow.job")


def parse_args(argv: list[str]) -> JobOptions:
    d = JobOptions()
    p = argparse.ArgumentParser(prog="jobs/shadow/job.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--parallelism", type=int, default=d.parallelism)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    p.add_argument("--no-lake", dest="lake", action="store_false")
    p.add_argument("--core", choices=CORES, default=d.core,
                   help="the shadow-core implementation (switching starts it with fresh state)")
    a = p.parse_args(argv)
    return JobOptions(rules=d.rules, parallelism=a.parallelism, group_id=a.group_id,
                      cassandra_max_in_flight=a.cassandra_max_in_flight, cassandra_dc=a.cassandra_dc,
                      cassandra=a.cassandra, lake=a.lake, core=a.core)


def ensure_exactly_once(env: StreamExecutionEnvironment, options: JobOptions) -> list[str]:
    """Exactly-once checkpointing set where unset; what is still wrong (incl. the lake path)."""
    return exactly_once_problems(env, configured_lake_path(os.environ), lake_enabled=options.lake)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    found = ensure_exactly_once(env, options)
    if found:
        log.error("shadow job refuses to start: %s", "; ".join(found))
        raise SystemExit(2)
    env.set_parallelism(options.parallelism)
    flush_buffers_quickly(env)
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(env, settings, options), options)
    log.info("submitting shadow job: topics %s -> downlink, shadow-verdicts, keyspace %s, lake %s (parallelism %d, "
             "%s core)", ", ".join(settings.topic(t) for t in INPUT_TOPICS), settings.cassandra_keyspace,
             settings.lake_path, options.parallelism, options.core)
    # The name is the package's: fleet stack status and the demo match jobs/<name>/ to it.
    env.execute("shadow")


if __name__ == "__main__":
    main()
