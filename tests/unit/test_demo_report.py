"""The demo checks this run's messages, not the whole lake (which holds earlier runs too)."""

from devtools.demo import Delivery, delivery


def test_other_devices_and_earlier_runs_are_not_counted():
    ranges = {"sim-1": [10, 13], "sim-2": [0, 2]}
    rows = [("sim-1", 9), ("sim-1", 10), ("sim-1", 11), ("sim-1", 12), ("sim-2", 0), ("sim-2", 1),
            ("other", 10), ("sim-2", 2)]
    assert delivery(ranges, rows) == Delivery(sent=5, present=5, duplicates=0, missing=0)
    assert delivery(ranges, rows).exactly_once


def test_duplicates_and_missing_are_reported():
    found = delivery({"sim-1": [0, 4]}, [("sim-1", 0), ("sim-1", 0), ("sim-1", 2)])
    assert found == Delivery(sent=4, present=2, duplicates=1, missing=2)
    assert not found.exactly_once


def test_the_shadow_round_summary_says_what_converged():
    from devtools.demo_shadow import ShadowRound

    done = ShadowRound(asked=3, accepted=3, converged=2, seconds=[0.2, 0.4], errors=[])
    assert done.summary() == ("Shadow: desired changed on 3 devices, accepted 3, applied and reported back by 2, "
                              "PATCH -> reported p50 400 ms, max 400 ms")
    assert ShadowRound().summary().startswith("Shadow: no change sent")
