"""What the commands and shadow benches do with a run's result: keep it (one JSON file per run,
one line appended to the bench's JSONL) and print it (figures that may be missing, the warm-up)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def save(result: dict, bench_dir: Path, name: str) -> Path:
    """``bench_dir/<name>-<UTC time>.json`` and a line of ``bench_dir/<name>.jsonl``; says where."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out = bench_dir / f"{name}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    jsonl = bench_dir / f"{name}.jsonl"
    with open(jsonl, "a") as fh:
        fh.write(json.dumps(result, default=str) + "\n")
    print(f"results in {out} (and appended to {jsonl})")
    return out


def fmt(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def warmup_line(w: dict) -> str:
    """The report's line for baseline.warm_up's result."""
    return (f"Warm-up: {'stable' if w['stable'] else 'NOT stable'} after {w['seconds']:.0f} s "
            f"({len(w['windows'])} windows); {w['since_process_start_s']:.0f} s after this process started\n")
