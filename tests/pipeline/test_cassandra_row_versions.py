"""Two versions of one row through the job's Cassandra sink must never merge cell by cell.

Cassandra settles two writes of one row with the same write timestamp cell by cell, in favour of
the greater value. Every statement of an UNLOGGED batch shares the batch's timestamp, so a
provisional rollup (the minute's first point) and the final one, batched together, used to be
stored as a row neither version was: min of the provisional, avg of the final, avg < min. Here
both versions go through the real sink (one subtask, within one batch linger) into the stack's
Cassandra, and the stored row must be exactly the last version, for every table the job upserts.
"""

from __future__ import annotations

import calendar
import json
import uuid

import pytest

pytestmark = [pytest.mark.pipeline, pytest.mark.integration]

BUCKET = 1_796_188_800_000
PROVISIONAL = {"bucket_start": BUCKET, "metric": "t", "min": 21.047, "max": 21.047, "avg": 21.047,
               "sum": 21.047, "count": 1}
FINAL = {"bucket_start": BUCKET, "metric": "t", "min": 17.005, "max": 22.251, "avg": 19.0218,
         "sum": 190.218, "count": 10}
# Later versions with smaller values in some cells: a cell-by-cell merge would keep the older ones.
STATS = [{"max_seq": 9, "last_ts": BUCKET + 9_000, "received": 10, "duplicates": 3, "late": 2, "lost": 0},
         {"max_seq": 19, "last_ts": BUCKET + 19_000, "received": 20, "duplicates": 0, "late": 0, "lost": 0}]
GAPS = [{"first_seq": 5, "last_seq": 9, "missing": 5, "after_ts": BUCKET, "before_ts": BUCKET + 9_000,
         "status": "open"},
        {"first_seq": 5, "last_seq": 5, "missing": 0, "after_ts": BUCKET, "before_ts": BUCKET + 1_000,
         "status": "filled"}]


@pytest.fixture(scope="module")
def written(stack):
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from jobs.telemetry.options import JobOptions
    from jobs.telemetry.sinks import ProductionSinks

    device = f"versions-{uuid.uuid4().hex[:10]}"
    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    config.set_string("restart-strategy.type", "none")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)  # one writer: the versions arrive in order, as from the keyed core
    sinks = ProductionSinks(stack, JobOptions(lake=False))

    def stream(rows):
        return env.from_collection([json.dumps({"device_id": device, **r}) for r in rows], type_info=Types.STRING())

    sinks.rollups(stream([PROVISIONAL, FINAL]))
    sinks.stats(stream(STATS))
    sinks.gaps(stream(GAPS))
    env.execute("cassandra-row-versions-test")
    return device


@pytest.fixture(scope="module")
def session(stack):
    from fleet.infra.cassandra import open_session

    s = open_session(stack, stack.cassandra_keyspace)
    yield s
    s.shutdown()


def test_a_rollup_row_is_its_last_version(written, session):
    row = session.execute(
        "SELECT min, max, avg, sum, count FROM telemetry_rollup_1m WHERE device_id = %s AND day = %s "
        "AND metric = 't'", (written, _day(BUCKET))).one()
    assert row._asdict() == {k: FINAL[k] for k in ("min", "max", "avg", "sum", "count")}
    assert row.min <= row.avg <= row.max


def test_a_stats_row_is_its_last_version(written, session):
    row = session.execute("SELECT max_seq, last_ts, received, duplicates, late, lost FROM telemetry_device_stats "
                          "WHERE device_id = %s", (written,)).one()
    got = row._asdict()
    got["last_ts"] = calendar.timegm(got["last_ts"].utctimetuple()) * 1000 + got["last_ts"].microsecond // 1000
    assert got == STATS[-1]


def test_a_gap_row_is_its_last_version(written, session):
    row = session.execute("SELECT last_seq, missing, status FROM telemetry_gaps WHERE device_id = %s AND first_seq = 5",
                          (written,)).one()
    assert row._asdict() == {"last_seq": 5, "missing": 0, "status": "filled"}


def _day(ms: int):
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date()
