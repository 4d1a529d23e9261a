"""Replays one telemetry vector (tests/vectors/telemetry/*.json) through the Python reference.

The JUnit twin (java/flink-fleet/src/test/java/fleet/flink/telemetry/TelemetryVectorsTest.java)
replays the same files through the Java logic; both round-trip the device state through its
stored encoding between steps, as the job does between records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet.telemetry import domain as dom

VECTOR_DIR = Path(__file__).parent / "telemetry"


def vector_files() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def rules_of(vector: dict[str, Any]) -> dom.TelemetryRules:
    return dom.TelemetryRules(**vector["rules"])


def _rollup(r: dom.Rollup) -> dict[str, Any]:
    return {"bucket_start": r.bucket_start, "metric": r.metric, "min": r.min, "max": r.max, "sum": r.sum,
            "count": r.count, "avg": r.avg, "final": r.final}


def _gap(g: dom.GapReport) -> dict[str, Any]:
    return {"first_seq": g.first_seq, "last_seq": g.last_seq, "missing": g.missing, "after_ts": g.after_ts,
            "before_ts": g.before_ts, "status": g.status}


def _counters(s: dom.DeviceState) -> dict[str, int]:
    return {"received": s.received, "duplicates": s.duplicates, "late": s.late, "lost": s.lost}


def _step(step: dom.Step, state: dom.DeviceState) -> dict[str, Any]:
    return {"outcome": step.outcome.value if step.outcome else None,
            "rollups": [_rollup(r) for r in step.rollups],
            "gaps": [_gap(g) for g in step.gaps],
            "timers": list(step.timers),
            "stats_changed": step.stats_changed,
            "counters": _counters(state)}


def run(vector: dict[str, Any]) -> list[dict[str, Any]]:
    """The outputs of every input of the vector, in order (what its "expect" entries hold)."""
    rules = rules_of(vector)
    state = dom.DeviceState()
    outputs = []
    for step in vector["steps"]:
        if "on_time" in step:
            outputs.append(_step(dom.on_time(state, step["on_time"], rules), state))
        else:
            parsed = dom.parse_envelope(step["envelope"], rules)
            if isinstance(parsed, dom.Rejected):
                # The reason code, and the field the detail names ("$.payload.ts"), not its wording.
                field = parsed.detail.split(":", 1)[0] if parsed.detail.startswith("$") else None
                outputs.append({"rejected": parsed.reason, "field": field})
                continue
            outputs.append(_step(dom.observe(state, parsed, rules), state))
        # What Flink stores between records: the state must survive its encoding.
        state = dom.decode_state(dom.encode_tracker(state), dom.encode_buckets(state))
    return outputs
