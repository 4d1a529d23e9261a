"""End-to-end benchmark: MQTT publish -> Mosquitto -> bridge -> Kafka -> telemetry job -> Cassandra + lake -> API.

    .venv/bin/python bench/e2e_bench.py [--rates 1000,3000,5000] [--stage-seconds 20] [--devices 50]

Runs against the RUNNING stack (its own bridge, the default topic prefix, the running
"telemetry" Flink job, submitted if none runs). Per stage, a simulated fleet of registered
devices (unique ids e2e-<run>-NNNNN) publishes at the offered rate (QoS 1 over mTLS, each
device its own connection and certificate) from one asyncio process (bench/mqtt_driver.py;
``--driver c``: one ``mosquitto_pub -l`` per device, which costs the machine about twice the
CPU), then the bench waits (``--drain-seconds``)
until every published (device, seq) is in Cassandra (fleet.telemetry) and in committed lake
files (var/lake/telemetry/date=*/hour=*/*.parquet, read with pyarrow), and reports:

* offered / published / achieved msg/s (achieved = rows / (last - first Cassandra write), from
  WRITETIME, so it is what the pipeline delivered, not what the driver offered); a stage is
  "sustained" with zero loss in both sinks, achieved >= 95% of the published rate and both sinks
  complete within ``--max-catchup-s`` of the end of publishing (no growing backlog);
* zero loss (per device, exact seq sets) in Cassandra and in the lake, and how long after the
  end of publishing each sink was complete;
* p50/p99 publish -> queryable-through-the-API latency: a probe device publishes 2 points/s
  with ts = now and a poller calls GET /v1/devices/{id}/telemetry (HTTP, viewer API key) every
  ``--poll-ms`` until each point is visible (visible time - ts);
* CPU us per message of the bridge, the Flink TaskManager, Cassandra, Kafka and Mosquitto
  (/proc/<pid>/stat utime+stime from the stage's start until both sinks are complete, so the
  bench's own polling of Cassandra and anything else running on the machine is included), the
  API's, this process's (the load driver and the checks) and the whole machine's (/proc/stat);
* lake write rate: rows and files committed during the stage window.

Before any load it measures the same-run baseline (bench/baseline.py: a CPU calibration and raw
Mosquitto QoS 1 pub->sub over mTLS) and prints the key figures also as ratios to it: achieved
msg/s / raw broker msg/s, CPU us/msg / calibration us/op. Then a warm-up at the first rate in
short windows (``--warmup-window-s``; each window's figure = its points / (time from its start
until Cassandra held all of them)) until three consecutive windows agree within 10 % (capped at
``--warmup-max-s``), printing each window and how long it took.

Prints a table; appends one JSON line per stage (with the baseline, the ratios and the warm-up)
to var/bench/e2e.jsonl. Figures, method and a run on the 2-core box: bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import baseline  # noqa: E402 - after the sys.path set-up above
import httpx  # noqa: E402 - after the sys.path set-up above
import pyarrow.parquet as pq  # noqa: E402 - after the sys.path set-up above
from baseline import broker_pid, cpu_seconds, percentile  # noqa: E402 - after the sys.path set-up above
from bridge_bench import CDriver  # noqa: E402 - after the sys.path set-up above
from mqtt_driver import AsyncDriver  # noqa: E402 - after the sys.path set-up above

from devtools.enrollment import RegistryEnrollment  # noqa: E402 - after the sys.path set-up above
from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above

COMPONENTS = ("bridge", "flink-tm", "cassandra", "kafka", "mosquitto", "api")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle or iowait) since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- stack ----------------------------------------------------------------------------------


def component_pids(settings: Settings) -> dict[str, int | None]:
    def from_file(name: str) -> int | None:
        try:
            return int((settings.run_dir / name).read_text().strip())
        except (OSError, ValueError):
            return None

    return {"bridge": from_file("bridge.pid"), "flink-tm": from_file("flink-taskmanager.pid"),
            "cassandra": from_file("cassandra.pid"), "kafka": from_file("kafka.pid"),
            "mosquitto": broker_pid(settings), "api": from_file("api.pid"), "bench": os.getpid()}


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["machine"] = machine_busy_seconds()
    return snap


def ensure_job(settings: Settings, name: str) -> str:
    """The id of the RUNNING Flink job ``name`` (jobs/<name>/job.py), submitting it if none runs."""
    from devtools.stack import flink

    for job in flink.list_jobs(settings):
        if job["name"] == name and job["state"] == "RUNNING":
            return job["id"]
    print(f"no RUNNING '{name}' job: submitting jobs/{name}/job.py ...", file=sys.stderr)
    job_id = flink.submit_job(settings, PROJECT_ROOT / "jobs" / name / "job.py")
    flink.wait_for_job_state(settings, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    return job_id


def ensure_telemetry_job(settings: Settings) -> str:
    return ensure_job(settings, "telemetry")


def job_running_for_s(settings: Settings, job_id: str) -> float | None:
    """Seconds since the job's start-time in Flink's REST API (how warm its TaskManager code may be)."""
    from devtools.stack import flink

    try:
        start = flink.job_details(settings, job_id).get("start-time")
    except Exception:  # noqa: BLE001
        return None
    return (now_ms() - start) / 1000 if start and start > 0 else None


def telemetry_job_running(settings: Settings) -> bool:
    from devtools.stack import flink

    try:
        return any(j["name"] == "telemetry" and j["state"] == "RUNNING" for j in flink.list_jobs(settings))
    except Exception:  # noqa: BLE001
        return False


# -- sinks ----------------------------------------------------------------------------------


class CassandraCheck:
    """Per-device rows of a stage (ts >= stage start) in fleet.telemetry."""

    def __init__(self, settings: Settings):
        from fleet.infra.cassandra import open_session

        self.session = open_session(settings, settings.cassandra_keyspace)
        self.count_q = self.session.prepare(
            "SELECT count(*) FROM telemetry WHERE device_id = ? AND day = ? AND ts >= ? AND ts < ?")
        self.rows_q = self.session.prepare(
            "SELECT seq, writetime(ingest_ts) AS wt FROM telemetry WHERE device_id = ? AND day = ? "
            "AND ts >= ? AND ts < ?")

    @staticmethod
    def days(t0: int, t1: int) -> list[dt.date]:
        d0 = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC).date()
        d1 = dt.datetime.fromtimestamp(t1 / 1000, dt.UTC).date()
        return [d0 + dt.timedelta(days=i) for i in range((d1 - d0).days + 1)]

    def counts(self, devices: list[str], t0: int, t1: int) -> dict[str, int]:
        futures = [(dev, self.session.execute_async(self.count_q, (dev, day, t0, t1)))
                   for dev in devices for day in self.days(t0, t1)]
        out: dict[str, int] = {dev: 0 for dev in devices}
        for dev, fut in futures:
            out[dev] += fut.result().one()[0]
        return out

    def seqs(self, devices: list[str], t0: int, t1: int) -> tuple[dict[str, set[int]], int | None, int | None]:
        """Exact seq sets per device and the first and last write times (epoch ms) of those rows."""
        out: dict[str, set[int]] = {dev: set() for dev in devices}
        first_write = last_write = None
        for dev in devices:
            for day in self.days(t0, t1):
                for row in self.session.execute(self.rows_q, (dev, day, t0, t1)):
                    out[dev].add(row.seq)
                    if row.wt is not None:
                        w = row.wt // 1000
                        last_write = max(last_write or 0, w)
                        first_write = w if first_write is None else min(first_write, w)
        return out, first_write, last_write

    def close(self) -> None:
        self.session.cluster.shutdown()


class LakeCheck:
    """Committed lake files (no leading '.'): bench rows per device, read each file once."""

    def __init__(self, settings: Settings, devices: set[str]):
        self.base = settings.lake_path / "telemetry"
        self.devices = devices
        self.files: dict[Path, dict] = {}  # path -> {rows, mtime, seqs: {dev: set}}
        self.known_at_start: set[Path] = set(self._list())

    def _list(self) -> list[Path]:
        return [p for p in self.base.glob("date=*/hour=*/*.parquet") if not p.name.startswith(".")]

    def refresh(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for path in self._list():
            if path in self.files or path in self.known_at_start:
                continue
            try:
                table = pq.read_table(path, columns=["device_id", "seq"])
                mtime = path.stat().st_mtime
            except (OSError, pa.ArrowInvalid):
                continue  # being renamed or half visible: next round
            mask = pc.is_in(table["device_id"], value_set=pa.array(sorted(self.devices)))
            sub = table.filter(mask)
            seqs: dict[str, set[int]] = {}
            for dev, seq in zip(sub["device_id"].to_pylist(), sub["seq"].to_pylist(), strict=True):
                seqs.setdefault(dev, set()).add(seq)
            self.files[path] = {"rows": table.num_rows, "mtime": mtime, "seqs": seqs}

    def seqs_for(self, dev: str) -> set[int]:
        out: set[int] = set()
        for info in self.files.values():
            out |= info["seqs"].get(dev, set())
        return out

    def written_between(self, t0: float, t1: float) -> tuple[int, int]:
        """(files, rows) committed in [t0, t1] (mtime, seconds)."""
        files = [i for i in self.files.values() if t0 <= i["mtime"] <= t1]
        return len(files), sum(i["rows"] for i in files)


# -- latency probe --------------------------------------------------------------------------


class Probe:
    """One device publishing 2 points/s (ts = now) and an API poller timing their visibility."""

    def __init__(self, settings: Settings, identity, api_url: str, api_key: str, poll_ms: float):
        self.driver = CDriver(settings, [identity])
        self.device_id = identity.device_id
        self.client = httpx.Client(base_url=api_url, headers={"X-API-Key": api_key}, timeout=10.0)
        self.poll_s = poll_ms / 1000
        self.visible: dict[int, int] = {}  # seq -> latency ms
        self.errors = 0

    def start(self) -> None:
        self.driver.start()

    def publish(self, seconds: float, rate: float = 2.0) -> dict[str, list[int]]:
        return self.driver.run(rate, seconds)

    def poll_until(self, since_ms: int, seqs: set[int], deadline: float, stop: threading.Event) -> None:
        """Poll until every seq in ``seqs`` (grows while publishing) is visible, ``stop`` and done, or deadline."""
        while time.monotonic() < deadline:
            if stop.is_set() and seqs <= set(self.visible):
                return
            try:
                r = self.client.get(f"/v1/devices/{self.device_id}/telemetry",
                                    params={"from": since_ms, "limit": 500})
                seen_at = now_ms()
                if r.status_code == 200:
                    for p in r.json()["items"]:
                        if p["seq"] not in self.visible:
                            self.visible[p["seq"]] = seen_at - p["ts"]
                else:
                    self.errors += 1
            except httpx.HTTPError:
                self.errors += 1
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self.driver.stop()
        self.client.close()


# -- warm-up and ratios ---------------------------------------------------------------------


def warmup_window(args, rate: float, driver, cass: CassandraCheck, devices: list[str]) -> float | None:
    """Publish one window at ``rate``; its points / (time until Cassandra held them all), or None."""
    t0_ms, t0 = now_ms(), time.monotonic()  # every point of this window has ts >= t0_ms
    ranges = driver.run(rate, args.warmup_window_s)
    t1_ms = now_ms()
    expected = {dev: nxt - first for dev, (first, nxt) in ranges.items()}
    deadline = time.monotonic() + args.drain_seconds
    while time.monotonic() < deadline:
        counts = cass.counts(devices, t0_ms, t1_ms + 1)
        if all(counts[d] >= expected[d] for d in devices):
            return sum(expected.values()) / (time.monotonic() - t0)
        time.sleep(0.5)
    return None


def stage_ratios(stage: dict, base: dict) -> dict:
    """The stage's key figures divided by the same-run baseline's."""
    broker, cpu = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    return {"achieved_vs_raw_broker": baseline.ratio(stage["achieved"], broker.get("rate")),
            "platform_us_per_msg_vs_calibration": baseline.ratio(stage["cpu_us_per_msg_total"], cpu),
            "bridge_us_per_msg_vs_calibration": baseline.ratio(stage["cpu_us_per_msg"]["bridge"], cpu),
            "machine_us_per_msg_vs_calibration": baseline.ratio(stage["machine_cpu_us_per_msg"], cpu),
            "p50_vs_raw_broker_p50": baseline.ratio(stage["p50_ms"], broker.get("p50_ms"))}


def print_ratios(stages: list[dict], base: dict, warm: dict | None, out=sys.stdout) -> None:
    broker, cpu = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    out.write("As ratios to the same-run baseline (raw broker msg/s and p50; CPU calibration us/op):\n")
    for s in stages:
        out.write(f"  {s['offered']:>7,.0f}/s: achieved {baseline.with_ratio(s['achieved'], broker.get('rate'), unit=' msg/s')}"
                  f"; platform {baseline.with_ratio(s['cpu_us_per_msg_total'], cpu, unit=' us/msg')}"
                  f"; bridge {baseline.with_ratio(s['cpu_us_per_msg']['bridge'], cpu, unit=' us/msg')}"
                  f"; machine {baseline.with_ratio(s['machine_cpu_us_per_msg'], cpu, unit=' us/msg')}"
                  f"; p50 {baseline.with_ratio(s['p50_ms'], broker.get('p50_ms'), unit=' ms')}\n")
    if warm:
        out.write(f"Warm-up: {'stable' if warm['stable'] else 'NOT stable'} after {warm['seconds']:.0f} s of load "
                  f"({len(warm['windows'])} windows of {warm['window_s']:.0f} s, {warm['span']} consecutive within "
                  f"{warm['tolerance']:.0%}); {warm['since_process_start_s']:.0f} s after this bench process started"
                  + (f"; the telemetry job had been running {warm['job_running_for_s_when_stable']:,.0f} s "
                     f"(Flink REST start-time)" if warm.get("job_running_for_s_when_stable") is not None else "")
                  + "\n")


# -- the run --------------------------------------------------------------------------------


def run_stage(args, settings, rate, driver, probe, cass, lake, devices) -> dict:
    pids = component_pids(settings)
    load_start = os.getloadavg()[0]
    job_ok = telemetry_job_running(settings)
    cpu0 = cpu_snapshot(pids)
    t_start_ms = now_ms()
    t_start = time.time()

    # The probe publishes and the poller polls while the fleet publishes.
    probe_ranges: dict[str, list[int]] = {}
    probe_seqs: set[int] = set()
    stop = threading.Event()
    drain_deadline = time.monotonic() + args.stage_seconds + args.drain_seconds

    def probe_pub() -> None:
        probe_ranges.update(probe.publish(args.stage_seconds))
        first, nxt = probe_ranges[probe.device_id]
        probe_seqs.update(range(first, nxt))
        stop.set()

    pub_thread = threading.Thread(target=probe_pub, daemon=True)
    poll_thread = threading.Thread(target=probe.poll_until, args=(t_start_ms, probe_seqs, drain_deadline, stop),
                                   daemon=True)
    pub_thread.start()
    poll_thread.start()
    ranges = driver.run(rate, args.stage_seconds)
    t_pub_end = time.monotonic()
    t_pub_end_ms = now_ms()
    pub_thread.join()
    expected = {dev: nxt - first for dev, (first, nxt) in ranges.items()}
    published = sum(expected.values())
    window = (t_start_ms - 1000, t_pub_end_ms + 60_000)  # ts range of this stage's points

    # Wait until both sinks hold every point (counts first, cheap), or the drain deadline.
    # A check of a long stage reads millions of rows and takes seconds itself: the time of the
    # successful check's *start* is kept too (the sink was complete somewhere in between).
    cass_done_at = lake_done_at = None
    cass_check_s = lake_check_s = 0.0
    cass_counts: dict[str, int] = {}
    while time.monotonic() < drain_deadline:
        if cass_done_at is None:
            t0 = time.monotonic()
            cass_counts = cass.counts(devices, *window)
            if all(cass_counts[d] >= expected[d] for d in devices):
                cass_done_at, cass_check_s = time.monotonic() - t_pub_end, time.monotonic() - t0
        if lake_done_at is None:
            t0 = time.monotonic()
            lake.refresh()
            if all(len({s for s in lake.seqs_for(d) if ranges[d][0] <= s < ranges[d][1]}) >= expected[d]
                   for d in devices):
                lake_done_at, lake_check_s = time.monotonic() - t_pub_end, time.monotonic() - t0
        if cass_done_at is not None and lake_done_at is not None:
            break
        time.sleep(args.check_interval)
    cpu1 = cpu_snapshot(pids)
    t_end = time.time()
    poll_thread.join(timeout=max(0.0, drain_deadline - time.monotonic()) + 5)

    # Exact verification: every (device, seq) published, per sink.
    cass_seqs, first_write_ms, last_write_ms = cass.seqs(devices, *window)
    lake.refresh()
    cass_missing = lake_missing = 0
    for dev in devices:
        want = set(range(*ranges[dev]))
        cass_missing += len(want - cass_seqs[dev])
        lake_missing += len(want - lake.seqs_for(dev))
    in_cass = published - cass_missing
    in_lake = published - lake_missing
    achieved = None  # the rate Cassandra received this stage's rows at: first to last write
    if first_write_ms and last_write_ms and last_write_ms > first_write_ms:
        achieved = in_cass / ((last_write_ms - first_write_ms) / 1000)
    lat = sorted(probe.visible[s] for s in probe_seqs if s in probe.visible)
    msgs = max(1, in_cass)
    cpu_us = {name: (cpu1[name] - cpu0[name]) / msgs * 1e6 for name in COMPONENTS}
    machine_us = (cpu1["machine"] - cpu0["machine"]) / msgs * 1e6
    bench_us = (cpu1["bench"] - cpu0["bench"]) / msgs * 1e6  # the load driver and these checks
    lake_files, lake_rows = lake.written_between(t_start, t_end)
    stage = {
        "offered": rate, "seconds": args.stage_seconds, "devices": len(devices),
        "published": published, "published_rate": published / args.stage_seconds,
        "in_cassandra": in_cass, "cassandra_missing": cass_missing,
        "in_lake": in_lake, "lake_missing": lake_missing,
        "achieved": achieved,
        "cassandra_complete_after_s": cass_done_at, "lake_complete_after_s": lake_done_at,
        "cassandra_check_s": cass_check_s, "lake_check_s": lake_check_s,
        "probe_points": len(probe_seqs), "probe_visible": len(lat), "probe_errors": probe.errors,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else None,
        "cpu_us_per_msg": cpu_us, "cpu_us_per_msg_total": sum(cpu_us.values()),
        "machine_cpu_us_per_msg": machine_us, "bench_cpu_us_per_msg": bench_us,
        "other_cpu_us_per_msg": machine_us - sum(cpu_us.values()) - bench_us, "driver": args.driver,
        "cpu_window_s": t_end - t_start, "pids": pids,
        "lake_files": lake_files, "lake_rows": lake_rows,
        "lake_rows_per_s": lake_rows / (t_end - t_start) if t_end > t_start else 0.0,
        "telemetry_job_running": job_ok and telemetry_job_running(settings),
        "load_avg_1m_start": load_start, "load_avg_1m_end": os.getloadavg()[0],
    }
    stage["sustained"] = bool(
        cass_missing == 0 and lake_missing == 0 and published >= 0.95 * rate * args.stage_seconds
        and achieved is not None and achieved >= 0.95 * published / args.stage_seconds
        and cass_done_at is not None and cass_done_at - cass_check_s <= args.max_catchup_s
        and lake_done_at is not None and lake_done_at - lake_check_s <= args.max_catchup_s)
    return stage


def fmt(v, spec: str = ",.0f", width: int = 8) -> str:
    return f"{v:>{width}{spec}}" if v is not None else f"{'-':>{width}}"


def print_table(run_id: str, stages: list[dict], args, out=sys.stdout) -> None:
    out.write(f"\nEnd-to-end benchmark {run_id}: {args.devices} devices ({args.driver} driver) + 1 probe device at 2/s, "
              f"{args.stage_seconds:.0f} s stages, drain <= {args.drain_seconds:.0f} s, {os.cpu_count()} cores\n")
    hdr = (f"{'offered/s':>9} {'pub/s':>7} {'achvd/s':>8} {'cass miss':>9} {'lake miss':>9} {'cass+s':>6} "
           f"{'lake+s':>6} {'p50 ms':>7} {'p99 ms':>7} | {'bridge':>6} {'flinkTM':>7} {'cass':>6} {'kafka':>6} "
           f"{'mosq':>6} {'api':>5} {'total':>6} | {'bench':>5} {'other':>5} {'machine':>7} us/msg | "
           f"{'lake rows/s':>11} {'files':>5}  sustained")
    out.write(hdr + "\n" + "-" * len(hdr) + "\n")
    for s in stages:
        c = s["cpu_us_per_msg"]
        out.write(
            f"{s['offered']:>9,.0f} {s['published_rate']:>7,.0f} {fmt(s['achieved'])} {s['cassandra_missing']:>9,} "
            f"{s['lake_missing']:>9,} {fmt(s['cassandra_complete_after_s'], '.0f', 6)} "
            f"{fmt(s['lake_complete_after_s'], '.0f', 6)} {fmt(s['p50_ms'], ',.0f', 7)} {fmt(s['p99_ms'], ',.0f', 7)} | "
            f"{c['bridge']:>6.0f} {c['flink-tm']:>7.0f} {c['cassandra']:>6.0f} {c['kafka']:>6.0f} "
            f"{c['mosquitto']:>6.0f} {c['api']:>5.0f} {s['cpu_us_per_msg_total']:>6.0f} | "
            f"{s['bench_cpu_us_per_msg']:>5.0f} {s['other_cpu_us_per_msg']:>5.0f} {s['machine_cpu_us_per_msg']:>7.0f}        | "
            f"{s['lake_rows_per_s']:>11,.0f} "
            f"{s['lake_files']:>5}  {'yes' if s['sustained'] else 'NO'}  load {s['load_avg_1m_start']:.1f}"
            + ("" if s["telemetry_job_running"] else "  (telemetry job not RUNNING throughout)") + "\n")
    best = max((s["achieved"] for s in stages if s["sustained"]), default=0.0)
    out.write(f"\nachvd/s: this stage's rows / (last - first Cassandra write time). "
              f"cass+s / lake+s: seconds after publishing ended until the sink held every point "
              f"(sustained: zero loss, achvd >= 95% of pub/s, both <= {args.max_catchup_s:.0f} s, counted to the "
              f"start of the check that found them complete, which for a long stage takes seconds itself). "
              f"load: 1-min load average at stage start. "
              f"CPU: from stage start until both sinks were complete (includes the bench's own checks and "
              f"anything else on the machine), per message in Cassandra; total = the platform's processes, "
              f"bench = this process (load driver and checks), machine = all cores' busy time.\n"
              f"Max sustained end to end with zero loss: {best:,.0f} msg/s\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,3000,5000", help="offered msg/s per stage")
    ap.add_argument("--stage-seconds", type=float, default=20.0)
    ap.add_argument("--warmup-window-s", type=float, default=5.0, help="length of one warm-up window")
    ap.add_argument("--warmup-rate", type=float, default=None,
                    help="offered msg/s of the warm-up windows (default: the first rate; one above capacity "
                         "shows a slow cold start as low windows, one below it only if the path cannot keep up)")
    ap.add_argument("--warmup-max-s", type=float, default=120.0,
                    help="warm up at the first rate until three consecutive windows agree within 10%%, at most this "
                         "long (0: no warm-up)")
    ap.add_argument("--baseline-messages", type=int, default=20_000, help="raw broker baseline size (0: CPU only)")
    ap.add_argument("--drain-seconds", type=float, default=90.0, help="max wait after a stage for stragglers")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--driver", choices=("async", "c"), default="async",
                    help="load generator: one asyncio process (bench/mqtt_driver.py) or mosquitto_pub per device")
    ap.add_argument("--max-catchup-s", type=float, default=10.0,
                    help="a stage is 'sustained' only if both sinks were complete this soon after publishing ended "
                         "(no backlog; the lake commits on 5 s checkpoints)")
    ap.add_argument("--poll-ms", type=float, default=100.0, help="API poll interval of the latency probe")
    ap.add_argument("--check-interval", type=float, default=2.0, help="sink completeness check interval, s")
    ap.add_argument("--api-url", default=None, help="default: http://<api_host>:<api_port> of the stack")
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after one was not sustained")
    ap.add_argument("--jsonl", type=Path, default=None, help="default: var/bench/e2e.jsonl")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    warmup_rate = args.warmup_rate or rates[0]

    settings = Settings.from_env()
    if not shutil.which("mosquitto_pub"):
        raise SystemExit("mosquitto_pub not found: apt-get install -y mosquitto-clients")
    run_id = uuid.uuid4().hex[:6]
    bench_dir = settings.var_dir / "bench"
    jsonl = args.jsonl or bench_dir / "e2e.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    api_url = args.api_url or f"http://{settings.api_host}:{settings.api_port}"

    # Same run, same machine state, before anything of the bench loads the machine.
    base = baseline.measure(settings, broker=args.baseline_messages > 0, broker_messages=args.baseline_messages)
    job_id = ensure_telemetry_job(settings)
    print(f"run {run_id}: telemetry job {job_id}, pids {component_pids(settings)}", file=sys.stderr)

    # Registered like real devices (the bridge dead-letters unregistered ones).
    enrollment = RegistryEnrollment.open(settings, device_type="bench", groups=["bench"])
    dev_dir = bench_dir / "e2e-devices" / run_id
    identities = [enrollment.enroll(f"e2e-{run_id}-{i:05d}", dev_dir / f"{i:05d}") for i in range(args.devices)]
    probe_identity = enrollment.enroll(f"e2e-{run_id}-probe", dev_dir / "probe")
    devices = [i.device_id for i in identities]

    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role

    cass = CassandraCheck(settings)
    _, api_key = ApiKeyStore(cass.session).create(f"e2e-bench-{run_id}", Role.viewer, None)
    lake = LakeCheck(settings, set(devices))
    driver = AsyncDriver(settings, identities) if args.driver == "async" else CDriver(settings, identities)
    probe = Probe(settings, probe_identity, api_url, api_key, args.poll_ms)
    time.sleep(settings.registry_cache_ttl_s + 1)  # let the bridge's registry cache see the new devices
    stages: list[dict] = []
    warm = None
    try:
        driver.start()
        probe.start()
        if args.warmup_max_s > 0:
            # A freshly started TaskManager or Cassandra runs interpreted for a while (JIT), and
            # this process's first connections and queries are slow: warm the whole path at the
            # first rate, unreported as a stage, until consecutive windows agree.
            print(f"warm-up at {warmup_rate:,.0f} msg/s in {args.warmup_window_s:.0f} s windows "
                  f"(<= {args.warmup_max_s:.0f} s):", file=sys.stderr)
            warm = baseline.warm_up(lambda: warmup_window(args, warmup_rate, driver, cass, devices),
                                    max_seconds=args.warmup_max_s, label="msg/s into Cassandra")
            warm["window_s"], warm["rate"] = args.warmup_window_s, warmup_rate
            warm["job_running_for_s_when_stable"] = job_running_for_s(settings, job_id)
        for rate in rates:
            print(f"stage {rate:,.0f} msg/s ...", file=sys.stderr)
            stage = run_stage(args, settings, rate, driver, probe, cass, lake, devices)
            stage.update(run=run_id, at=dt.datetime.now(dt.UTC).isoformat(), cores=os.cpu_count(),
                         ratios=stage_ratios(stage, base), baseline=base, warmup=warm)
            stages.append(stage)
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(stage, default=str) + "\n")
            print(f"  {json.dumps(stage, default=str)}", file=sys.stderr)
            if not stage["sustained"] and not args.keep_going:
                break
    finally:
        driver.stop()
        probe.stop()
        cass.close()
    print_table(run_id, stages, args)
    print_ratios(stages, base, warm)
    print(f"results appended to {jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
