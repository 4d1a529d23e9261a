"""jobs.ota.logic: the OTA job's two operators wired through an in-memory 'Kafka', no Flink.

Simulated devices answer each notice as told (succeed, fail the install, crash-loop, never
answer), so the rollout's waves, thresholds and the executions' timers run as in the job.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from fleet.ota import rollout as ro
from jobs.keyed_state import MemoryCell
from jobs.ota import logic

T0 = 1_700_000_000_000
FW = {"firmware_id": "f1", "device_type": "sensor", "version": "2.0.0", "sha256": "ab" * 32, "size": 10,
      "signature": "c2ln", "signer": "platform"}


def url_for(dep: str, device: str, fw: str, now: int) -> str:
    return f"/v1/ota/download/{dep}?device={device}&exp={now // 1000 + 60}&sig=x"


class Loop:
    def __init__(self, behaviour: dict[str, str]):
        self.behaviour = behaviour  # device -> ok | install_fail | crash | silent
        self.now = T0
        self.rollout_cells: dict[str, MemoryCell] = defaultdict(MemoryCell)
        self.members: dict[str, ro.MemoryMembers] = defaultdict(ro.MemoryMembers)
        self.device_cells: dict[str, MemoryCell] = defaultdict(MemoryCell)
        self.rollout_wake: dict[str, int | None] = {}
        self.device_wake: dict[str, int | None] = {}
        self.queue: list[tuple[str, str, str]] = []  # (operator, key, raw)
        self.rows: dict[str, dict[str, Any]] = {}
        self.all_rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployment: dict[str, Any] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.new_rows: list[dict[str, Any]] = []
        self.notices: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []

    def route(self, handled: logic.Handled, operator: str, key: str) -> None:
        (self.rollout_wake if operator == "rollout" else self.device_wake)[key] = handled.wake_at
        for out in handled.outputs:
            if out.kind == logic.ASSIGNMENT:
                self.queue.append(("device", str(out.key), json.dumps(out.value)))
            elif out.kind == logic.EVENT:
                self.queue.append(("rollout", str(out.key), json.dumps(out.value)))
            elif out.kind == logic.DOWNLINK:
                self.notices.append(out.value)
                self.device_answers(out.value)
            elif out.kind == logic.EXECUTION:
                self.rows[out.value["device_id"]] = out.value
                self.all_rows[(out.value["deployment_id"], out.value["device_id"])] = out.value
            elif out.kind == logic.DEPLOYMENT:
                self.deployments[out.value["deployment_id"]] = out.value
                if out.value["deployment_id"] == "dep1":
                    self.deployment = out.value
            elif out.kind == logic.REQUEST:
                self.queue.append(("rollout", str(out.key), json.dumps(out.value)))
            elif out.kind == logic.NEW_DEPLOYMENT:
                self.new_rows.append(out.value)
            else:
                self.dead.append(out.value)

    def status(self, device: str, **payload: Any) -> None:
        self.queue.append(("device", device, json.dumps({"device_id": device, "type": "ota_status",
                                                          "mqtt_topic": f"devices/{device}/ota/status",
                                                          "payload": payload})))

    def online(self, device: str, up: bool, version: str = "1.0.0") -> None:
        self.queue.append(("device", device, json.dumps({"device_id": device, "type": "status",
                                                          "payload": {"online": up, "firmware_version": version}})))

    def device_answers(self, msg: dict[str, Any]) -> None:
        device, p = msg["device_id"], msg["payload"]
        if p["op"] != "install":
            return
        assert p["firmware"]["url"].startswith(f"/v1/ota/download/{p['deployment_id']}?device={device}")
        how = self.behaviour.get(device, "ok")
        dep = p["deployment_id"]
        if how == "silent":
            return
        for s in ("RECEIVED", "DOWNLOADING", "DOWNLOADED", "INSTALLING"):
            self.status(device, deployment_id=dep, state=s)
        if how == "install_fail":
            self.status(device, deployment_id=dep, state="FAILED", failure="install", error="flash write")
            return
        self.status(device, deployment_id=dep, state="REBOOTING")
        self.online(device, False)
        version = p["firmware"]["version"]
        self.online(device, True, version)
        if how == "crash":
            for _ in range(3):
                self.online(device, False)
                self.online(device, True, version)

    def drain(self) -> None:
        while self.queue:
            operator, key, raw = self.queue.pop(0)
            self.now += 1
            if operator == "rollout":
                h = logic.rollout_handle(key, raw, self.now, self.rollout_cells[key], self.members[key])
            else:
                h = logic.device_handle(key, raw, self.now, self.device_cells[key], url_for)
            self.route(h, operator, key)

    def run_until(self, end: int) -> None:
        """Advance time, firing due timers (rollout and devices) and draining after each."""
        self.drain()
        while self.now < end:
            due = [(t, "rollout", k) for k, t in self.rollout_wake.items() if t is not None]
            due += [(t, "device", k) for k, t in self.device_wake.items() if t is not None]
            if not due or min(due)[0] > end:
                self.now = end
                return
            t, operator, key = min(due)
            self.now = max(self.now, t)
            if operator == "rollout":
                h = logic.rollout_fire(self.now, self.rollout_cells[key], self.members[key])
            else:
                h = logic.device_fire(self.now, self.device_cells[key], url_for)
            self.route(h, operator, key)
            self.drain()

    def create(self, devices: list[str], plan: dict[str, Any], rollback_firmware: tuple = ()) -> None:
        chunks = [devices[i:i + ro.TARGET_CHUNK] for i in range(0, len(devices), ro.TARGET_CHUNK)]
        self.queue.append(("rollout", "dep1", json.dumps({
            "op": "create", "deployment_id": "dep1", "created_at": T0, "created_by": "op", "name": "r1",
            "firmware": FW, "plan": plan, "target_count": len(devices), "chunks": len(chunks), "rollback_of": None,
            "rollback_firmware": list(rollback_firmware)})))
        for i, c in enumerate(chunks):
            self.queue.append(("rollout", "dep1", json.dumps({"op": "targets", "deployment_id": "dep1", "chunk": i,
                                                               "devices": c})))


DEVICE = {"health_window_ms": 2_000, "progress_timeout_ms": 5_000, "timeout_ms": 60_000, "max_boots": 2,
          "retries": {"download": 1, "install": 0, "verify": 0}}


def test_three_waves_succeed_with_healthy_devices_only() -> None:
    devices = [f"d{i:02}" for i in range(20)]
    loop = Loop({"d05": "install_fail"})
    for d in devices:
        loop.online(d, True)
    loop.create(devices, {"rate_per_minute": 6000, "device": DEVICE, "waves": [
        {"size": 2, "success_threshold_pct": 100},
        {"size": "40%", "success_threshold_pct": 80, "failure_threshold": {"count": 3}},
        {"size": "100%", "success_threshold_pct": 90, "failure_threshold": {"pct": 50, "min_sample": 5}}]})
    loop.run_until(T0 + 1_000)
    summary = json.loads(loop.deployment["summary"])
    # Wave 1 is released but nobody has passed the health window yet: no wave 2.
    assert summary["released"] == 2 and summary["counts"] == {"VERIFYING": 2}
    loop.run_until(T0 + 120_000)
    summary = json.loads(loop.deployment["summary"])
    assert loop.deployment["state"] == "SUCCEEDED", summary
    assert summary["counts"] == {"SUCCEEDED": 19, "FAILED": 1}
    assert [w["size"] for w in summary["waves"]] == [2, 8, 10]
    assert loop.rows["d05"]["state"] == "FAILED" and loop.rows["d00"]["state"] == "SUCCEEDED"
    assert not loop.dead


def test_failure_threshold_aborts_and_stops_the_rest() -> None:
    devices = [f"d{i:02}" for i in range(10)]
    loop = Loop({"d00": "crash", "d01": "install_fail", "d02": "silent"})
    for d in devices:
        loop.online(d, True)
    loop.create(devices, {"rate_per_minute": 60, "device": DEVICE,
                          "waves": [{"size": "100%", "failure_threshold": {"count": 3}}]})
    loop.run_until(T0 + 60_000)
    summary = json.loads(loop.deployment["summary"])
    assert loop.deployment["state"] == "ABORTED", summary
    assert loop.rows["d00"]["state"] == "FAILED"  # the crash loop never counted as success
    assert loop.rows["d02"]["state"] == "TIMED_OUT"
    assert summary["released"] < 10  # it stopped releasing
    assert "3 failed" in summary["reason"]


def test_operator_cancel_and_an_offline_device() -> None:
    loop = Loop({})
    loop.online("a", True)
    loop.create(["a", "b"], {"rate_per_minute": 6000, "device": DEVICE})
    loop.run_until(T0 + 100)
    assert loop.rows["b"]["state"] == "QUEUED"  # b never connected
    loop.queue.append(("rollout", "dep1", json.dumps({"op": "cancel", "deployment_id": "dep1", "by": "alice",
                                                       "ts": T0, "request_id": "r"})))
    loop.run_until(T0 + 10_000)
    assert loop.deployment["state"] == "CANCELED"
    assert loop.rows["b"]["state"] == "CANCELED"
    assert loop.rows["a"]["state"] == "SUCCEEDED"  # it was already past the point of no return
    loop.online("b", True)
    loop.drain()
    assert not [n for n in loop.notices if n["device_id"] == "b"]


def test_hostile_records_are_dead_letters() -> None:
    cell = MemoryCell()
    for raw in ("{oops", "[]", json.dumps({"device_id": "other", "type": "status", "payload": {"online": True}}),
                json.dumps({"device_id": "d1", "type": "ota_status", "payload": {"deployment_id": "x", "state": "?"}}),
                json.dumps({"device_id": "d1", "type": "ota_status",
                            "payload": {"deployment_id": "nope", "state": "DOWNLOADING"}})):
        h = logic.device_handle("d1", raw, T0, cell, url_for)
        assert [o.kind for o in h.outputs] == [logic.DEAD_LETTER], raw
    members = ro.MemoryMembers()
    rcell = MemoryCell()
    for raw in (json.dumps({"op": "targets", "deployment_id": "dep1", "chunk": 0, "devices": ["a"]}),
                json.dumps({"op": "create", "deployment_id": "dep2"}),
                json.dumps({"op": "create", "deployment_id": "dep1", "firmware": FW, "target_count": 0, "chunks": 0})):
        h = logic.rollout_handle("dep1", raw, T0, rcell, members)
        assert [o.kind for o in h.outputs] == [logic.DEAD_LETTER], raw


def test_a_dead_letter_keeps_the_keys_timer() -> None:
    cell = MemoryCell()
    logic.device_handle("d1", json.dumps({"device_id": "d1", "type": "status", "payload": {"online": True}}), T0,
                        cell, url_for)
    h = logic.device_handle("d1", json.dumps({"op": "assign", "deployment_id": "dep1", "device_id": "d1", "wave": 0,
                                              "firmware": FW, "device": DEVICE}), T0, cell, url_for)
    assert h.wake_at == T0 + 5_000  # the progress timeout
    assert logic.device_handle("d1", "{oops", T0 + 1, cell, url_for).wake_at == h.wake_at
    rcell, members = MemoryCell(), ro.MemoryMembers()
    logic.rollout_handle("dep1", json.dumps({"op": "create", "deployment_id": "dep1", "firmware": FW, "plan":
                                             {"rate_per_minute": 1}, "target_count": 3, "chunks": 1}), T0, rcell,
                         members)
    started = logic.rollout_handle("dep1", json.dumps({"op": "targets", "deployment_id": "dep1", "chunk": 0,
                                                       "devices": ["a", "b", "c"]}), T0, rcell, members)
    assert started.wake_at is not None and started.wake_at > T0
    assert logic.rollout_handle("dep1", "{oops", T0 + 1, rcell, members).wake_at == started.wake_at


def test_abort_with_rollback_puts_the_updated_devices_back_on_their_previous_version() -> None:
    devices = [f"d{i:02}" for i in range(6)]
    loop = Loop({"d02": "install_fail", "d03": "install_fail"})
    for d in devices:
        loop.online(d, True, "1.0.0")
    old = {**FW, "firmware_id": "f0", "version": "1.0.0"}
    loop.create(devices, {"rate_per_minute": 120, "device": DEVICE, "rollback_on_abort": True,
                          "waves": [{"size": "100%", "failure_threshold": {"count": 2}}]}, rollback_firmware=(old,))
    loop.run_until(T0 + 60_000)
    assert loop.deployment["state"] == "ABORTED"
    summary = json.loads(loop.deployment["summary"])
    assert summary["rollback"]["state"] == "STARTED" and summary["rollback"]["deployments"] == ["dep1-rb0"]
    updated = [d for d in devices if loop.all_rows.get(("dep1", d), {}).get("state") == "SUCCEEDED"]
    assert updated  # d00 and d01 finished before the second failure
    [row] = loop.new_rows
    assert (row["deployment_id"], row["rollback_of"], row["version"], row["target_count"]) == (
        "dep1-rb0", "dep1", "1.0.0", len(updated))
    assert loop.deployments["dep1-rb0"]["state"] == "SUCCEEDED"
    assert all(loop.all_rows[("dep1-rb0", d)]["state"] == "SUCCEEDED" for d in updated)
    back = [n for n in loop.notices if n["payload"].get("deployment_id") == "dep1-rb0"]
    assert {n["device_id"] for n in back} == set(updated)
    assert all(n["payload"]["firmware"]["version"] == "1.0.0" for n in back)


def test_the_deployment_row_is_written_on_state_changes_at_once_and_counts_at_most_every_interval() -> None:
    rcell, members = MemoryCell(), ro.MemoryMembers()
    devices = [f"d{i}" for i in range(20)]
    create = {"op": "create", "deployment_id": "dep1", "firmware": FW, "plan": {"rate_per_minute": 60_000},
              "target_count": 20, "chunks": 1}
    rows = [o for o in logic.rollout_handle("dep1", json.dumps(create), T0, rcell, members).outputs
            if o.kind == logic.DEPLOYMENT]
    started = logic.rollout_handle("dep1", json.dumps({"op": "targets", "deployment_id": "dep1", "chunk": 0,
                                                       "devices": devices}), T0 + 1, rcell, members)
    rows += [o for o in started.outputs if o.kind == logic.DEPLOYMENT]
    assert [r.value["state"] for r in rows] == ["PENDING", "RUNNING"]  # state changes: at once
    wake = None
    for i, d in enumerate(devices[:10]):  # ten transitions within 100 ms: no row
        h = logic.rollout_handle("dep1", json.dumps({"type": "transition", "deployment_id": "dep1", "device_id": d,
                                                     "wave": 0, "to": "NOTIFIED", "seq": 1}), T0 + 10 + i * 10, rcell,
                                 members)
        assert not [o for o in h.outputs if o.kind == logic.DEPLOYMENT]
        wake = h.wake_at
    assert wake == T0 + 1 + logic.ROW_INTERVAL_MS
    flushed = logic.rollout_fire(wake, rcell, members)
    [row] = [o for o in flushed.outputs if o.kind == logic.DEPLOYMENT]
    assert json.loads(row.value["summary"])["counts"] == {"NOTIFIED": 10}
    assert flushed.wake_at is None


def test_after_a_restore_the_new_path_of_a_device_wins_over_the_old_one() -> None:
    """The job restores a device from before its DOWNLOADED and, its inputs replayed in another
    order, takes it NOTIFIED -> VERIFYING -> SUCCEEDED: fewer transitions than it had sent before
    the crash. The rollout must still count it SUCCEEDED (seq grows with the clock)."""
    rcell, members = MemoryCell(), ro.MemoryMembers()
    logic.rollout_handle("dep1", json.dumps({"op": "create", "deployment_id": "dep1", "firmware": FW,
                                             "plan": {"rate_per_minute": 6000}, "target_count": 1, "chunks": 1}),
                         T0, rcell, members)
    logic.rollout_handle("dep1", json.dumps({"op": "targets", "deployment_id": "dep1", "chunk": 0,
                                             "devices": ["d1"]}), T0, rcell, members)
    cell = MemoryCell()
    online = json.dumps({"device_id": "d1", "type": "status", "payload": {"online": True, "firmware_version": "1.0"}})
    assign = json.dumps({"op": "assign", "deployment_id": "dep1", "device_id": "d1", "wave": 0, "firmware": FW,
                         "device": DEVICE})
    logic.device_handle("d1", online, T0, cell, url_for)
    snapshot = logic.device_handle("d1", assign, T0 + 1, cell, url_for)
    checkpoint = cell.value  # NOTIFIED
    events = [o for o in snapshot.outputs if o.kind == logic.EVENT]
    for s in ("DOWNLOADING", "DOWNLOADED"):
        h = logic.device_handle("d1", json.dumps({"device_id": "d1", "type": "ota_status", "payload": {
            "deployment_id": "dep1", "state": s}}), T0 + 2, cell, url_for)
        events += [o for o in h.outputs if o.kind == logic.EVENT]
    for e in events:
        logic.rollout_handle("dep1", json.dumps(e.value), T0 + 3, rcell, members)
    cell.value = checkpoint  # the crash: back to NOTIFIED; the reconnect on 2.0.0 is read first
    later = T0 + 10_000
    h = logic.device_handle("d1", json.dumps({"device_id": "d1", "type": "status", "payload": {
        "online": True, "firmware_version": "2.0.0"}}), later, cell, url_for)
    h2 = logic.device_fire(later + DEVICE["health_window_ms"], cell, url_for)  # type: ignore[operator]
    for e in [o for o in h.outputs + h2.outputs if o.kind == logic.EVENT]:
        logic.rollout_handle("dep1", json.dumps(e.value), later + 5_000, rcell, members)
    summary = ro.summary(ro.decode(rcell.value or ""))
    assert summary["counts"] == {"SUCCEEDED": 1} and summary["state"] == "SUCCEEDED"
