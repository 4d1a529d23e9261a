"""Commands benchmark against the RUNNING stack: round trip API -> device -> result, and a bulk fan-out.

    .venv/bin/python bench/commands_bench.py [--rate 200] [--stage-seconds 20] [--devices 200]
        [--bulk-devices 10000] [--with-telemetry 0] [--skip-round-trip] [--skip-bulk]

Simulated devices are real mTLS MQTT clients (bench/mqtt_devices.py; ids ``cmb-NNNNN`` for the
round trip, ``cmbulk-NNNNN`` in group ``cmbulk`` for the bulk stage, enrolled through the
registry once and kept under var/bench/command-devices/ so a rerun reuses them), all in one
asyncio process. Each subscribes at QoS 0 to ``devices/{id}/commands``, publishes its retained
``status`` ``{"online": true}``, and answers every command at once with a QoS 1
``commands/{command_id}/result`` ``{"status": "SUCCEEDED", "result": {...}}`` (no receipt first:
the contract makes it optional, and it would double the uplink the bench measures).

1. **Round trip**: ``POST /v1/devices/{id}/command?wait=10`` at ``--rate``/s for ``--stage-seconds``,
   round robin over ``--devices`` (operator API key, concurrent requests from one async HTTP
   client). Latency = sending the POST -> the API's 200 with the final SUCCEEDED result (the
   job saw the device's answer and the API read it from ``command-events``). Also: POST ->
   the command arriving at the device (the downlink's share) and device answer -> API answer.
   The targets: p50 < 100 ms, p99 < 500 ms at 200 commands/s.
2. **Bulk**: one ``POST /v1/command-batches`` to group ``cmbulk`` (``--bulk-devices`` devices, all
   connected). Times from the POST: every command handed to Kafka (the batch's ``submitted``),
   every device received its command (device side), every member past QUEUED ("all SENT", from
   the batch's counts), and every member final (``done``), polling ``GET
   /v1/command-batches/{id}`` every 250 ms.

Before any load: the same-run baseline (bench/baseline.py) and every figure also as a ratio to it;
a warm-up at the stage's rate in 5 s windows until three agree within 10 % (answered
commands/s). CPU µs per command of the TaskManager, bridge, API, Kafka, Cassandra, Mosquitto
and the bench itself (/proc) over each stage. One JSON object per run to
var/bench/commands-<time>.json, appended to var/bench/commands.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import baseline  # noqa: E402 - after the sys.path set-up above
import httpx  # noqa: E402 - after the sys.path set-up above
import results  # noqa: E402 - after the sys.path set-up above
from baseline import percentile  # noqa: E402 - after the sys.path set-up above
from e2e_bench import component_pids, cpu_snapshot, ensure_job, ensure_telemetry_job  # noqa: E402 - after the sys.path set-up above
from mqtt_devices import Device, DeviceFleet  # noqa: E402 - after the sys.path set-up above
from mqtt_driver import AsyncDriver  # noqa: E402 - after the sys.path set-up above
from results import fmt  # noqa: E402 - after the sys.path set-up above

from devtools.enrollment import RegistryEnrollment  # noqa: E402 - after the sys.path set-up above
from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above

COMPONENTS = ("flink-tm", "bridge", "api", "kafka", "cassandra", "mosquitto", "bench")
COMMAND = "bench.echo"
BULK_GROUP = "cmbulk"


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Responder:
    """Answers every command at once and remembers when each arrived (perf_counter ns)."""

    def __init__(self) -> None:
        self.arrived: dict[str, int] = {}
        self.answered_at: dict[str, int] = {}
        self.duplicates = 0
        self.bad = 0

    def __call__(self, d: Device, topic: str, payload: bytes, at: int) -> None:
        try:
            cmd = json.loads(payload)
            command_id = cmd["command_id"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if command_id in self.arrived:  # a redelivery: the contract says answer it again, run it once
            self.duplicates += 1
        else:
            self.arrived[command_id] = at
        d.publish(f"devices/{d.id}/commands/{command_id}/result",
                  b'{"status":"SUCCEEDED","result":{"echo":%s}}' % json.dumps(cmd.get("params", {})).encode())
        self.answered_at.setdefault(command_id, time.perf_counter_ns())


def enroll(settings: Settings, prefix: str, count: int, directory: Path, groups: list[str]) -> list:
    enrollment = RegistryEnrollment.open(settings, device_type="bench", groups=groups)
    done = 0
    lock = threading.Lock()
    step = max(1, count // 10)

    def one(i: int):
        nonlocal done
        identity = enrollment.enroll(f"{prefix}-{i:05d}", directory / f"{i:05d}")
        with lock:
            done += 1
            if done % step == 0:
                progress(f"  enrolled {done:,}/{count:,}")
        return identity

    with ThreadPoolExecutor(4) as pool:  # key generation and certificate issuance are CPU-bound
        return list(pool.map(one, range(count)))


# -- 1. round trip -------------------------------------------------------------------------------


async def _round_trip(api_url: str, key: str, devs: list[Device], responder: Responder, rate: float,
                      seconds: float) -> dict:
    lat: list[float] = []
    to_device: list[float] = []
    device_to_api: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=api_url, headers={"X-API-Key": key}, timeout=30.0, limits=limits) as api:

        async def one(i: int) -> None:
            d = devs[i % len(devs)]
            body = {"name": COMMAND, "params": {"i": i}, "timeout_s": 10, "ttl_s": 30}
            t0 = time.perf_counter_ns()
            try:
                r = await api.post(f"/v1/devices/{d.id}/command", json=body, params={"wait": 10})
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                return
            t1 = time.perf_counter_ns()
            if r.status_code != 200 or r.json().get("state") != "SUCCEEDED":
                errors.append(f"HTTP {r.status_code} {r.text[:100]}")
                return
            command_id = r.json()["command_id"]
            lat.append((t1 - t0) / 1e6)
            if command_id in responder.arrived:
                to_device.append((responder.arrived[command_id] - t0) / 1e6)
                device_to_api.append((t1 - responder.answered_at[command_id]) / 1e6)

        tasks = []
        start = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * elapsed) - i
            for _ in range(max(due, 0)):
                tasks.append(asyncio.ensure_future(one(i)))
                i += 1
            await asyncio.sleep(0.005)
        sent_for = time.monotonic() - start
        await asyncio.gather(*tasks)
        span = time.monotonic() - start
    return {"offered": rate, "seconds": seconds, "sent": i, "succeeded": len(lat), "errors": len(errors),
            "error_examples": errors[:3], "sent_per_s": round(i / sent_for, 1),
            "answered_per_s": round(len(lat) / span, 1),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None,
            "to_device_p50_ms": percentile(to_device, 50), "to_device_p99_ms": percentile(to_device, 99),
            "device_to_api_p50_ms": percentile(device_to_api, 50),
            "device_to_api_p99_ms": percentile(device_to_api, 99)}


def round_trip_stage(api_url: str, key: str, fleet: DeviceFleet, devs: list[Device], responder: Responder,
                     rate: float, seconds: float, pids: dict) -> dict:
    cpu0, load0 = cpu_snapshot(pids), os.getloadavg()[0]
    res = asyncio.run(_round_trip(api_url, key, devs, responder, rate, seconds))
    cpu1 = cpu_snapshot(pids)
    n = max(res["succeeded"], 1)
    res["cpu_us_per_command"] = {c: round((cpu1[c] - cpu0[c]) / n * 1e6) for c in COMPONENTS}
    res["machine_cpu_us_per_command"] = round((cpu1["machine"] - cpu0["machine"]) / n * 1e6)
    res["load_avg"] = round(load0, 2)
    res["meets_targets"] = bool(res["errors"] == 0 and res["p50_ms"] is not None and res["p50_ms"] < 100
                                and res["p99_ms"] < 500 and res["answered_per_s"] >= 0.95 * rate)
    return res


# -- 2. bulk -------------------------------------------------------------------------------------


def bulk_target(ids: list[str], enrolled_in_group: int) -> dict:
    """The group (a registry filter, as an operator would) when every device in it takes part;
    else the ids, so devices of an earlier, larger run that are not connected now are not targeted."""
    return {"group": BULK_GROUP} if len(ids) >= enrolled_in_group else {"device_ids": ids}


def bulk_stage(api: httpx.Client, responder: Responder, devs: list[Device], pids: dict, timeout: float,
               target: dict) -> dict:
    ids = {d.id for d in devs}
    cpu0, load0 = cpu_snapshot(pids), os.getloadavg()[0]
    arrived_before = set(responder.arrived)
    body = {"name": COMMAND, "params": {"bulk": True}, "timeout_s": 60, "ttl_s": 600, "target": target}
    t0 = time.monotonic()
    t0_ns = time.perf_counter_ns()
    r = api.post("/v1/command-batches", json=body)
    if r.status_code != 202:
        raise SystemExit(f"POST /v1/command-batches: HTTP {r.status_code} {r.text[:200]}")
    batch_id = r.json()["batch_id"]
    marks: dict[str, float | None] = {"submitted": None, "all_sent": None, "all_final": None}
    last: dict = {}
    next_report = t0 + 5
    while time.monotonic() - t0 < timeout:
        b = api.get(f"/v1/command-batches/{batch_id}")
        if b.status_code == 200:
            last = b.json()
            now = time.monotonic() - t0
            counts = last["counts"]
            if marks["submitted"] is None and last["state"] == "submitted":
                marks["submitted"] = now
            if (marks["all_sent"] is None and last["state"] == "submitted"
                    and sum(counts.values()) >= last["submitted"] and not counts.get("QUEUED")):
                marks["all_sent"] = now
            if last["done"]:
                marks["all_final"] = now
                break
            if time.monotonic() >= next_report:
                next_report += 5
                progress(f"  bulk: {now:.0f} s: submitted {last['submitted']:,}/{last['targeted']:,}, "
                         f"final {last['final']:,}, counts {counts}")
        time.sleep(0.25)
    cpu1 = cpu_snapshot(pids)
    new = [(at - t0_ns) / 1e9 for cid, at in responder.arrived.items() if cid not in arrived_before]
    n = max(last.get("targeted", 0), 1)
    return {"devices": len(ids), "batch_id": batch_id, "targeted": last.get("targeted"),
            "submitted": last.get("submitted"), "counts": last.get("counts"), "state": last.get("state"),
            "submitted_s": marks["submitted"], "all_sent_s": marks["all_sent"], "all_final_s": marks["all_final"],
            "received_by_devices": len(new), "all_received_s": max(new) if len(new) >= len(ids) else None,
            "received_p50_s": percentile(new, 50),
            "cpu_us_per_command": {c: round((cpu1[c] - cpu0[c]) / n * 1e6) for c in COMPONENTS},
            "machine_cpu_us_per_command": round((cpu1["machine"] - cpu0["machine"]) / n * 1e6),
            "load_avg": round(load0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="commands/s of the round-trip stage")
    ap.add_argument("--stage-seconds", type=float, default=20.0)
    ap.add_argument("--devices", type=int, default=200, help="devices the round trip spreads over")
    ap.add_argument("--bulk-devices", type=int, default=10_000)
    ap.add_argument("--bulk-timeout", type=float, default=600.0)
    ap.add_argument("--with-telemetry", type=float, default=0.0, help="telemetry msg/s alongside the round trip")
    ap.add_argument("--warmup-window-s", type=float, default=5.0)
    ap.add_argument("--warmup-max-s", type=float, default=60.0, help="0: no warm-up")
    ap.add_argument("--baseline-messages", type=int, default=20_000)
    ap.add_argument("--skip-round-trip", action="store_true")
    ap.add_argument("--skip-bulk", action="store_true")
    ap.add_argument("--api-url", default=None)
    a = ap.parse_args(argv)

    settings = Settings.from_env()
    bench_dir = settings.var_dir / "bench"
    dev_dir = bench_dir / "command-devices"
    bench_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ensure_job(settings, "commands")
    base = baseline.measure(settings, broker=a.baseline_messages > 0, broker_messages=a.baseline_messages)
    api_url = a.api_url or f"http://{settings.api_host}:{settings.api_port}"

    progress("enrolling devices (reused across runs) ...")
    before = time.monotonic()
    rt_ids = [] if a.skip_round_trip else enroll(settings, "cmb", a.devices, dev_dir / "rt", ["cmb"])
    bulk_ids = [] if a.skip_bulk else enroll(settings, "cmbulk", a.bulk_devices, dev_dir / "bulk", [BULK_GROUP])
    tele_ids = []
    if a.with_telemetry > 0 and not a.skip_round_trip:
        ensure_telemetry_job(settings)
        tele_ids = enroll(settings, "cmb-tel", 50, dev_dir / "tel", ["cmb"])
    enroll_s = time.monotonic() - before
    if enroll_s > 1:
        time.sleep(settings.registry_cache_ttl_s + 1)  # the bridge's registry cache must see new devices

    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    _, key = ApiKeyStore(CassandraSessions(settings).get()).create(f"commands-bench-{os.getpid()}", Role.operator, None)
    api = httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=30.0)
    responder = Responder()
    fleet = DeviceFleet(settings, rt_ids + bulk_ids, ["devices/{id}/commands"], responder)
    tele = AsyncDriver(settings, tele_ids) if tele_ids else None
    pids = component_pids(settings)
    result: dict = {"at": dt.datetime.now(dt.UTC).isoformat(), "cores": os.cpu_count(), "args": vars(a),
                    "baseline": base, "enroll_s": round(enroll_s, 1)}
    try:
        progress(f"connecting {len(fleet.devices):,} devices ...")
        result["connect_s"] = round(fleet.start(progress), 1)
        if tele:
            tele.start()
        time.sleep(2)  # the online status reaches the commands job through the bridge
        rt_devs = fleet.devices[:len(rt_ids)]
        if rt_devs:
            if a.warmup_max_s > 0:
                progress(f"warm-up at {a.rate:,.0f} commands/s in {a.warmup_window_s:.0f} s windows "
                         f"(<= {a.warmup_max_s:.0f} s):")

                def window() -> float:
                    return round_trip_stage(api_url, key, fleet, rt_devs, responder, a.rate, a.warmup_window_s,
                                            pids)["answered_per_s"]

                result["warmup"] = baseline.warm_up(window, max_seconds=a.warmup_max_s, label="answered/s")
            progress(f"1. round trip at {a.rate:,.0f} commands/s for {a.stage_seconds:.0f} s"
                     + (f" with {a.with_telemetry:,.0f} telemetry msg/s" if tele else "") + " ...")
            tele_th = None
            if tele:
                tele_th = threading.Thread(target=tele.run, args=(a.with_telemetry, a.stage_seconds), daemon=True)
                tele_th.start()
            rt = round_trip_stage(api_url, key, fleet, rt_devs, responder, a.rate, a.stage_seconds, pids)
            if tele_th:
                tele_th.join()
            rt["with_telemetry"] = a.with_telemetry
            result["round_trip"] = rt
            progress(f"   {json.dumps(rt)}")
        bulk_devs = fleet.devices[len(rt_ids):]
        if bulk_devs:
            progress(f"2. bulk command to {len(bulk_devs):,} devices (group {BULK_GROUP}) ...")
            enrolled = sum(1 for p in (dev_dir / "bulk").iterdir() if p.is_dir())
            target = bulk_target([d.id for d in bulk_devs], enrolled)
            result["bulk"] = bulk_stage(api, responder, bulk_devs, pids, a.bulk_timeout, target)
            progress(f"   {json.dumps(result['bulk'])}")
        result["redeliveries"] = responder.duplicates
        result["malformed"] = responder.bad
    finally:
        fleet.stop()
        if tele:
            tele.stop()
        api.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    print_report(result)
    results.save(result, bench_dir, "commands")
    return 0


def print_report(res: dict, out=sys.stdout) -> None:
    base = res["baseline"]
    broker, cal = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    rt = res.get("round_trip")
    if rt:
        c = rt["cpu_us_per_command"]
        out.write(f"round trip API -> device -> result at {rt['offered']:,.0f}/s offered "
                  f"({rt['sent_per_s']:,.0f}/s sent, {rt['answered_per_s']:,.0f}/s answered, "
                  f"{rt['succeeded']:,}/{rt['sent']:,} SUCCEEDED, {rt['errors']} errors): "
                  f"p50 {fmt(rt['p50_ms'])} ms, p99 {fmt(rt['p99_ms'])} ms, max {fmt(rt['max_ms'])} ms "
                  f"(targets < 100 / < 500 ms: {'met' if rt['meets_targets'] else 'NOT met'})\n")
        out.write(f"  POST -> at the device p50 {fmt(rt['to_device_p50_ms'])} / p99 {fmt(rt['to_device_p99_ms'])} ms; "
                  f"device answer -> API answer p50 {fmt(rt['device_to_api_p50_ms'])} / "
                  f"p99 {fmt(rt['device_to_api_p99_ms'])} ms\n")
        out.write(f"  CPU us/command: Flink TM {c['flink-tm']:,}, bridge {c['bridge']:,}, API {c['api']:,}, "
                  f"Kafka {c['kafka']:,}, Cassandra {c['cassandra']:,}, Mosquitto {c['mosquitto']:,}, "
                  f"bench {c['bench']:,}; machine {rt['machine_cpu_us_per_command']:,}\n")
        out.write(f"  as ratios: p50 {baseline.with_ratio(rt['p50_ms'], broker.get('p50_ms'), unit=' ms')}; "
                  f"machine {baseline.with_ratio(rt['machine_cpu_us_per_command'], cal, unit=' us/command')}\n")
    b = res.get("bulk")
    if b:
        out.write(f"bulk command to {b['devices']:,} devices: targeted {fmt(b['targeted'])}, counts {b['counts']}; "
                  f"all submitted to Kafka {fmt(b['submitted_s'], '.1f')} s, all SENT {fmt(b['all_sent_s'], '.1f')} s, "
                  f"all received by the devices {fmt(b['all_received_s'], '.1f')} s "
                  f"({b['received_by_devices']:,} received), all final {fmt(b['all_final_s'], '.1f')} s\n")
        out.write(f"  machine CPU {baseline.with_ratio(b['machine_cpu_us_per_command'], cal, unit=' us/command')}\n")
    out.write(f"redeliveries seen by devices: {res.get('redeliveries')}; enrolment {res.get('enroll_s')} s; "
              f"connecting {res.get('connect_s')} s\n")
    if res.get("warmup"):
        out.write(results.warmup_line(res["warmup"]))


if __name__ == "__main__":
    sys.exit(main())
