"""The pure parts of bench/baseline.py: ratios, warm-up stability, the CPU calibration."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import baseline  # noqa: E402 - after the sys.path set-up above


def test_with_ratio_shows_value_and_ratio_to_the_baseline():
    assert baseline.with_ratio(2754, 13770, unit=" msg/s") == "2,754 msg/s (0.20 × baseline)"
    assert baseline.with_ratio(250.0, 8.0, spec=".0f", unit=" us/msg") == "250 us/msg (31.25 × baseline)"


def test_with_ratio_without_a_baseline_or_a_value():
    assert baseline.with_ratio(10, None) == "10 (no baseline)"
    assert baseline.with_ratio(10, 0) == "10 (no baseline)"
    assert baseline.with_ratio(None, 5) == "-"
    assert baseline.ratio(None, 5) is None
    assert baseline.ratio(3, 4) == 0.75


@pytest.mark.parametrize("values, span, stable", [
    ([], 2, False),
    ([1000], 2, False),
    ([1000, 1090], 2, True),            # 8.3 % apart
    ([1000, 1120], 2, False),           # 10.7 % apart
    ([500, 1000, 950], 2, True),        # only the last two count
    ([1000, 0], 2, False),              # a window with nothing delivered is never stable
    ([None, 1000], 2, False),
    ([1000, 1050], 3, False),           # three needed
    ([600, 1000, 1050, 960], 3, True),  # the last three within 8.6 % of the largest
    ([1000, 1050, 900], 3, False),      # 14 % between the extremes, though neighbours are closer
])
def test_windows_stable(values, span, stable):
    assert baseline.windows_stable(values, tolerance=0.10, span=span) is stable


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_warm_up_stops_at_the_first_two_consecutive_windows_within_tolerance():
    clock, figures = FakeClock(), iter([300, 700, 950, 1000, 5000])

    def window():
        clock.now += 3
        return next(figures)

    out = io.StringIO()
    result = baseline.warm_up(window, max_seconds=60, tolerance=0.10, out=out, clock=clock, span=2)
    assert result["stable"] is True
    assert result["seconds"] == 12
    assert [w["value"] for w in result["windows"]] == [300, 700, 950, 1000]
    assert "warm-up window 4: 1,000 msg/s (after 12.0 s)" in out.getvalue()
    assert "stable after 12.0 s" in out.getvalue()


def test_warm_up_by_default_needs_three_windows_in_a_row():
    clock, figures = FakeClock(), iter([300, 950, 1000, 700, 980, 1000, 990, 5000])

    def window():
        clock.now += 1
        return next(figures)

    result = baseline.warm_up(window, max_seconds=60, out=io.StringIO(), clock=clock)
    assert result["stable"] is True and result["span"] == 3
    assert [w["value"] for w in result["windows"]] == [300, 950, 1000, 700, 980, 1000, 990]


def test_warm_up_is_capped_and_says_it_never_became_stable():
    clock, figures = FakeClock(), iter([100, 200, 400, 800, 1600, 3200])

    def window():
        clock.now += 5
        return next(figures)

    out = io.StringIO()
    result = baseline.warm_up(window, max_seconds=15, out=out, clock=clock)
    assert result["stable"] is False
    assert len(result["windows"]) == 3
    assert "NOT stable" in out.getvalue() and "capped at 15 s" in out.getvalue()


def test_cpu_calibration_returns_sane_numbers():
    cal = baseline.cpu_calibration(repeats=3, ops=200)
    assert 0 < cal["us_per_op_best"] <= cal["us_per_op_median"]
    assert cal["us_per_op_best"] < 10_000  # a few us on any machine; 10 ms would mean it is broken
    assert cal["ops_per_s_single_core"] == pytest.approx(1e6 / cal["us_per_op_best"])
    assert cal["repeats"] == 3 and cal["ops"] == 200


def test_calibration_op_does_the_envelope_round_trip():
    # The serialised envelope plus its 5 numeric metrics: it really parsed what it wrote.
    import json

    assert baseline.calibration_op() == len(json.dumps(baseline.ENVELOPE)) + 5


def test_percentile():
    assert baseline.percentile([], 50) is None
    assert baseline.percentile([5, 1, 3], 50) == 3
    assert baseline.percentile(list(range(101)), 99) == 99
