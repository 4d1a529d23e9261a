"""The telemetry job's pipeline on a file of envelopes, for bench/telemetry_bench.py.

Same build() as jobs/telemetry/job.py (jobs.telemetry.pipeline); the source is a Java FileSource (one JSON envelope per
line) so no Python produces records, and the sinks are chosen per run:
  discard      every output to a DiscardingSink (source + key + core only)
  lake         points -> TelemetryLakeSink (Parquet), the rest discarded
  lake-sql     points -> Flink SQL filesystem connector (parquet, partitioned), for comparison
  cassandra    points, rollups, gaps, stats -> CassandraUpsertSink
  all          lake + cassandra
``--core java|python`` picks the telemetry-core implementation (JobOptions.core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyflink.common import Configuration, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

from fleet.config import Settings
from jobs.telemetry.options import JobOptions
from jobs.telemetry.pipeline import build, envelopes
from jobs.telemetry.pyflink_internals import discard, envelope_rows
from jobs.telemetry.sinks import ProductionSinks


class BenchSinks:
    def __init__(self, settings: Settings, options: JobOptions, mode: str, env: StreamExecutionEnvironment):
        self.mode = mode
        self.env = env
        self.real = ProductionSinks(settings, options)
        self.settings = settings

    def points(self, ds):
        if self.mode in ("lake", "all"):
            self.real.options = JobOptions(**{**self.real.options.__dict__, "cassandra": self.mode == "all"})
            self.real.points(ds)
        elif self.mode == "cassandra":
            self.real.options = JobOptions(**{**self.real.options.__dict__, "lake": False})
            self.real.points(ds)
        elif self.mode == "lake-sql":
            self._lake_sql(ds)
        else:
            discard(ds, "discard-points")

    def _lake_sql(self, ds):
        from pyflink.table import StreamTableEnvironment

        t_env = StreamTableEnvironment.create(self.env)
        rows = envelope_rows(ds, "envelope-to-row")
        t_env.create_temporary_view("points", rows)
        base = (self.settings.lake_path / "telemetry-sql").resolve().as_uri()
        t_env.execute_sql(f"""
            CREATE TEMPORARY TABLE lake_sql (
              device_id STRING, ts TIMESTAMP_LTZ(3), seq BIGINT, ingest_ts BIGINT,
              metrics MAP<STRING, DOUBLE>, attrs STRING, `date` STRING, `hour` STRING
            ) PARTITIONED BY (`date`, `hour`) WITH (
              'connector' = 'filesystem', 'path' = '{base}', 'format' = 'parquet',
              'sink.partition-commit.policy.kind' = 'success-file',
              'sink.partition-commit.trigger' = 'process-time',
              'sink.parallelism' = '1'
            )""")
        statements = t_env.create_statement_set()
        statements.add_insert_sql("""
            INSERT INTO lake_sql SELECT device_id, TO_TIMESTAMP_LTZ(ts, 3), seq, ingest_ts, metrics, attrs,
              DATE_FORMAT(TO_TIMESTAMP_LTZ(ts, 3), 'yyyy-MM-dd'), DATE_FORMAT(TO_TIMESTAMP_LTZ(ts, 3), 'HH')
            FROM points""")
        statements.attach_as_datastream()

    def _other(self, ds, name, real):
        if self.mode in ("cassandra", "all"):
            real(ds)
        else:
            discard(ds, f"discard-{name}")

    def rollups(self, ds):
        self._other(ds, "rollups", self.real.rollups)

    def gaps(self, ds):
        self._other(ds, "gaps", self.real.gaps)

    def stats(self, ds):
        self._other(ds, "stats", self.real.stats)

    def dead_letters(self, ds):
        discard(ds, "discard-dead-letters")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--sinks", default="discard", choices=("discard", "lake", "lake-sql", "cassandra", "all"))
    p.add_argument("--event-time", default="payload", choices=("payload",))
    p.add_argument("--python-mode", default="thread", choices=("thread", "process"))
    p.add_argument("--keyspace", default=None)
    p.add_argument("--lake-dir", default=None, help="a throwaway lake (never the stack's own)")
    p.add_argument("--cassandra-batch", type=int, default=JobOptions().cassandra_batch)
    p.add_argument("--core", default=JobOptions().core, choices=("java", "python"))
    a = p.parse_args(argv)
    settings = Settings.from_env()
    if a.keyspace:
        settings = settings.replace(cassandra_keyspace=a.keyspace)
    if a.lake_dir:
        settings = settings.replace(lake_dir=Path(a.lake_dir))
    config = Configuration()
    config.set_string("python.execution-mode", a.python_mode)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    options = JobOptions(event_time="payload", cassandra_batch=a.cassandra_batch, core=a.core)
    source = FileSource.for_record_stream_format(StreamFormat.text_line_format(), a.input).build()
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "envelope-file")
    # Java: Row(device_id, raw) + event time from the envelope, as the Kafka source does.
    build(env, settings, envelopes(raw, options), BenchSinks(settings, options, a.sinks, env), options)
    env.execute(f"telemetry-bench-{a.sinks}-{a.core}-{a.event_time}-{a.python_mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
