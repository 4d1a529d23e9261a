"""Writes tests/vectors/telemetry/*.json: the scenarios below, with the outputs the Python
reference (fleet.telemetry.domain) gives for them.

    .venv/bin/python -m tests.vectors.regenerate

Run it only when a scenario is added or a rule changes on purpose, then read the diff: the
expected outputs are the spec both cores are held to (tests/unit/test_telemetry_vectors.py and
the JUnit suite in java/flink-fleet), so each one must be what its scenario means.
"""

from __future__ import annotations

import json

from tests.vectors.replay import VECTOR_DIR, run

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a minute boundary
RULES = {"allowed_lateness_ms": 10_000, "max_future_skew_ms": 300_000, "rollup_bucket_ms": 60_000,
         "max_open_gaps": 1000}


def env(seq: int, sec: float, metrics: dict | None = None, device: str = "d-1") -> dict:
    """An envelope from device d-1, ``sec`` seconds after T0."""
    ts = T0 + int(sec * 1000)
    return {"envelope": json.dumps({
        "device_id": device, "type": "telemetry", "ts": ts, "ingest_ts": ts + 50,
        "mqtt_topic": f"devices/{device}/telemetry",
        "payload": {"ts": ts, "seq": seq, "metrics": {"temp": 1.0} if metrics is None else metrics}},
        ensure_ascii=False)}


def at(sec: float) -> dict:
    """A timer firing: the fleet-wide event time reached T0 + sec."""
    return {"on_time": T0 + int(sec * 1000)}


def raw(text: str) -> dict:
    return {"envelope": text}


def valid_with(payload: str = f'{{"ts":{T0},"seq":0,"metrics":{{"temp":1}}}}', **top: str) -> dict:
    """Envelope text with one field replaced by literal JSON (to break one rule at a time)."""
    fields = {"device_id": '"d-1"', "type": '"telemetry"', "ts": str(T0), "ingest_ts": str(T0 + 50),
              "mqtt_topic": '"devices/d-1/telemetry"', "payload": payload}
    fields.update(top)
    return raw("{" + ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None) + "}")


def payload(**parts: str) -> str:
    fields = {"ts": str(T0), "seq": "0", "metrics": '{"temp":1}'}
    fields.update(parts)
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None) + "}"


SCENARIOS = {
    "in_order_rollup_closes": (
        "Three in-order records; the third (75 s) moves the device clock past the first minute plus "
        "the 10 s lateness, so minute 0 closes with a final rollup of the first two.",
        RULES, [env(0, 0, {"temp": 20}), env(1, 30, {"temp": 22}), env(2, 75, {"temp": 21})]),
    "duplicate_redelivered": (
        "seq 1 delivered twice: the second is a duplicate and changes nothing but the counter.",
        RULES, [env(0, 0), env(1, 1), env(1, 1)]),
    "gap_then_filled": (
        "seq 1-2 missing after seq 3 arrives; a timer publishes the gap as open; seq 1 then seq 2 "
        "arrive late but in time and the published gap is rewritten piece by piece as filled.",
        RULES, [env(0, 0), env(3, 2), at(12), env(1, 1), env(2, 1.5)]),
    "gap_declared_lost": (
        "seq 1 missing between 0 s and 1 s; a record at 20 s moves the clock 10 s past it, so the gap "
        "is final: lost. seq 1 arriving after that is counted as a duplicate (seq <= the highest "
        "seen, no longer inside a known gap), not as late.",
        RULES, [env(0, 0), env(2, 1), env(3, 20), env(1, 0.5)]),
    "late_record": (
        "The clock is at 30 s: a record at 5 s (25 s behind, limit 10 s) is late; one at exactly "
        "20 s (10 s behind) is still accepted.",
        RULES, [env(0, 30), env(1, 5), env(2, 20)]),
    "float_average_clamped": (
        "0.7 three times in one minute: the float sum is 2.0999999999999996, whose mean is below "
        "0.7; avg is clamped to [min, max].",
        RULES, [env(0, 1, {"x": 0.7}), env(1, 2, {"x": 0.7}), env(2, 3, {"x": 0.7}), env(3, 75, {"x": 1})]),
    "unusual_metric_names": (
        "Metric names that stress the state encoding and the rollup order: empty, the bucket-key "
        "separator '|', spaces, non-ASCII, a character outside the BMP (sorted by code point, "
        "so after U+FFFD).",
        RULES, [env(0, 1, {"": 1, "a|b": 2, "with space": 3, "température": 4, "\ufffd": 5, "🌡": 6, "Z": 7}),
                env(1, 75, {"Z": 8})]),
    "provisional_rollup_corrected": (
        "A quiet device: the timer at 70 s publishes minute 0 provisionally (final false); a second "
        "timer has nothing new; a record at 50 s still counts (clock 10 s) and the record at 80 s "
        "closes minute 0 with the corrected final rollup.",
        RULES, [env(0, 10, {"temp": 1}), at(70), at(70), env(1, 50, {"temp": 3}), env(2, 80, {"temp": 5})]),
    "too_many_open_gaps": (
        "max_open_gaps 2: the third open gap makes the oldest (seq 1) lost at once.",
        dict(RULES, max_open_gaps=2), [env(0, 0), env(2, 1), env(4, 2), env(6, 3)]),
    "rejected_envelopes": (
        "One envelope per validation rule, each rejected with its reason code; a valid one last.",
        RULES, [
            raw("{not json"),
            raw(""),
            raw("[1]"),
            valid_with(device_id='"bad id!"'),
            valid_with(type='"status"'),
            valid_with(ingest_ts=None),
            valid_with(ingest_ts="true"),
            valid_with(payload="[]"),
            valid_with(payload(ts="946684799999")),
            valid_with(payload(ts='"soon"')),
            valid_with(payload(ts=str(T0 + 300_051))),
            valid_with(payload(seq="-1")),
            valid_with(payload(seq="1.0")),
            valid_with(payload(metrics="[1]")),
            valid_with(payload(metrics="{" + ",".join(f'"m{i}":1' for i in range(257)) + "}")),
            valid_with(payload(metrics='{"temp":"hot"}')),
            valid_with(payload(metrics='{"on":true}')),
            valid_with(payload(metrics='{"big":1e301}')),
            valid_with(payload(attrs='"x"')),
            valid_with(payload(ts=str(T0 + 300_050))),
        ]),
}


def main() -> None:
    for name, (description, rules, steps) in SCENARIOS.items():
        vector = {"name": name, "description": description, "rules": rules, "steps": steps}
        for step, expect in zip(steps, run(vector), strict=True):
            step["expect"] = expect
        text = json.dumps(vector, indent=1, ensure_ascii=False)
        (VECTOR_DIR / f"{name}.json").write_text(text + "\n")
        print(f"{name}: {len(steps)} steps")


if __name__ == "__main__":
    main()
