"""The commands job's entry point: options, startup checks, the Flink environment, execute.

Like the shadow job's (jobs/shadow/job.py): Settings from the FLEET_* environment, and the job
refuses to start without exactly-once checkpointing with retained checkpoints (its state, every
command's lifecycle and timers, must survive a TaskManager's kill -9). It writes no lake.
``python -m jobs.commands.job --help``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyflink.datastream import StreamExecutionEnvironment

from fleet.config import Settings
from jobs.checkpointing import exactly_once_problems
from jobs.commands.options import JobOptions
from jobs.commands.pipeline import INPUT_TOPICS, build, kafka_source
from jobs.commands.sinks import ProductionSinks
from jobs.latency import flush_buffers_quickly

# Not __name__: Flink's CLI runs this file as a top-level module of its own name.
log = logging.getLogger("jobs.commands.job")


def parse_args(argv: list[str]) -> JobOptions:
    d = JobOptions()
    p = argparse.ArgumentParser(prog="jobs/commands/job.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--parallelism", type=int, default=d.parallelism)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--keep-final-ms", type=int, default=d.keep_final_ms,
                   help="how long final commands stay whole in the job's state (late results); "
                        "then only their fingerprint, for 24 h")
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    a = p.parse_args(argv)
    return JobOptions(rules=d.rules, parallelism=a.parallelism, group_id=a.group_id, keep_final_ms=a.keep_final_ms,
                      cassandra_max_in_flight=a.cassandra_max_in_flight, cassandra_dc=a.cassandra_dc,
                      cassandra=a.cassandra)


def ensure_exactly_once(env: StreamExecutionEnvironment) -> list[str]:
    """Exactly-once checkpointing set where unset; what is still wrong (the job writes no lake)."""
    return exactly_once_problems(env, None, lake_enabled=False)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    found = ensure_exactly_once(env)
    if found:
        log.error("commands job refuses to start: %s", "; ".join(found))
        raise SystemExit(2)
    env.set_parallelism(options.parallelism)
    flush_buffers_quickly(env)
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(env, settings, options), options)
    log.info("submitting commands job: topics %s -> downlink, command-events, keyspace %s (parallelism %d)",
             ", ".join(settings.topic(t) for t in INPUT_TOPICS), settings.cassandra_keyspace, options.parallelism)
    # The name is the package's: fleet stack status and the demo match jobs/<name>/ to it.
    env.execute("commands")


if __name__ == "__main__":
    main()
