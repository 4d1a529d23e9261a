"""fleet.telemetry.domain: envelope checks, dedup + gaps, lateness, rollups; table-driven."""

from __future__ import annotations

import base64
import json

import pytest

from fleet.contract.validation import kafka_schema
from fleet.telemetry import domain as dom

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a minute boundary
RULES = dom.TelemetryRules(allowed_lateness_ms=60_000, max_future_skew_ms=300_000, rollup_bucket_ms=60_000,
                           max_open_gaps=3)


def envelope(device="d-1", seq=0, ts=T0, metrics=None, attrs=None, ingest=None, **override):
    payload = {"ts": ts, "seq": seq, "metrics": {"temp": 1.0} if metrics is None else metrics}
    if attrs is not None:
        payload["attrs"] = attrs
    env = {"device_id": device, "type": "telemetry", "ts": ts, "ingest_ts": ts + 5 if ingest is None else ingest,
           "mqtt_topic": f"devices/{device}/telemetry", "payload": payload}
    env.update(override)
    return json.dumps(env)


def point(seq, sec, metrics=None, device="d-1"):
    ts = T0 + sec * 1000
    return dom.Point(device, ts, seq, ts + 5, {"temp": 1.0} if metrics is None else metrics, "{}", "t")


# --- parse_envelope --------------------------------------------------------------------------

def test_valid_envelope_becomes_a_point():
    p = dom.parse_envelope(envelope(seq=7, metrics={"temp": 21, "hum": 0.5}, attrs={"fw": "1.2"}), RULES)
    assert p == dom.Point("d-1", T0, 7, T0 + 5, {"temp": 21.0, "hum": 0.5}, '{"fw":"1.2"}', "devices/d-1/telemetry")
    assert type(p.metrics["temp"]) is float


def test_missing_attrs_is_an_empty_object():
    assert dom.parse_envelope(envelope(), RULES).attrs == "{}"


def _env_with(path: str, value) -> str:
    env = json.loads(envelope())
    target = env
    *parents, leaf = path.split(".")
    for p in parents:
        target = target[p]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return json.dumps(env)


_DELETE = object()

# (raw record, reason, detail contains, device_id in the dead letter)
REJECTED = [
    ("{not json", "invalid_json", "not valid JSON", None),
    ("[1, 2]", "invalid_envelope", "not a JSON object", None),
    (_env_with("device_id", "bad/id"), "invalid_envelope", "$.device_id", None),
    (_env_with("device_id", _DELETE), "invalid_envelope", "$.device_id", None),
    (_env_with("type", "status"), "invalid_envelope", "$.type", "d-1"),
    (_env_with("ingest_ts", "soon"), "invalid_envelope", "$.ingest_ts", "d-1"),
    (_env_with("payload", [1]), "invalid_envelope", "$.payload:", "d-1"),
    (_env_with("payload.ts", _DELETE), "invalid_envelope", "$.payload.ts", "d-1"),
    (_env_with("payload.ts", 12), "invalid_envelope", "$.payload.ts", "d-1"),
    (_env_with("payload.ts", True), "invalid_envelope", "$.payload.ts", "d-1"),
    (_env_with("payload.ts", T0 + 300_006), "ts_in_future", "ahead of ingest time", "d-1"),
    (_env_with("payload.seq", -1), "invalid_envelope", "$.payload.seq", "d-1"),
    (_env_with("payload.seq", 1.5), "invalid_envelope", "$.payload.seq", "d-1"),
    (_env_with("payload.metrics", _DELETE), "invalid_envelope", "$.payload.metrics", "d-1"),
    (_env_with("payload.metrics", {"temp": "hot"}), "invalid_envelope", "$.payload.metrics.temp", "d-1"),
    (_env_with("payload.metrics", {"temp": None}), "invalid_envelope", "$.payload.metrics.temp", "d-1"),
    (_env_with("payload.metrics", {"temp": 1e301}), "invalid_envelope", "$.payload.metrics.temp", "d-1"),
    (_env_with("payload.metrics", {f"m{i}": 1 for i in range(257)}), "invalid_envelope", "the limit is 256", "d-1"),
    (_env_with("payload.attrs", "x"), "invalid_envelope", "$.payload.attrs", "d-1"),
]


@pytest.mark.parametrize("raw,reason,detail,device_id", REJECTED, ids=[f"{r[1]}:{r[2]}" for r in REJECTED])
def test_rejected_envelopes(raw, reason, detail, device_id):
    out = dom.parse_envelope(raw, RULES)
    assert isinstance(out, dom.Rejected)
    assert (out.reason, out.device_id) == (reason, device_id)
    assert detail in out.detail


def test_dead_letter_matches_the_contract_shape():
    raw = _env_with("payload.seq", -1)
    rejected = dom.parse_envelope(raw, RULES)
    letter = dom.dead_letter(rejected, raw, now_ms=123)
    assert base64.b64decode(letter["raw_b64"]).decode() == raw
    assert letter["source"] == "telemetry-job" and letter["ingest_ts"] == T0 + 5
    # Same fields as the bridge's dead letters; only the reason codes are the job's own.
    schema = kafka_schema("dead-letter").schema
    assert set(letter) == set(schema["required"])


# --- observe: dedup, gaps, lateness ------------------------------------------------------------

def run(points, rules=RULES):
    state, steps = dom.DeviceState(), []
    for p in points:
        steps.append(dom.observe(state, p, rules))
    return state, steps


# (seqs with second offsets, outcomes, open gaps after, counters (received, duplicates, late, lost))
SEQUENCES = [
    ("in order", [(0, 0), (1, 1), (2, 2)], "AAA", [], (3, 0, 0, 0)),
    ("starts mid-way, no gap", [(41, 0), (42, 1)], "AA", [], (2, 0, 0, 0)),
    ("redelivery", [(0, 0), (1, 1), (1, 1), (0, 0)], "AADD", [], (2, 2, 0, 0)),
    ("gap", [(0, 0), (3, 3)], "AA", [(1, 2)], (2, 0, 0, 0)),
    ("gap filled in any order", [(0, 0), (3, 3), (2, 2), (1, 1)], "AAAA", [], (4, 0, 0, 0)),
    ("gap filled in the middle", [(0, 0), (4, 4), (2, 2)], "AAA", [(1, 1), (3, 3)], (3, 0, 0, 0)),
    ("duplicate of a fill", [(0, 0), (2, 2), (1, 1), (1, 1)], "AAAD", [], (3, 1, 0, 0)),
    ("late beyond 60 s of the device clock", [(0, 100), (1, 39)], "AL", [], (1, 0, 1, 0)),
    ("exactly at the lateness bound is in time", [(0, 100), (1, 40)], "AA", [], (2, 0, 0, 0)),
    ("late fill leaves the gap to be lost", [(0, 0), (2, 100), (1, 30)], "AAL", [(1, 1)], (2, 0, 1, 0)),
    ("gap lost once the clock passes it", [(0, 0), (2, 10), (3, 71)], "AAA", [], (3, 0, 0, 1)),
    ("too many open gaps: the oldest is lost", [(0, 0), (2, 1), (4, 2), (6, 3), (8, 4)], "AAAAA",
     [(3, 3), (5, 5), (7, 7)], (5, 0, 0, 1)),
]


@pytest.mark.parametrize("name,records,outcomes,gaps,counters", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_dedup_gaps_and_lateness(name, records, outcomes, gaps, counters):
    state, steps = run([point(seq, sec) for seq, sec in records])
    assert "".join(s.outcome.name[0] for s in steps) == outcomes
    assert [(g.first, g.last) for g in state.gaps] == gaps
    assert (state.received, state.duplicates, state.late, state.lost) == counters


def test_lost_gap_is_reported_with_its_neighbours_times():
    _, steps = run([point(0, 0), point(3, 10), point(4, 71)])
    assert steps[1].gaps == []  # detected, not yet final
    assert steps[2].gaps == [dom.GapReport(1, 2, 2, T0, T0 + 10_000, dom.GAP_LOST)]
    assert steps[2].stats_changed


def test_gap_and_bucket_request_timers():
    _, steps = run([point(0, 0), point(2, 10)])
    assert steps[0].timers == [T0 + 60_000 + 60_000]  # bucket end + lateness
    assert steps[1].timers == [T0 + 10_000 + 60_000]  # gap's before_ts + lateness


# --- rollups -------------------------------------------------------------------------------------

def test_buckets_are_final_when_the_device_clock_passes_them():
    state, steps = run([
        point(0, 0, {"temp": 10, "hum": 1}), point(1, 30, {"temp": 20}), point(2, 59, {"temp": 60}),
        point(3, 61, {"temp": 5}), point(4, 119, {"temp": 7}),
        point(5, 120, {"temp": 1}),  # clock 120 s: horizon 60 s, bucket [0, 60) is final
    ])
    assert [s.rollups for s in steps[:5]] == [[]] * 5
    assert steps[5].rollups == [
        dom.Rollup(T0, "hum", 1.0, 1.0, 1.0, 1, True),
        dom.Rollup(T0, "temp", 10.0, 60.0, 90.0, 3, True),
    ]
    assert steps[5].rollups[1].avg == 30.0
    assert sorted(state.buckets) == [T0 + 60_000, T0 + 120_000]


def test_late_record_does_not_touch_rollups():
    state, steps = run([point(0, 0, {"t": 1}), point(1, 200, {"t": 2}), point(2, 10, {"t": 100})])
    assert steps[2].outcome is dom.Outcome.LATE
    assert steps[1].rollups == [dom.Rollup(T0, "t", 1.0, 1.0, 1.0, 1, True)]
    assert list(state.buckets) == [T0 + 180_000]


def test_on_time_publishes_provisional_values_then_corrections():
    state, _ = run([point(0, 0, {"t": 1}), point(2, 10, {"t": 3})])
    early = dom.on_time(state, T0 + 60_000, RULES)  # nothing due yet
    assert (early.rollups, early.gaps) == ([], [])
    due = dom.on_time(state, T0 + 120_000, RULES)
    assert due.rollups == [dom.Rollup(T0, "t", 1.0, 3.0, 4.0, 2, False)]
    assert due.gaps == [dom.GapReport(1, 1, 1, T0, T0 + 10_000, dom.GAP_OPEN)]
    again = dom.on_time(state, T0 + 180_000, RULES)  # unchanged: nothing to republish
    assert (again.rollups, again.gaps) == ([], [])
    # The device was only quiet: seq 1 arrives in time (its clock is at 10 s).
    fill = dom.observe(state, point(1, 5, {"t": 2}), RULES)
    assert fill.outcome is dom.Outcome.ACCEPTED
    assert fill.gaps == [dom.GapReport(1, 1, 0, T0, T0 + 5_000, dom.GAP_FILLED)]
    final = dom.observe(state, point(3, 130, {"t": 9}), RULES)
    assert final.rollups == [dom.Rollup(T0, "t", 1.0, 3.0, 6.0, 3, True)]


def test_a_quiet_devices_stats_go_out_with_its_provisional_rollups():
    """A device that stopped sending: its delivery stats include its last minute once the fleet's
    event time moves past it, not only when the device sends again."""
    state, steps = run([point(0, 0, {"t": 1}), point(1, 10, {"t": 3})])
    assert not any(s.stats_changed for s in steps)  # nothing final yet
    assert not dom.on_time(state, T0 + 60_000, RULES).stats_changed
    due = dom.on_time(state, T0 + 120_000, RULES)
    assert due.rollups and due.stats_changed and state.received == 2
    assert not dom.on_time(state, T0 + 180_000, RULES).stats_changed  # nothing new since


def test_filling_the_middle_of_a_published_gap_rewrites_both_pieces():
    state, _ = run([point(0, 0), point(4, 4)])
    dom.on_time(state, T0 + 64_000, RULES)
    step = dom.observe(state, point(2, 2), RULES)
    assert step.gaps == [
        dom.GapReport(1, 1, 1, T0, T0 + 2_000, dom.GAP_OPEN),
        dom.GapReport(3, 3, 1, T0 + 2_000, T0 + 4_000, dom.GAP_OPEN),
    ]


def test_state_round_trips_through_flink_values():
    state, _ = run([point(0, 0, {"a": 1, "b|c": 2}), point(3, 70, {"a": 5}), point(1, 20, {"a": 3})])
    dom.on_time(state, T0 + 10**9, RULES)
    again = dom.decode_state(dom.encode_tracker(state), dom.encode_buckets(state))
    assert again == state


def test_empty_state_decodes_to_a_new_device():
    assert dom.decode_state(None, None) == dom.DeviceState()


def test_a_point_must_be_keyed_by_its_own_device():
    point = dom.parse_envelope(json.dumps({
        "device_id": "d-1", "type": "telemetry", "ingest_ts": 1_704_067_200_000, "mqtt_topic": "devices/d-1/telemetry",
        "payload": {"ts": 1_704_067_200_000, "seq": 1, "metrics": {}}}))
    assert dom.check_key(point, "d-1") is None
    rejected = dom.check_key(point, "d-2")
    assert (rejected.reason, rejected.device_id) == (dom.KEY_MISMATCH, "d-1")
    assert "record key is 'd-2'" in rejected.detail


# --- wall-clock timers: a quiet device's minute does not wait for the rest of the fleet ---------

@pytest.mark.parametrize("event_timer,wall_now,due", [
    # A live device (its clock is the wall clock): when the wall clock reaches the event timer.
    (1_000_120_000, 1_000_030_000, 1_000_122_000),
    # Rounded up to a whole second, so one device's timers coalesce.
    (1_000_120_001, 1_000_030_000, 1_000_123_000),
    # A backlog (old timestamps): the allowed lateness after now, for the upload to move on.
    (1_000_000_000, 2_000_000_000, 2_000_062_000),
])
def test_wall_clock_timer(event_timer, wall_now, due):
    rules = dom.TelemetryRules()
    assert dom.wall_clock_timer(event_timer, wall_now, rules) == due
    assert dom.wall_clock_now(due) >= event_timer  # on_time then publishes what that timer stood for


def test_a_wall_clock_timer_publishes_a_quiet_devices_minute():
    rules = dom.TelemetryRules()
    state = dom.DeviceState()
    start = 1_800_000_000_000
    step = dom.observe(state, dom.Point("d-1", start + 5_000, 0, start + 5_000, {"t": 1.0}, "{}", "t"), rules)
    [bucket_timer] = step.timers
    out = dom.on_time(state, dom.wall_clock_now(dom.wall_clock_timer(bucket_timer, start + 5_000, rules)), rules)
    assert [(r.bucket_start, r.count) for r in out.rollups] == [(start, 1)]


def test_an_average_stays_inside_min_and_max_when_the_sum_rounds():
    # 0.7 + 0.7 + 0.7 == 2.0999999999999996 in floating point: / 3 is below 0.7.
    rollup = dom.Rollup(0, "t", 0.7, 0.7, 0.7 + 0.7 + 0.7, 3, True)
    assert rollup.avg == 0.7
    assert dom.Rollup(0, "t", 1.0, 3.0, 4.0, 2, True).avg == 2.0
