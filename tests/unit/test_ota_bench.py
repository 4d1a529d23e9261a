"""bench/ota_bench.py's pure parts: its flags, the simulated device's answers (run through the OTA
job's own device operator, jobs/ota/logic.py, as the envelopes the bridge would produce), what it
counts of ota-events, and the figures and report it prints. The bench itself needs the stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import ota_bench as ob  # noqa: E402 - after the sys.path set-up above

from fleet.contract.topics import Kafka  # noqa: E402 - after the sys.path set-up above
from jobs.keyed_state import MemoryCell
from jobs.ota import logic  # noqa: E402 - after the sys.path set-up above

T0 = 1_767_225_600_000
DEV = "otab-abc123-00007"
FW = {"firmware_id": "f1", "device_type": "otab-abc123", "version": "1.0.0", "sha256": "ab" * 32, "size": 10,
      "signature": "c2ln", "signer": "platform"}


# -- flags ---------------------------------------------------------------------------------------


def test_the_defaults_are_the_issue_s_benchmark():
    a = ob.parse_args([])
    assert (a.devices, a.rate_per_minute, a.waves, a.health_window_ms) == (10_000, 60_000.0, ["1%", "10%", "100%"], 2_000)
    assert (a.download_clients, a.download_image_mb, a.range_kb, a.download_seconds) == (8, 20.0, 1024, 20.0)
    assert not (a.skip_rollout or a.skip_download or a.keep_devices) and a.warmup_max_s == 60.0


def test_flags_parse_and_bad_values_are_refused(capsys):
    a = ob.parse_args(["--devices", "500", "--waves", "10,50%,100%", "--rate-per-minute", "1200", "--skip-download"])
    assert (a.devices, a.waves, a.rate_per_minute, a.skip_download) == (500, [10, "50%", "100%"], 1200.0, True)
    for bad in (["--waves", "0%"], ["--waves", "abc"], ["--waves", "150%"], ["--rate-per-minute", "200000"],
                ["--devices", "0"], ["--health-window-ms", "-1"]):
        with pytest.raises(SystemExit):
            ob.parse_args(bad)
    assert "wave size" in capsys.readouterr().err


# -- the simulated device ------------------------------------------------------------------------

NOTICE = {"op": "install", "deployment_id": "dep1", "attempt": 1, "ts": T0,
          "firmware": {**{k: FW[k] for k in ("firmware_id", "version", "sha256", "size", "signature", "signer")},
                       "url": "/v1/ota/download/dep1?device=x&exp=1&sig=y"}}


def test_an_install_runs_through_and_reboots_into_the_new_version():
    answers = ob.device_answers(NOTICE, "0.0.1", reboot_ms=300)
    assert [(a.delay_ms, a.suffix, a.payload.get("state"), a.payload.get("online")) for a in answers] == [
        (0, "ota/status", "RECEIVED", None), (0, "ota/status", "DOWNLOADING", None),
        (0, "ota/status", "DOWNLOADED", None), (0, "ota/status", "INSTALLING", None),
        (0, "ota/status", "REBOOTING", None),
        (300, "status", None, False), (300, "status", None, True), (300, "ota/status", "BOOTED", None)]
    assert answers[5].payload == {"online": False, "firmware_version": "0.0.1", "reason": "reboot"}
    assert answers[6].payload == {"online": True, "firmware_version": "1.0.0"}
    assert answers[7].payload == {"deployment_id": "dep1", "state": "BOOTED", "firmware_version": "1.0.0", "boot": 1}


def test_a_held_device_stops_at_downloading_and_a_cancel_gets_no_answer():
    assert [a.payload["state"] for a in ob.device_answers(NOTICE, "0.0.1", hold=True)] == ["RECEIVED", "DOWNLOADING"]
    assert ob.device_answers({"op": "cancel", "deployment_id": "dep1", "ts": T0}, "0.0.1") == []


def test_the_answers_are_the_bridge_s_envelopes():
    topics = []
    for a in ob.device_answers(NOTICE, "0.0.1"):
        topic, key, value = ob.envelope(DEV, a.suffix, a.payload, T0 + 5)
        env = json.loads(value)
        topics.append(topic)
        assert key == DEV.encode()
        assert set(env) == {"device_id", "type", "ts", "ingest_ts", "mqtt_topic", "payload"}
        assert (env["device_id"], env["ts"], env["ingest_ts"], env["mqtt_topic"]) == (
            DEV, T0 + 5, T0 + 5, f"devices/{DEV}/{a.suffix}")
        assert env["type"] == {"ota/status": "ota_status", "status": "status"}[a.suffix]
        assert env["payload"] == {**a.payload, "ts": T0 + 5}
    assert topics == [Kafka.OTA_STATUS] * 5 + [Kafka.DEVICE_EVENTS] * 2 + [Kafka.OTA_STATUS]
    with pytest.raises(ValueError, match="dead-letter"):  # the schema is checked as the bridge checks it
        ob.envelope(DEV, "ota/status", {"deployment_id": "dep1", "state": "DONE"}, T0)


class Device:
    """The OTA job's device operator for one device (jobs/ota/logic.py), fed the bench's envelopes."""

    def __init__(self, health_window_ms: int = 2_000):
        self.cell = MemoryCell()
        self.events: list[str] = []
        self.notices: list[dict[str, Any]] = []
        self.wake: int | None = None
        self.health_window_ms = health_window_ms

    def _route(self, handled: logic.Handled) -> None:
        assert not [o for o in handled.outputs if o.kind == logic.DEAD_LETTER], handled.outputs
        self.events += [o.value["to"] for o in handled.outputs if o.kind == logic.EVENT]
        self.notices += [o.value["payload"] for o in handled.outputs if o.kind == logic.DOWNLINK]
        self.wake = handled.wake_at

    def feed(self, raw: bytes | str, now: int) -> None:
        raw = raw.decode() if isinstance(raw, bytes) else raw
        self._route(logic.device_handle(DEV, raw, now, self.cell, lambda dep, dev, fw, t: f"/v1/ota/download/{dep}"))

    def answer(self, a: ob.Answer, now: int) -> None:
        self.feed(ob.envelope(DEV, a.suffix, a.payload, now)[2], now)

    def assign(self, now: int) -> None:
        self.feed(json.dumps({"op": "assign", "deployment_id": "dep1", "device_id": DEV, "wave": 0, "firmware": FW,
                              "device": {"health_window_ms": self.health_window_ms}, "ts": now}), now)

    def fire(self, now: int) -> None:
        self._route(logic.device_fire(now, self.cell, lambda dep, dev, fw, t: f"/v1/ota/download/{dep}"))


def online_device() -> Device:
    d = Device()
    d.answer(ob.Answer(0, ob.STATUS, {"online": True, "firmware_version": ob.INITIAL_VERSION}), T0)
    d.assign(T0 + 10)
    assert d.events == ["QUEUED", "NOTIFIED"] and d.notices[0]["op"] == "install"
    return d


def test_the_job_takes_the_answers_to_success_after_the_health_window():
    d = online_device()
    booted_at = None
    for i, a in enumerate(ob.device_answers(d.notices[0], ob.INITIAL_VERSION)):
        at = T0 + 20 + i + a.delay_ms  # the delay counts from the notice
        d.answer(a, at)
        if a.payload.get("online") is True:
            booted_at = at  # back on the new version: VERIFYING from here
    assert d.events == list(ob.SUCCESS_PATH[:-1]) and len(d.notices) == 1
    assert booted_at is not None and d.wake == booted_at + 2_000
    d.fire(d.wake - 1)
    assert d.events[-1] == "VERIFYING"
    d.fire(d.wake)
    assert d.events == list(ob.SUCCESS_PATH)  # 8 transitions per device


@pytest.mark.parametrize("first", ["status", "ota/status"])
def test_success_does_not_depend_on_the_order_the_job_reads_the_two_topics_in(first):
    # device-events and ota-status are separate topics: the job may read the reboot's statuses
    # before or after the device's last reports; the device ignores a notice it already acts on.
    d = online_device()
    answers = ob.device_answers(d.notices[0], ob.INITIAL_VERSION)
    now = T0 + 20
    for a in sorted(answers, key=lambda a: a.suffix != first):  # stable: each topic keeps its order
        now += 1
        d.answer(a, now)
    assert d.events[-1] == "VERIFYING"
    d.fire(d.wake)
    assert d.events[-1] == "SUCCEEDED" and d.events.count("VERIFYING") == 1


def test_a_held_device_s_execution_stays_open():
    d = online_device()
    for i, a in enumerate(ob.device_answers(d.notices[0], ob.INITIAL_VERSION, hold=True)):
        d.answer(a, T0 + 20 + i)
    assert d.events == ["QUEUED", "NOTIFIED", "DOWNLOADING"]


# -- ota-events ----------------------------------------------------------------------------------


def transition(device: str, seq: int, to: str, ts: int) -> dict[str, Any]:
    return {"type": "transition", "deployment_id": "dep1", "device_id": device, "wave": 0, "from": None, "to": to,
            "ts": ts, "reason": "", "attempt": 1, "seq": seq}


def test_the_tally_drops_repeats_and_keeps_the_job_s_times():
    t = ob.Tally()
    for i, to in enumerate(ob.SUCCESS_PATH):
        assert t.add(transition("d1", i + 1, to, T0 + i * 1000))
    assert not t.add(transition("d1", 3, "DOWNLOADING", T0 + 2000))  # at least once: a repeat
    assert not t.add({"device_id": "d1", "seq": "x", "to": "QUEUED", "ts": T0})  # malformed
    assert (t.transitions, t.repeats, t.finals, t.succeeded_at) == (8, 1, 1, {"d1": T0 + 7000})
    assert t.span_s == 7.0 and t.per_s() == pytest.approx(8 / 7)
    assert t.peak_per_s(5) == 1.0 and t.peak_per_s(9) is None
    assert ob.Tally().per_s() is None and ob.Tally().peak_per_s() is None


def test_the_busiest_window():
    t = ob.Tally()
    seq = 0
    for second, n in ((0, 10), (1, 50), (2, 50), (3, 10), (6, 1)):
        for _ in range(n):
            seq += 1
            t.add(transition(f"d{seq}", 1, "QUEUED", T0 + second * 1000 + 1))
    assert t.peak_per_s(2) == 50.0 and t.peak_per_s(5) == 24.0


# -- figures and report --------------------------------------------------------------------------


def test_the_ideal_is_the_release_time_at_the_rate_plus_one_health_window_per_wave():
    # 1000/s: a second's burst releases wave 1 (100) and wave 2 (1,000) at once; wave 3 takes 7.9 s.
    assert ob.ideal_seconds([100, 1_000, 8_900], 60_000, 2_000) == pytest.approx(13.9)
    assert ob.ideal_seconds([60], 60, 0) == pytest.approx(59.0)  # 1/s, one device at once
    assert ob.ideal_seconds([], 60, 1_000) == 0


def test_the_target_lists_ids_up_to_the_api_s_limit_then_takes_the_group():
    assert ob.target_for(["a", "b"], "g") == {"device_ids": ["a", "b"]}
    assert ob.target_for([f"d{i}" for i in range(10_001)], "g") == {"group": "g"}


def view(state: str = "SUCCEEDED") -> dict[str, Any]:
    return {"deployment_id": "dep1", "state": state, "final": state != "RUNNING", "reason": "all final",
            "target_count": 2, "released": 2, "created_at": T0, "counts": {"SUCCEEDED": 2, "FAILED": 0},
            "waves": [{"index": 0, "size": 1}, {"index": 1, "size": 1}], "wave": 1,
            "history": [{"from": None, "to": "PENDING", "ts": T0}, {"from": "PENDING", "to": "RUNNING", "ts": T0 + 500},
                        {"from": "RUNNING", "to": "RUNNING", "ts": T0 + 3000},
                        {"from": "RUNNING", "to": state, "ts": T0 + 6000}]}


def sample_result() -> dict[str, Any]:
    t = ob.Tally()
    for d, start in (("d1", T0 + 600), ("d2", T0 + 3100)):
        for i, to in enumerate(ob.SUCCESS_PATH):
            t.add(transition(d, i + 1, to, start + (i * 10 if to != "SUCCEEDED" else 2_100)))
    cpu = {"flink-tm": 1.6, "api": 0.2, "kafka": 0.3, "cassandra": 0.4, "bridge": 0.0, "bench": 0.1, "machine": 3.2}
    ro = ob.rollout_figures(view(), t, {"d1": (T0 + 610, T0 + 640), "d2": (T0 + 3110, T0 + 3150)},
                            health_window_ms=2_000, rate_per_minute=60, wall_s=6.4, cpu_s=cpu, load_avg=1.5)
    store = {"bytes": 300 * ob.MB, "seconds": 1.0, "mb_per_s": 300.0, "cpu_s_per_mb": 0.001}
    dl = ob.download_figures(bytes_read=200 * ob.MB, requests=200, errors=0, error_examples=[], seconds=10.0, clients=8,
                             range_bytes=1 << 20, size=20 * ob.MB, sha256_ok=True,
                             cpu_s={"api": 4.0, "bench": 1.0, "machine": 9.0}, store=store, load_avg=2.0)
    base = {"cpu": {"us_per_op_best": 10.0, "us_per_op_median": 11.0, "repeats": 7, "ops_per_s_single_core": 1e5,
                    "python": "3.11"}, "broker": {"rate": 20_000.0, "p50_ms": 0.5}}
    res = {"baseline": base, "rollout": ro, "download": dl, "job_id": "j1", "job_running_for_s": 120.0,
           "job_submitted": False, "register_s": 4.2,
           "fleet": {"notices": 2, "repeated_notices": 0, "cancel_notices": 0, "produced": 18}}
    res["ratios"] = ob.run_ratios(res)
    return res


def test_the_rollout_figures():
    ro = sample_result()["rollout"]
    assert (ro["finish_s"], ro["start_s"], ro["wave_sizes"], ro["counts"]) == (6.0, 0.5, [1, 1], {"SUCCEEDED": 2})
    assert ro["ideal_s"] == pytest.approx(4.0) and ro["finish_vs_ideal"] == pytest.approx(1.5)  # 2 waves x (0 + 2 s)
    assert (ro["transitions"], ro["notices"], ro["succeeded_seen"]) == (16, 2, 2)
    assert ro["transitions_span_s"] == pytest.approx(4.6) and ro["transitions_per_s"] == pytest.approx(16 / 4.6)
    # notice created_at -> the SUCCEEDED transition: 2,090 ms for both; notice -> read by the bench: 30 and 40 ms
    # (bench/baseline.py's percentile takes the upper one of two)
    assert (ro["notice_to_succeeded_p50_ms"], ro["notice_to_bench_p50_ms"], ro["notice_to_bench_p99_ms"]) == (
        2090.0, 40.0, 40.0)
    assert ro["cpu_us_per_transition"]["flink-tm"] == 100_000 and ro["flink_tm_cores"] == 0.25


def test_the_ratios_and_the_report():
    res = sample_result()
    r = res["ratios"]
    assert r["finish_vs_ideal"] == pytest.approx(1.5)
    assert r["transitions_per_s_vs_raw_broker"] == pytest.approx(16 / 4.6 / 20_000)
    assert r["flink_tm_us_per_transition_vs_calibration"] == pytest.approx(10_000)
    assert r["download_mb_per_s_vs_store_read"] == pytest.approx(20 / 300)
    assert r["api_cpu_per_mb_vs_store_read"] == pytest.approx(20.0)
    assert r["api_us_per_mb_vs_calibration"] == pytest.approx(2_000)
    text = ob.format_report(res)
    assert "rollout to 2 simulated devices (waves 1, 1; 60/min; health window 2 s): SUCCEEDED (all final)" in text
    assert "finished 6.0 s after its creation" in text and "1.50 × ideal" in text
    assert "transitions: 16 in 4.6 s = 3/s sustained" in text
    assert "notice -> SUCCEEDED p50 2,090 ms" in text
    assert "downloads: 8 clients, 1,024 KiB ranges of a 20.0 MB image for 10.0 s: 20.0 MB/s" in text
    assert "sha256 ok" in text and "0.07 × baseline" in text and "API CPU 0.0200 s/MB" in text
    assert "simulated devices: 2 notices answered" in text and "registering took 4.2 s" in text


def test_the_report_of_a_rollout_that_did_not_finish():
    res = sample_result()
    ro = ob.rollout_figures(view("RUNNING") | {"history": []}, ob.Tally(), {}, health_window_ms=2_000,
                            rate_per_minute=60, wall_s=900.0, cpu_s={c: 0.0 for c in (*ob.COMPONENTS, "machine")},
                            load_avg=1.0)
    assert ro["finish_s"] is None and ro["transitions_per_s"] is None and ro["notice_to_succeeded_p50_ms"] is None
    res.update(rollout=ro, download=None)
    res["ratios"] = ob.run_ratios(res)
    text = ob.format_report(res)
    assert "finished - s after its creation" in text and "- × ideal" in text and "downloads" not in text


def test_progress_lines():
    line = ob.progress_line(12.4, {"state": "RUNNING", "wave": 1, "waves": [{}, {}, {}], "released": 1_100,
                                   "target_count": 10_000, "counts": {"VERIFYING": 40, "SUCCEEDED": 1_000, "QUEUED": 0}},
                            8_300, 1_100)
    assert line == ("     12 s: RUNNING wave 2/3, released 1,100/10,000; SUCCEEDED 1,000, VERIFYING 40; "
                    "bench read 8,300 transitions, 1,100 notices")
    assert ob.format_counts({}) == "none yet"
    assert ob.format_counts({"FAILED": 2, "SUCCEEDED": 3}) == "SUCCEEDED 3, FAILED 2"
