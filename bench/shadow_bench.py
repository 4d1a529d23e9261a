"""Shadow benchmark against the RUNNING stack: desired -> delta at the device, report -> visible in the API.

    .venv/bin/python bench/shadow_bench.py [--rates 200,500,1000] [--stage-seconds 15] [--devices 200]
        [--delta-samples 100] [--delta-rate 5] [--with-telemetry 0]

Simulated devices are real mTLS MQTT clients (registered through devtools enrollment, ids
``shb-NNNNN``, kept under var/bench/shadow-devices/ so a rerun reuses them), all in one asyncio
process (bench/mqtt_devices.py), each subscribed at QoS 0 to ``devices/{id}/shadow/#``.

1. **desired -> delta**: ``--delta-samples`` PATCHes of ``/v1/devices/{id}/shadow`` (operator API
   key, no If-Match) at ``--delta-rate``/s over 20 devices; latency = from sending the PATCH
   until ``shadow/delta`` with the version the PATCH answered arrives at the device (one clock).
2. **report -> visible in the API**: per stage, the fleet publishes ``shadow/update`` (QoS 1, a
   ~300 B reported state, 2-3 fields changing) at the offered rate, round robin over
   ``--devices`` (keep rate/devices under the 10/s per-shadow limit). 4 probe devices publish
   5 updates/s in all, each followed by ``GET /v1/devices/{id}/shadow?min_version=v`` (the API
   waits server side, reading every 50 ms) until the document shows the probe's seq: latency
   = publish -> that answer. Counted per stage: published (PUBACKed), ``accepted`` and
   ``rejected`` replies received by the devices (a verdict per update), CPU us/update of the
   Flink TaskManager (which runs the shadow job's Python), bridge, API, Kafka, Cassandra,
   Mosquitto (/proc) from the stage start until every verdict arrived (or ``--drain-seconds``).
   A stage "holds" when every update got its verdict no later than 2 s after publishing ended
   (no growing backlog) and the API p99 < ``--p99-target-ms`` (500) with no probe missing.
3. ``--with-telemetry RATE``: telemetry at RATE msg/s from 50 other devices (bench/mqtt_driver.py)
   during every stage (needs the telemetry job; submitted if none runs).

Before any load: the same-run baseline (bench/baseline.py) and the figures as ratios to it; a
warm-up at the first rate in ``--warmup-window-s`` windows (figure: verdicts/s) until three
agree within 10 %. One JSON object per run to var/bench/shadow-<time>.json and appended to
var/bench/shadow.jsonl. The per-record Python cost alone: bench/shadow_core_bench.py.
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
from mqtt_driver import AsyncDriver, _utf8  # noqa: E402 - after the sys.path set-up above
from results import fmt  # noqa: E402 - after the sys.path set-up above

from devtools.enrollment import RegistryEnrollment  # noqa: E402 - after the sys.path set-up above
from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above

TICK_S = 0.005
DELTA_DEVICES = 20
PROBES = 4
PROBE_RATE = 5.0
COMPONENTS = ("flink-tm", "bridge", "api", "kafka", "cassandra", "mosquitto", "bench")


def now_ns() -> int:
    return time.perf_counter_ns()


class Dev(Device):
    """A device of the bench (bench/mqtt_devices.py): the shadow updates it publishes, the verdicts
    and deltas it reads."""

    def __init__(self, identity):
        super().__init__(identity)
        self.topic = _utf8(f"devices/{self.id}/shadow/update")
        self.prefix = f"devices/{self.id}/shadow/"
        self.seq = 0
        self.accepted = self.rejected = 0
        self.deltas: dict[int, int] = {}  # version -> arrival (perf_counter ns)

    def update_packet(self, seq: int) -> bytes:
        return self.packet(self.topic, update_payload(seq))


def update_payload(seq: int) -> bytes:
    return (b'{"state":{"reported":{"seq":%d,"temperature":%.2f,"humidity":%d,"battery":87,"rssi":-65,'
            b'"firmware":"1.4.2","uptime_s":%d,"mode":"eco","config":{"interval_s":30,"threshold":25.5,"unit":"C"},'
            b'"location":{"lat":52.52,"lon":13.405,"site":"plant-3"}}},"client_token":"%d"}'
            % (seq, 20 + (seq % 50) / 10, 40 + seq % 20, seq * 30, seq))


def on_shadow_message(d: Dev, topic: str, payload: bytes, at: int) -> None:
    suffix = topic[len(d.prefix):]
    if suffix == "accepted":
        d.accepted += 1
    elif suffix == "rejected":
        d.rejected += 1
    elif suffix == "delta":
        d.deltas.setdefault(json.loads(payload).get("version"), at)


class ShadowDriver(DeviceFleet):
    """Devices that publish shadow updates and read what the platform sends them (``devices/{id}/shadow/#``
    at QoS 0); no online status (the shadow job does not read it)."""

    def __init__(self, settings: Settings, identities):
        super().__init__(settings, identities, ["devices/{id}/shadow/#"], on_shadow_message, online_status=False,
                         connect_concurrency=20, device_class=Dev)

    def publish_one(self, d: Dev) -> int:
        """One update from ``d`` now (from any thread); returns its seq."""
        d.seq += 1
        seq = d.seq
        self.call_soon(lambda: d.writer.write(d.update_packet(seq)))
        return seq

    def load(self, devs: list[Dev], rate: float, seconds: float) -> int:
        return self.call(self._load(devs, rate, seconds))

    async def _load(self, devs: list[Dev], rate: float, seconds: float) -> int:
        n, sent, rr = len(devs), 0, 0
        pending: dict[int, list[bytes]] = {}  # device index -> its due packets, one write per tick
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * elapsed) - sent
            for _ in range(max(due, 0)):
                k = rr % n
                rr += 1
                d = devs[k]
                d.seq += 1
                pending.setdefault(k, []).append(d.update_packet(d.seq))
            sent += max(due, 0)
            for k, packets in pending.items():
                devs[k].writer.write(b"".join(packets))
            pending.clear()
            await asyncio.sleep(TICK_S)
        return sent


# -- 1. desired -> delta -------------------------------------------------------------------------


def delta_latency(api: httpx.Client, devs: list[Dev], samples: int, rate: float, progress) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        d = devs[i % len(devs)]
        t0 = now_ns()
        try:
            r = api.patch(f"/v1/devices/{d.id}/shadow", json={"desired": {"setpoint": i, "bench_ts": time.time_ns()}})
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}")
            return
        if r.status_code != 200:
            errors.append(f"HTTP {r.status_code} {r.text[:80]}")
            return
        v = r.json()["version"]
        deadline = time.monotonic() + 10
        while v not in d.deltas and time.monotonic() < deadline:
            time.sleep(0.002)
        if v in d.deltas:
            with lock:
                lat.append((d.deltas[v] - t0) / 1e6)
        else:
            errors.append(f"no delta v{v} for {d.id} within 10 s")

    with ThreadPoolExecutor(8) as pool:
        start = time.monotonic()
        futs = []
        for i in range(samples):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            futs.append(pool.submit(one, i))
            if (i + 1) % max(1, samples // 5) == 0:
                progress(f"  desired->delta: {i + 1}/{samples} PATCHes sent")
        for f in futs:
            f.result()
    return {"samples": samples, "received": len(lat), "errors": len(errors), "error_examples": errors[:3],
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None}


# -- 2. report -> visible in the API -------------------------------------------------------------


class Probes:
    def __init__(self, driver: ShadowDriver, devs: list[Dev], api: httpx.Client):
        self.driver, self.devs, self.api = driver, devs, api
        self.version = {}
        for d in devs:
            r = api.get(f"/v1/devices/{d.id}/shadow")
            self.version[d.id] = r.json()["version"] if r.status_code == 200 else 0

    def run(self, seconds: float) -> dict:
        lat: list[float] = []
        missing = 0
        pool = ThreadPoolExecutor(8)

        def check(d: Dev, seq: int, v: int, t0: int) -> None:
            nonlocal missing
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    r = self.api.get(f"/v1/devices/{d.id}/shadow", params={"min_version": v})
                except httpx.HTTPError:
                    time.sleep(0.02)
                    continue
                if r.status_code == 200 and (r.json()["state"]["reported"] or {}).get("seq", 0) >= seq:
                    lat.append((now_ns() - t0) / 1e6)
                    return
                time.sleep(0.01)
            missing += 1

        start, i = time.monotonic(), 0
        futs = []
        while time.monotonic() - start < seconds:
            time.sleep(max(0.0, start + i / PROBE_RATE - time.monotonic()))
            d = self.devs[i % len(self.devs)]
            t0 = now_ns()
            seq = self.driver.publish_one(d)
            self.version[d.id] += 1
            futs.append(pool.submit(check, d, seq, self.version[d.id], t0))
            i += 1
        for f in futs:
            f.result()
        pool.shutdown()
        # Re-read the versions (an update the shadow refused would shift the next expectations).
        for d in self.devs:
            r = self.api.get(f"/v1/devices/{d.id}/shadow")
            if r.status_code == 200:
                self.version[d.id] = r.json()["version"]
        return {"samples": i, "visible": len(lat), "missing": missing, "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None}


def counts(devs: list[Dev]) -> tuple[int, int, int, int]:
    return (sum(d.published for d in devs), sum(d.acked for d in devs), sum(d.accepted for d in devs),
            sum(d.rejected for d in devs))


def report_stage(args, driver: ShadowDriver, load: list[Dev], probes: Probes | None, rate: float, seconds: float,
                 pids: dict) -> dict:
    s0, _, a0, r0 = counts(load)
    cpu0, load_avg0 = cpu_snapshot(pids), os.getloadavg()[0]
    t0 = time.monotonic()
    probe_res: dict = {}
    th = None
    if probes is not None:
        th = threading.Thread(target=lambda: probe_res.update(probes.run(seconds)), daemon=True)
        th.start()
    published = driver.load(load, rate, seconds)
    t_pub = time.monotonic()
    # Drain: until every update of the stage has its verdict (accepted or rejected).
    while time.monotonic() - t_pub < args.drain_seconds:
        s, _, a, r = counts(load)
        if (a - a0) + (r - r0) >= s - s0:
            break
        time.sleep(0.05)
    t_done = time.monotonic()
    cpu1 = cpu_snapshot(pids)
    if th is not None:
        th.join()
    s, k, a, r = counts(load)
    verdicts = (a - a0) + (r - r0)
    span = t_done - t0
    cpu = {c: round((cpu1[c] - cpu0[c]) / max(verdicts, 1) * 1e6) for c in COMPONENTS}
    stage = {"offered": rate, "seconds": seconds, "published": published, "pubacked_total": k,
             "accepted": a - a0, "rejected": r - r0, "missing_verdicts": published - verdicts,
             "verdicts_per_s": round(verdicts / span, 1), "drain_s": round(t_done - t_pub, 2),
             "api": probe_res, "cpu_us_per_update": cpu,
             "machine_cpu_us_per_update": round((cpu1["machine"] - cpu0["machine"]) / max(verdicts, 1) * 1e6),
             "load_avg": round(load_avg0, 2)}
    p99 = probe_res.get("p99_ms")
    # Verdicts per second over publishing + drain: a backlog shows as a long drain, so the rule
    # asks for all verdicts and a drain of at most 2 s past the stage (not 95 % of a short span).
    stage["holds"] = bool(stage["missing_verdicts"] <= 0 and stage["drain_s"] <= 2.0
                          and (probes is None or (p99 is not None and p99 < args.p99_target_ms
                                                  and not probe_res.get("missing"))))
    return stage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="200,500,1000", help="offered shadow updates/s per stage")
    ap.add_argument("--stage-seconds", type=float, default=15.0)
    ap.add_argument("--devices", type=int, default=200, help="devices publishing the load (rate/devices < 10/s)")
    ap.add_argument("--delta-samples", type=int, default=100)
    ap.add_argument("--delta-rate", type=float, default=5.0, help="PATCHes/s of the desired->delta measurement")
    ap.add_argument("--with-telemetry", type=float, default=0.0, help="telemetry msg/s alongside every stage")
    ap.add_argument("--warmup-window-s", type=float, default=5.0)
    ap.add_argument("--warmup-max-s", type=float, default=60.0, help="0: no warm-up")
    ap.add_argument("--drain-seconds", type=float, default=20.0)
    ap.add_argument("--p99-target-ms", type=float, default=500.0)
    ap.add_argument("--baseline-messages", type=int, default=20_000)
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after one did not hold")
    ap.add_argument("--api-url", default=None)
    a = ap.parse_args(argv)
    rates = [float(r) for r in a.rates.split(",")]

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    settings = Settings.from_env()
    bench_dir = settings.var_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ensure_job(settings, "shadow")
    base = baseline.measure(settings, broker=a.baseline_messages > 0, broker_messages=a.baseline_messages)
    api_url = a.api_url or f"http://{settings.api_host}:{settings.api_port}"

    progress("enrolling devices (reused across runs) ...")
    enrollment = RegistryEnrollment.open(settings, device_type="bench", groups=["bench"])
    dev_dir = bench_dir / "shadow-devices"
    n_total = a.devices + DELTA_DEVICES + PROBES
    before = time.monotonic()
    identities = []
    for i in range(n_total):
        identities.append(enrollment.enroll(f"shb-{i:05d}", dev_dir / f"{i:05d}"))
        if (i + 1) % 100 == 0:
            progress(f"  {i + 1}/{n_total}")
    tele_ids = []
    if a.with_telemetry > 0:
        ensure_telemetry_job(settings)
        tele_ids = [enrollment.enroll(f"shb-tel-{i:03d}", dev_dir / f"tel-{i:03d}") for i in range(50)]
    if time.monotonic() - before > 1:
        time.sleep(settings.registry_cache_ttl_s + 1)  # the bridge's registry cache must see new devices

    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    _, key = ApiKeyStore(CassandraSessions(settings).get()).create(f"shadow-bench-{os.getpid()}", Role.operator, None)
    api = httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=15.0,
                       limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
    driver = ShadowDriver(settings, identities)
    tele = AsyncDriver(settings, tele_ids) if tele_ids else None
    pids = component_pids(settings)
    result: dict = {"at": dt.datetime.now(dt.UTC).isoformat(), "cores": os.cpu_count(), "args": vars(a),
                    "baseline": base, "stages": []}
    try:
        progress(f"connecting {len(identities)} devices ...")
        driver.start(timeout=120)
        if tele:
            tele.start()
        load = driver.devices[:a.devices]
        delta_devs = driver.devices[a.devices:a.devices + DELTA_DEVICES]
        probe_devs = driver.devices[a.devices + DELTA_DEVICES:]
        probes = Probes(driver, probe_devs, api)

        if a.warmup_max_s > 0:
            progress(f"warm-up at {rates[0]:,.0f} updates/s in {a.warmup_window_s:.0f} s windows "
                     f"(<= {a.warmup_max_s:.0f} s):")

            def window() -> float:
                return report_stage(a, driver, load, None, rates[0], a.warmup_window_s, pids)["verdicts_per_s"]

            warm = baseline.warm_up(window, max_seconds=a.warmup_max_s, label="verdicts/s")
            # The delta path (API -> Kafka -> job -> bridge) warms with a few unreported PATCHes.
            delta_latency(api, delta_devs, 10, a.delta_rate, lambda _m: None)
            result["warmup"] = warm
        progress(f"1. desired PATCH -> delta at the device: {a.delta_samples} samples at {a.delta_rate:g}/s ...")
        result["desired_to_delta"] = delta_latency(api, delta_devs, a.delta_samples, a.delta_rate, progress)
        progress(f"   {json.dumps(result['desired_to_delta'])}")

        for rate in rates:
            progress(f"2. report -> API at {rate:,.0f} updates/s for {a.stage_seconds:.0f} s"
                     + (f" with {a.with_telemetry:,.0f} telemetry msg/s" if tele else "") + " ...")
            tele_th = None
            if tele:
                tele_th = threading.Thread(target=tele.run, args=(a.with_telemetry, a.stage_seconds), daemon=True)
                tele_th.start()
            stage = report_stage(a, driver, load, probes, rate, a.stage_seconds, pids)
            if tele_th:
                tele_th.join()
            stage["with_telemetry"] = a.with_telemetry
            cal = base["cpu"]["us_per_op_best"]
            stage["ratios"] = {
                "verdicts_per_s_vs_raw_broker": baseline.ratio(stage["verdicts_per_s"], (base.get("broker") or {}).get("rate")),
                "flink_tm_us_per_update_vs_calibration": baseline.ratio(stage["cpu_us_per_update"]["flink-tm"], cal),
                "machine_us_per_update_vs_calibration": baseline.ratio(stage["machine_cpu_us_per_update"], cal),
                "api_p50_vs_raw_broker_p50": baseline.ratio(stage["api"].get("p50_ms"),
                                                            (base.get("broker") or {}).get("p50_ms"))}
            result["stages"].append(stage)
            progress(f"   {json.dumps(stage)}")
            if not stage["holds"] and not a.keep_going:
                break
    finally:
        driver.stop()
        if tele:
            tele.stop()
        api.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    print_report(result)
    results.save(result, bench_dir, "shadow")
    return 0


def print_report(res: dict, out=sys.stdout) -> None:
    base = res["baseline"]
    broker, cal = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    dd = res.get("desired_to_delta")
    if dd:
        out.write(f"desired PATCH -> delta at the device: {dd['received']}/{dd['samples']} samples, p50 "
                  f"{fmt(dd['p50_ms'], '.0f')} ms, p99 {fmt(dd['p99_ms'], '.0f')} ms, max {fmt(dd['max_ms'], '.0f')} ms "
                  f"(target p99 < 300 ms); p50 {baseline.with_ratio(dd['p50_ms'], broker.get('p50_ms'), unit=' ms')}\n")
    out.write("report -> visible in the API:\n")
    out.write(" offered/s  published  accepted  rejected  missing  verdicts/s  drain s  api p50  api p99  miss |"
              "  us/update: flinkTM bridge  api kafka cass mosq bench machine  holds\n")
    for s in res["stages"]:
        c, p = s["cpu_us_per_update"], s["api"]
        out.write(f" {s['offered']:>9,.0f} {s['published']:>10,} {s['accepted']:>9,} {s['rejected']:>9,} "
                  f"{s['missing_verdicts']:>8,} {s['verdicts_per_s']:>11,.0f} {s['drain_s']:>8.1f} "
                  f"{fmt(p.get('p50_ms')):>8} {fmt(p.get('p99_ms')):>8} {p.get('missing', '-'):>5} |"
                  f"  {c['flink-tm']:>15,} {c['bridge']:>6,} {c['api']:>4,} {c['kafka']:>5,} {c['cassandra']:>4,} "
                  f"{c['mosquitto']:>4,} {c['bench']:>5,} {s['machine_cpu_us_per_update']:>7,}  "
                  f"{'yes' if s['holds'] else 'NO'}\n")
    out.write("As ratios to the same-run baseline:\n")
    for s in res["stages"]:
        out.write(f"  {s['offered']:,.0f}/s: {baseline.with_ratio(s['verdicts_per_s'], broker.get('rate'), unit=' verdicts/s')}"
                  f"; Flink TM {baseline.with_ratio(s['cpu_us_per_update']['flink-tm'], cal, unit=' us/update')}"
                  f"; machine {baseline.with_ratio(s['machine_cpu_us_per_update'], cal, unit=' us/update')}"
                  f"; API p50 {baseline.with_ratio(s['api'].get('p50_ms'), broker.get('p50_ms'), unit=' ms')}\n")
    held = [s["offered"] for s in res["stages"] if s["holds"]]
    out.write(f"highest rate that held (every verdict, drain <= 2 s, API p99 < target): "
              f"{fmt(max(held)) if held else 'none'} updates/s\n")
    if res.get("warmup"):
        out.write(results.warmup_line(res["warmup"]))


if __name__ == "__main__":
    sys.exit(main())
