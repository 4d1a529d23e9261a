"""bench/results.py: a bench run's JSON file and JSONL line, and the report's shared figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import results  # noqa: E402 - after the sys.path set-up above


def test_save_writes_the_run_and_appends_a_line(tmp_path, capsys):
    results.save({"a": 1, "at": Path("x")}, tmp_path, "shadow")
    out = results.save({"a": 2}, tmp_path, "shadow")
    assert out.name.startswith("shadow-") and json.loads(out.read_text()) == {"a": 2}
    lines = (tmp_path / "shadow.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1, "at": "x"}, {"a": 2}]
    assert f"results in {out} (and appended to {tmp_path / 'shadow.jsonl'})" in capsys.readouterr().out


def test_fmt_and_the_warmup_line():
    assert (results.fmt(None), results.fmt(1234.5), results.fmt(1.25, ".1f")) == ("-", "1,234", "1.2")
    w = {"stable": False, "seconds": 60.2, "windows": [1, 2, 3], "since_process_start_s": 75}
    assert results.warmup_line(w) == "Warm-up: NOT stable after 60 s (3 windows); 75 s after this process started\n"
