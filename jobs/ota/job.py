"""The OTA job's entry point: options, startup checks, the Flink environment, execute.

Like the commands job's (jobs/commands/job.py): Settings from the FLEET_* environment, and the job
refuses to start without exactly-once checkpointing with retained checkpoints (every rollout's
waves and counts and every device's execution and timers must survive a TaskManager's kill -9).
It writes no lake. ``python -m jobs.ota.job --help``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyflink.datastream import StreamExecutionEnvironment

from fleet.config import Settings
from jobs.checkpointing import exactly_once_problems
from jobs.latency import flush_buffers_quickly
from jobs.ota.options import JobOptions
from jobs.ota.pipeline import DEVICE_TOPICS, ROLLOUT_TOPICS, build, kafka_source
from jobs.ota.sinks import ProductionSinks

# Not __name__: Flink's CLI runs this file as a top-level module of its own name.
log = logging.getLogger("jobs.ota.job")


def parse_args(argv: list[str]) -> JobOptions:
    d = JobOptions()
    p = argparse.ArgumentParser(prog="jobs/ota/job.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--parallelism", type=int, default=d.parallelism)
    p.add_argument("--group-id", default=d.group_id)
    p.add_argument("--cassandra-max-in-flight", type=int, default=d.cassandra_max_in_flight)
    p.add_argument("--cassandra-dc", default=d.cassandra_dc)
    p.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    p.add_argument("--restore-grace-ms", type=int, default=d.restore_grace_ms,
                   help="after a start or restore, timers wait this long for the backlog of device reports")
    a = p.parse_args(argv)
    return JobOptions(parallelism=a.parallelism, group_id=a.group_id, cassandra_max_in_flight=a.cassandra_max_in_flight,
                      cassandra_dc=a.cassandra_dc, cassandra=a.cassandra, restore_grace_ms=a.restore_grace_ms)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    env = StreamExecutionEnvironment.get_execution_environment()
    found = exactly_once_problems(env, None, lake_enabled=False)
    if found:
        log.error("ota job refuses to start: %s", "; ".join(found))
        raise SystemExit(2)
    env.set_parallelism(options.parallelism)
    flush_buffers_quickly(env)
    build(env, settings, kafka_source(env, settings, options, ROLLOUT_TOPICS, "kafka-ota-rollout-inputs"),
          kafka_source(env, settings, options, DEVICE_TOPICS, "kafka-ota-device-inputs"),
          ProductionSinks(env, settings, options), options)
    log.info("submitting ota job: %s and %s, keyspace %s (parallelism %d)",
             ", ".join(settings.topic(t) for t in ROLLOUT_TOPICS), ", ".join(settings.topic(t) for t in DEVICE_TOPICS),
             settings.cassandra_keyspace, options.parallelism)
    # The name is the package's: fleet stack status and the demo match jobs/<name>/ to it.
    env.execute("ota")


if __name__ == "__main__":
    main()
