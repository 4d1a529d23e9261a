"""The demo's OTA round: the devices and plan it picks, its progress lines and its summary."""

from devtools import demo_ota
from devtools.demo_ota import OtaRound, choose, failure_reason, progress_line, stale_demo_deployments
from devtools.simulator import device_ids, parse_ota_faults
from fleet.ota.catalog import check_device_type, check_version
from fleet.ota.deployments import progress, validate_plan, wave_sizes


def test_the_rollout_takes_a_dozen_devices_past_the_shadow_rounds_and_one_fails_on_purpose():
    setup = choose(200)
    assert setup is not None
    assert setup.device_ids == [f"sim-{i:05d}" for i in range(20, 32)]
    assert setup.faulty == "sim-00022" and setup.fault_spec == "22:install_failure"
    # The simulator reads the spec as meaning that very device.
    faults = parse_ota_faults([setup.fault_spec], device_ids(200, "sim"))
    assert list(faults) == ["sim-00022"] and faults["sim-00022"].install_failure


def test_a_small_fleet_gives_its_last_dozen_and_a_smaller_one_no_round():
    setup = choose(15)
    assert setup is not None and setup.device_ids == [f"sim-{i:05d}" for i in range(3, 15)]
    assert setup.fault_spec == "5:install_failure"
    assert choose(12) is not None and choose(12).device_ids[0] == "sim-00000"  # type: ignore[union-attr]
    assert choose(11) is None


def test_the_plan_is_valid_and_one_failure_still_meets_its_wave():
    plan = validate_plan(demo_ota.plan())
    assert wave_sizes(plan, demo_ota.TARGETS) == [2, 5, 5]
    assert [w["success_threshold_pct"] for w in plan["waves"]] == [100, 75, 75]
    assert plan["rate_per_minute"] == 600 and plan["device"]["health_window_ms"] == 3_000
    # The faulty device is the first of wave 2 (wave 1 needs every device), and 4 of its 5 meet 75%.
    assert demo_ota.FAULT_POSITION == 2
    summary = {"state": "RUNNING", "wave": 2, "released": 7,
               "waves": [{"index": 0, "size": 2, "released": 2, "counts": {"SUCCEEDED": 2}},
                         {"index": 1, "size": 5, "released": 5, "counts": {"SUCCEEDED": 4, "FAILED": 1}}]}
    waves = progress(state="RUNNING", summary=summary, plan=plan, target_count=demo_ota.TARGETS)["waves"]
    assert [w["met"] for w in waves] == [True, True, False]
    request = demo_ota.deployment_request("fw-1", ["a", "b"])
    assert request["name"] == demo_ota.DEMO_NAME and request["target"] == {"device_ids": ["a", "b"]}


def test_the_fleet_runs_long_enough_for_the_round():
    assert demo_ota.fleet_duration(60, 15) == 15 + demo_ota.ROUND_SECONDS + 5
    assert demo_ota.fleet_duration(300, 15) == 300


def test_a_version_per_run():
    assert demo_ota.new_version(0) == "demo-19700101T000000"
    version = demo_ota.new_version()
    assert check_version(version) == version  # the catalog takes it
    assert check_device_type(demo_ota.DEVICE_TYPE) == "simulated"


def test_a_progress_line_shows_state_wave_released_and_counts():
    d = {"state": "RUNNING", "wave": 1, "released": 7, "target_count": 12, "waves": [
        {"index": 0, "size": 2, "released": 2, "counts": {"QUEUED": 0, "SUCCEEDED": 2}, "met": True},
        {"index": 1, "size": 5, "released": 5, "counts": {"INSTALLING": 1, "VERIFYING": 3, "FAILED": 1}, "met": False},
        {"index": 2, "size": 5, "released": 0, "counts": {"QUEUED": 0}, "met": False}]}
    assert progress_line(d) == ("RUNNING wave 2/3, released 7/12 | wave 1 2/2 met: SUCCEEDED 2 | "
                                "wave 2 5/5: INSTALLING 1, VERIFYING 3, FAILED 1 | wave 3 0/5")
    # The create answer (PENDING, nothing released) reads too.
    assert progress_line({"state": "PENDING", "wave": 0, "released": 0, "target_count": 12, "waves": []}) == \
        "PENDING wave 1/0, released 0/12"


def test_a_failed_devices_reason_is_its_last_transition():
    item = {"device_id": "sim-00022", "state": "FAILED", "execution": {"error": "x", "history": [
        {"from": None, "to": "QUEUED", "reason": "released"},
        {"from": "INSTALLING", "to": "FAILED", "reason": "install failed: writing the inactive slot failed (injected)"}]}}
    assert failure_reason(item) == "install failed: writing the inactive slot failed (injected)"
    assert failure_reason({"state": "FAILED", "execution": {"error": "crash_loop", "history": []}}) == "crash_loop"
    assert failure_reason({"state": "FAILED", "execution": None}) == "FAILED"


def test_only_the_demos_own_active_deployments_are_canceled_before_a_round():
    items = [{"deployment_id": "d1", "name": "demo-ota", "final": False},
             {"deployment_id": "d2", "name": "demo-ota", "final": True},
             {"deployment_id": "d3", "name": "rollout", "final": False}]
    assert stale_demo_deployments(items) == ["d1"]


def test_the_summary_says_how_it_ended_per_wave_and_who_failed():
    done = OtaRound(version="demo-1", targets=12, injected={"sim-00022": "install_failure"}, deployment_id="dep1",
                    state="SUCCEEDED", final=True, waves=[(2, 0), (4, 1), (5, 0)],
                    failed=[("sim-00022", "install failed: boom")], seconds=31.6)
    assert done.summary() == ("OTA: firmware demo-1 to 12 devices in 3 waves SUCCEEDED in 32 s; succeeded/failed per "
                              "wave 2/0, 4/1, 5/0; FAILED: sim-00022 (install failed: boom; injected install_failure)")


def test_the_summary_names_a_round_that_did_not_end_or_did_not_start():
    late = OtaRound(version="demo-1", targets=12, injected={"sim-00022": "install_failure"}, deployment_id="dep1",
                    state="RUNNING", final=False, canceled=True, waves=[(2, 0), (1, 0), (0, 0)], seconds=70.2,
                    failed=[("sim-00030", "install failed: disk")])
    assert late.summary() == ("OTA: firmware demo-1 to 12 devices in 3 waves not final after 70 s (RUNNING, canceled); "
                              "succeeded/failed per wave 2/0, 1/0, 0/0; FAILED: sim-00030 (install failed: disk); "
                              "injected but not FAILED: sim-00022 (install_failure)")
    assert OtaRound(errors=["firmware upload: 403 forbidden"]).summary() == \
        "OTA: no deployment made; errors: firmware upload: 403 forbidden"


def test_a_round_against_a_scripted_api(monkeypatch):
    """run_round's calls in order, with the API's answers scripted: the earlier demo deployment is
    canceled, a 409 while the job has not taken that yet is retried, a line per change, the summary."""
    import io

    from fleet.config import Settings

    monkeypatch.setattr(demo_ota, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(demo_ota.time, "sleep", lambda s: None)
    setup = choose(40)
    assert setup is not None

    def dep(state, wave, released, waves, final=False):
        return {"deployment_id": "dep1", "state": state, "final": final, "wave": wave, "released": released,
                "target_count": 12, "waves": [{"index": i, "size": size, "released": r, "counts": c, "met": m,
                                               "succeeded": c.get("SUCCEEDED", 0), "failed": c.get("FAILED", 0)}
                                              for i, (size, r, c, m) in enumerate(waves)]}

    pending = dep("PENDING", 0, 0, [(2, 0, {}, False), (5, 0, {}, False), (5, 0, {}, False)])
    wave1 = dep("RUNNING", 0, 2, [(2, 2, {"DOWNLOADING": 2}, False), (5, 0, {}, False), (5, 0, {}, False)])
    done = dep("SUCCEEDED", 2, 12, [(2, 2, {"SUCCEEDED": 2}, True), (5, 5, {"SUCCEEDED": 4, "FAILED": 1}, True),
                                    (5, 5, {"SUCCEEDED": 5}, True)], final=True)
    gets = iter([wave1, wave1, done])
    creates = iter([(409, {"detail": "held by d0"}), (201, pending)])
    calls = []

    def fake(base, key, method, path, *, params=None, body=None, data=None):
        calls.append((method, path))
        if (method, path) == ("POST", "/v1/firmware"):
            assert params["device_type"] == "simulated" and len(data) == demo_ota.IMAGE_BYTES
            return 201, {"firmware_id": "fw1"}
        if (method, path) == ("GET", "/v1/ota/deployments"):
            return 200, {"items": [{"deployment_id": "d0", "name": "demo-ota", "final": False}], "next_page_token": None}
        if path.endswith("/cancel"):
            return 202, {}
        if path.startswith("/v1/devices/"):
            return 200, {"status": "active", "connectivity": {"connected": True}}
        if (method, path) == ("POST", "/v1/ota/deployments"):
            assert body["target"]["device_ids"] == setup.device_ids
            return next(creates)
        if path == "/v1/ota/deployments/dep1/devices":
            assert params["state"] == "FAILED"
            return 200, {"items": [{"device_id": setup.faulty, "state": "FAILED", "execution": {"history": [
                {"to": "FAILED", "reason": "install failed: injected"}]}}]}
        assert (method, path) == ("GET", "/v1/ota/deployments/dep1"), (method, path)
        return 200, next(gets)

    monkeypatch.setattr(demo_ota, "_http", fake)
    out = io.StringIO()
    result = demo_ota.run_round(Settings(), "key", setup, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  ota   canceled d0, an earlier demo's deployment still active"
    assert "sim-00022 set to fail: install_failure" in lines[1]
    assert [line.split("s ", 1)[1] for line in lines[2:]] == [progress_line(pending), progress_line(wave1),
                                                               progress_line(done)]  # one line per change
    assert ("POST", "/v1/ota/deployments/d0/cancel") in calls and ("POST", "/v1/ota/deployments/dep1/cancel") not in calls
    assert result.final and result.state == "SUCCEEDED" and result.waves == [(2, 0), (4, 1), (5, 0)]
    assert result.summary().endswith("FAILED: sim-00022 (install failed: injected; injected install_failure)")
