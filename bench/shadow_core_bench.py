"""Micro-benchmark of the shadow job's per-record work, without Flink, Kafka or MQTT.

    .venv/bin/python bench/shadow_core_bench.py [--records 20000] [--devices 200] [--repeats 5]

Times, on synthetic but realistic records (a device reporting ~12 fields, two of them nested
objects, of which 2-3 change per update; an operator changing one desired field):

* ``apply_update``: fleet.shadow.domain.apply_update alone on a decoded document (the rules);
* ``handle(update)``: jobs/shadow/logic.handle on a bridge envelope of type shadow_update with a
  MemoryState (JSON parse, token bucket, decode/apply/encode of the document, the output records:
  accepted downlink, shadow row, history row; the lake takes the history rows) - what the job's Python runs per report;
* ``handle(desired)``: the same for an operator's desired change (verdict + delta downlink).

Each figure is the best of ``--repeats`` runs, in us/record and as a ratio to the same-run CPU
calibration (bench/baseline.py: us per calibration op), so machines can be compared. Prints a
cProfile summary of ``handle(update)`` (where the time goes) unless ``--no-profile``; appends one
JSON line to var/bench/shadow_core.jsonl.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import baseline  # noqa: E402 - after the sys.path set-up above

from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above
from fleet.shadow import domain as dom  # noqa: E402 - after the sys.path set-up above
from jobs.shadow import logic  # noqa: E402 - after the sys.path set-up above


def reported(seq: int) -> dict:
    """A device's reported state: mostly stable fields, a few that change with every report."""
    return {"seq": seq, "temperature": round(20 + (seq % 50) / 10, 2), "humidity": 40 + seq % 20,
            "battery": 87 - (seq // 100) % 50, "rssi": -65, "firmware": "1.4.2", "uptime_s": seq * 30,
            "mode": "eco", "online_since": 1764700000000,
            "config": {"interval_s": 30, "threshold": 25.5, "unit": "C", "leds": [1, 0, 1]},
            "location": {"lat": 52.52, "lon": 13.405, "site": "plant-3"}}


def update_envelope(device_id: str, seq: int, ts: int) -> str:
    payload = {"state": {"reported": reported(seq)}, "client_token": str(seq)}
    return json.dumps({"type": "shadow_update", "device_id": device_id, "mqtt_topic": f"devices/{device_id}/shadow/update",
                       "ingest_ts": ts, "payload": payload})


def desired_record(device_id: str, seq: int, ts: int) -> str:
    return json.dumps({"request_id": f"r-{device_id}-{seq}", "device_id": device_id, "shadow": "",
                       "state": {"desired": {"config": {"interval_s": 10 + seq % 50}}}, "version": None, "actor": "bench",
                       "client_token": None, "ts": ts})


def best_us(fn, n: int, repeats: int, rows: list | None = None) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        if rows is not None:  # a repeat needs later times than the last one (token buckets, versions' times)
            rows[:] = [(k, raw, t + 10_000_000) for k, raw, t in rows]
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0] / n * 1e6, times[len(times) // 2] / n * 1e6


def measure(records: int, devices: int, repeats: int) -> dict:
    ids = [f"core-{i:05d}" for i in range(devices)]
    now = 1_764_700_000_000
    # Documents in a realistic state: every device has reported (and has one desired field).
    states = {d: logic.MemoryState() for d in ids}
    for d in ids:
        logic.handle(d, update_envelope(d, 0, now), now, states[d])
        logic.handle(d, desired_record(d, 0, now), now, states[d])
    # Records spaced 200 ms apart per device: under the 10/s rate limit, so every one is applied.
    upd = [(ids[i % devices], update_envelope(ids[i % devices], i + 1, now), now + 200 * (i // devices + 1))
           for i in range(records)]
    des = [(ids[i % devices], desired_record(ids[i % devices], i + 1, now), now + 200 * (i // devices + 1) + 100)
           for i in range(records)]

    def run_updates():
        for key, raw, t in upd:
            logic.handle(key, raw, t, states[key])

    def run_desired():
        for key, raw, t in des:
            logic.handle(key, raw, t, states[key])

    docs = {d: dom.decode(states[d].document(dom.CLASSIC)) for d in ids}
    updates = [dom.parse_update({"state": {"reported": reported(i + 1)}}, dom.Source(dom.DEVICE, ids[i % devices]), now)
               for i in range(records)]

    def run_apply():
        for i, u in enumerate(updates):
            d = ids[i % devices]
            r = dom.apply_update(docs[d], u)
            docs[d] = r.document

    out = {}
    for label, fn, rows in (("apply_update", run_apply, None), ("handle_update", run_updates, upd),
                            ("handle_desired", run_desired, des)):
        best, median = best_us(fn, records, repeats, rows)
        out[label] = {"us_per_record_best": round(best, 1), "us_per_record_median": round(median, 1)}
    t_next = max(t for _, _, t in upd + des) + 1000
    out["outputs_per_update"] = [o.kind for o in logic.handle(*upd[0][:2], t_next, states[upd[0][0]])]
    out["outputs_per_desired"] = [o.kind for o in logic.handle(
        ids[0], desired_record(ids[0], records + 7, t_next), t_next + 200, states[ids[0]])]
    if "dead_letter" in out["outputs_per_update"] + out["outputs_per_desired"]:
        raise SystemExit(f"synthetic records were refused: {out}")
    return out


def profile(records: int) -> str:
    state = logic.MemoryState()
    now = 1_764_700_000_000
    logic.handle("prof-1", update_envelope("prof-1", 0, now), now, state)
    rows = [update_envelope("prof-1", i + 1, now) for i in range(records)]
    prof = cProfile.Profile()
    prof.enable()
    for i, raw in enumerate(rows):
        logic.handle("prof-1", raw, now + 200 * (i + 1), state)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--jsonl", type=Path, default=None, help="default: var/bench/shadow_core.jsonl")
    a = ap.parse_args(argv)
    settings = Settings.from_env()
    base = baseline.measure(settings, broker=False)
    cal = base["cpu"]["us_per_op_best"]
    print(f"{a.records:,} records over {a.devices} devices, best of {a.repeats}:", file=sys.stderr)
    res = measure(a.records, a.devices, a.repeats)
    for label in ("apply_update", "handle_update", "handle_desired"):
        r = res[label]
        r["vs_calibration"] = baseline.ratio(r["us_per_record_best"], cal)
        print(f"  {label:<15} {r['us_per_record_best']:7.1f} us/record best ({r['us_per_record_median']:.1f} median)"
              f"  = {r['vs_calibration']:.2f} x calibration ({cal:.1f} us/op)"
              f"  -> one core: {1e6 / r['us_per_record_best']:,.0f} records/s")
    print(f"  outputs of one update: {', '.join(res['outputs_per_update'])}; of one desired change: "
          f"{', '.join(res['outputs_per_desired'])}")
    if not a.no_profile:
        print("cProfile of handle(update), by own time:")
        print("\n".join(profile(min(a.records, 5000)).splitlines()[:30]))
    jsonl = a.jsonl or settings.var_dir / "bench" / "shadow_core.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rec = {"at": dt.datetime.now(dt.UTC).isoformat(), "cores": os.cpu_count(), "records": a.records,
           "devices": a.devices, **res, "baseline": base,
           "ratios": {f"{k}_us_per_record_vs_calibration": res[k]["vs_calibration"]
                      for k in ("apply_update", "handle_update", "handle_desired")}}
    with open(jsonl, "a") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")
    print(f"results appended to {jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
