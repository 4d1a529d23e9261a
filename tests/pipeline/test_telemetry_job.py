"""The telemetry job's build() on in-memory records in a local Flink (thread mode).

The story, per device (T0 = 2024-01-01T00:00:00Z, times in seconds after it, allowed lateness 60 s):

d-1  seq 0 @0 temp 10, seq 1 @10 temp 20, seq 3 @30 temp 40, seq 2 @20 temp 30 (out of order,
     fills the gap), seq 1 @10 again (bridge redelivery: dropped), seq 4 @65 temp 50,
     seq 5 @200 temp 60 (clock 200: minutes 0 and 1 are final), seq 6 @100 temp 70 (100 < 200-60:
     late -> dead letter), seq 9 @210 temp 90 (gap 6..8), seq 10 @300 temp 100 (clock 300: the gap
     is lost, minute 3 is final). Minute 5 is still open at the end of input: published as
     provisional by the final watermark.
d-2  an hour behind d-1 (its own clock): accepted, because lateness is per device.
d-3  seq 0 @5, seq 2 @6 and then silence: the gap stays open and is published as such.
Plus an unreadable record and one from a device whose clock is 10 minutes ahead.

Expected values are worked out by hand in the comments. Every test runs on both cores (the
default Java one and the Python reference, ``JobOptions.core``) at parallelism 2 and 1.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

T0 = 1_704_067_200_000


def s(sec: float) -> int:
    return T0 + int(sec * 1000)


def env_json(device: str, seq: int, sec: float, metrics: dict, ingest_sec: float | None = None) -> str:
    ts = s(sec)
    return json.dumps({
        "device_id": device, "type": "telemetry", "ts": ts,
        "ingest_ts": ts + 5 if ingest_sec is None else s(ingest_sec),
        "mqtt_topic": f"devices/{device}/telemetry",
        "payload": {"ts": ts, "seq": seq, "metrics": metrics, "attrs": {"site": "x"}},
    }, separators=(",", ":"))


RECORDS = [
    env_json("d-1", 0, 0, {"temp": 10}),
    env_json("d-2", 100, -3600, {"hum": 1.5}),
    env_json("d-1", 1, 10, {"temp": 20}),
    env_json("d-1", 3, 30, {"temp": 40}),
    env_json("d-3", 0, 5, {"v": 1}),
    env_json("d-1", 2, 20, {"temp": 30}),
    env_json("d-1", 1, 10, {"temp": 20}),
    "{oops",
    env_json("d-1", 4, 65, {"temp": 50}),
    env_json("d-3", 2, 6, {"v": 3}),
    env_json("d-1", 5, 200, {"temp": 60}),
    env_json("d-2", 101, -3590, {"hum": 2.5}),
    env_json("d-1", 6, 100, {"temp": 70}),
    env_json("d-4", 0, 600, {"x": 1}, ingest_sec=0),
    env_json("d-1", 9, 210, {"temp": 90}),
    env_json("d-1", 10, 300, {"temp": 100}),
]

EXPECTED_POINTS = sorted(
    [("d-1", seq, s(sec)) for seq, sec in [(0, 0), (1, 10), (3, 30), (2, 20), (4, 65), (5, 200), (9, 210), (10, 300)]]
    + [("d-2", 100, s(-3600)), ("d-2", 101, s(-3590)), ("d-3", 0, s(5)), ("d-3", 2, s(6))]
)

# (device, bucket_start, metric) -> (min, max, avg, sum, count), the last value written per key.
EXPECTED_ROLLUPS = {
    ("d-1", s(0), "temp"): (10.0, 40.0, 25.0, 100.0, 4),  # seq 0..3: 10+20+40+30
    ("d-1", s(60), "temp"): (50.0, 50.0, 50.0, 50.0, 1),  # seq 4
    ("d-1", s(180), "temp"): (60.0, 90.0, 75.0, 150.0, 2),  # seq 5 and 9 (seq 6 was late)
    ("d-1", s(300), "temp"): (100.0, 100.0, 100.0, 100.0, 1),  # seq 10, provisional
    ("d-2", s(-3600), "hum"): (1.5, 2.5, 2.0, 4.0, 2),
    ("d-3", s(0), "v"): (1.0, 3.0, 2.0, 4.0, 2),
}

# (device, first_seq) -> (last_seq, missing, after_ts, before_ts, status)
EXPECTED_GAPS = {
    ("d-1", 6): (8, 3, s(200), s(210), "lost"),  # 6 was dead-lettered as late, 7 and 8 never came
    ("d-3", 1): (1, 1, s(5), s(6), "open"),
}

# device -> (max_seq, last_ts, received, duplicates, late, lost); d-2's minute never becomes final
# by its own clock, so its stats go out with its provisional rollups (final watermark).
EXPECTED_STATS = {
    "d-1": (10, s(300), 8, 1, 1, 3),
    "d-2": (101, s(-3590), 2, 0, 0, 0),
    "d-3": (2, s(6), 2, 0, 0, 0),
}


def read_json(out, name: str) -> list[dict]:
    """The core emits JSON text on every output."""
    return [json.loads(text) for text in out.read(name)]


def last_by(rows: list[dict], key) -> dict:
    out = {}
    for row in rows:
        out[key(row)] = row
    return out


@pytest.fixture(scope="module")
def run_job(tmp_path_factory):
    from pyflink.common import Types

    from fleet.config import Settings
    from jobs.telemetry.options import JobOptions
    from jobs.telemetry.pipeline import build, envelopes
    from tests.pipeline.collect import CollectingSinks, Collector
    from tests.pipeline.flink_env import local_env

    def run(core: str, parallelism: int) -> Collector:
        collector = Collector(tmp_path_factory.mktemp(f"telemetry-{core}-p{parallelism}"))
        env = local_env(parallelism)
        # A day of out-of-orderness: no timer fires before the end of input, when the final
        # watermark fires them all, so the run is deterministic whatever the machine's speed.
        options = JobOptions(out_of_orderness_ms=24 * 3600 * 1000, core=core)
        # Like one Kafka partition: a non-parallel source; envelopes() keys the records and
        # assigns event time in Java at the source's parallelism, as kafka_source does.
        raw = env.from_collection(RECORDS, type_info=Types.STRING()).name("records")
        source = envelopes(raw, options)

        settings = Settings.from_env({"FLEET_VAR_DIR": str(collector.directory)})
        build(env, settings, source, CollectingSinks(collector), options)
        env.execute(f"telemetry-test-{core}-p{parallelism}")
        return collector

    return run


@pytest.fixture(scope="module", params=[("java", 2), ("java", 1), ("python", 2), ("python", 1)],
                ids=["java-parallelism-2", "java-parallelism-1", "python-parallelism-2", "python-parallelism-1"])
def out(request, run_job):
    return run_job(*request.param)


def test_each_record_is_stored_once(out):
    points = read_json(out, "points")  # the accepted envelopes, as received
    assert sorted((p["device_id"], p["payload"]["seq"], p["payload"]["ts"]) for p in points) == EXPECTED_POINTS
    assert json.dumps(next(p for p in points if p["payload"]["seq"] == 3), separators=(",", ":")) == RECORDS[3]


def test_rollups_match_hand_computed_values(out):
    rows = last_by(read_json(out, "rollups"), lambda r: (r["device_id"], r["bucket_start"], r["metric"]))
    got = {k: (r["min"], r["max"], r["avg"], r["sum"], r["count"]) for k, r in rows.items()}
    assert got == EXPECTED_ROLLUPS


def test_gaps_are_reported(out):
    rows = last_by(read_json(out, "gaps"), lambda r: (r["device_id"], r["first_seq"]))
    got = {k: (r["last_seq"], r["missing"], r["after_ts"], r["before_ts"], r["status"]) for k, r in rows.items()}
    assert got == EXPECTED_GAPS


def test_device_stats(out):
    rows = last_by(read_json(out, "stats"), lambda r: r["device_id"])
    got = {k: (r["max_seq"], r["last_ts"], r["received"], r["duplicates"], r["late"], r["lost"]) for k, r in rows.items()}
    assert got == EXPECTED_STATS


def test_dead_letters_carry_reason_and_raw_bytes(out):
    import base64

    letters = read_json(out, "dead_letters")
    got = sorted((d["reason"], d["device_id"] or "") for d in letters)
    assert got == [("invalid_json", ""), ("late", "d-1"), ("ts_in_future", "d-4")]
    late = next(d for d in letters if d["reason"] == "late")
    assert json.loads(base64.b64decode(late["raw_b64"]))["payload"]["seq"] == 6
    assert "behind the device's newest ts" in late["detail"] and late["source"] == "telemetry-job"
