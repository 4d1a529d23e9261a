"""Same-run baselines for the benchmarks, so their figures compare across machines by ratio.

Machines of one kind differ (the same bench ran 3x slower on another 2-core box), so every bench
measures, at the start of its own run and in the same machine state:

* a CPU calibration: a fixed pure-Python workload shaped like per-message work (stdlib json
  dumps + loads of a telemetry envelope, then dict work on its metrics), timed ``repeats`` times;
  us per op (best and median) and a single-core speed (calibration ops/s at the best time);
* a raw broker baseline: MQTT QoS 1 publish -> subscribe through the running Mosquitto over mTLS
  (the services listener, C clients mosquitto_pub / mosquitto_sub, nothing else in the path):
  throughput (msg/s, with the broker's CPU per message) and the latency of paced messages;

and prints its own figures also as ratios to these (``with_ratio``). ``warm_up`` runs short
windows until three consecutive ones agree within a tolerance, printing each, so every bench says
how long a cold stack (or a freshly started bench process) needs before its figures are stable.

    .venv/bin/python bench/baseline.py            # the baseline alone (a few seconds)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCESS_START = time.monotonic()  # warm-up is reported from the bench process's start too

# -- ratios ---------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or the base is zero."""
    if value is None or not base:
        return None
    return value / base


def with_ratio(value: float | None, base: float | None, spec: str = ",.0f", unit: str = "") -> str:
    """A figure and its ratio to the baseline: '2,754 msg/s (0.21 × baseline)'."""
    if value is None:
        return "-"
    r = ratio(value, base)
    return f"{value:{spec}}{unit} " + (f"({r:.2f} × baseline)" if r is not None else "(no baseline)")


# -- CPU calibration ------------------------------------------------------------------------

ENVELOPE = {
    "device_id": "calib-00042", "type": "telemetry", "ts": 1_767_225_600_000, "ingest_ts": 1_767_225_600_040,
    "mqtt_topic": "devices/calib-00042/telemetry",
    "payload": {"ts": 1_767_225_600_000, "seq": 4711,
                "metrics": {"temperature": 21.37, "humidity": 44.1, "battery": 3.9, "rssi": -65, "cpu": 0.42},
                "attrs": {"fw": "1.4.2", "site": "north"}},
}


def calibration_op(envelope: dict = ENVELOPE) -> int:
    """One message's worth of pure-Python work: serialise, parse, check and reshape the metrics."""
    raw = json.dumps(envelope)
    env = json.loads(raw)
    payload = env["payload"]
    metrics = {k: float(v) for k, v in payload["metrics"].items() if isinstance(v, (int, float))}
    row = {"device_id": env["device_id"], "ts": payload["ts"], "seq": payload["seq"],
           "metrics": metrics, "keys": sorted(metrics)}
    return len(raw) + len(row["keys"])


def cpu_calibration(repeats: int = 7, ops: int = 2000) -> dict:
    """Time ``ops`` calibration ops ``repeats`` times: us/op best and median, ops/s on one core."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(ops):
            calibration_op()
        times.append((time.perf_counter() - t0) / ops * 1e6)
    best = min(times)
    return {"us_per_op_best": best, "us_per_op_median": statistics.median(times),
            "ops_per_s_single_core": 1e6 / best, "repeats": repeats, "ops": ops,
            "python": sys.version.split()[0]}


# -- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    if not pid:
        return 0.0
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def broker_pid(settings) -> int | None:
    """Mosquitto's pid: the process listening on the device port (else the stack's pid file)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{settings.mqtt_device_port}"], capture_output=True,
                         text=True).stdout
    if "pid=" in out:
        return int(out.split("pid=")[1].split(",")[0])
    pid_file = settings.run_dir / "mosquitto.pid"
    return int(pid_file.read_text().strip()) if pid_file.exists() else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))])


# -- raw broker -----------------------------------------------------------------------------

# Telemetry-sized lines (~120 bytes), so the broker moves what the bridge would receive.
_PAD = b'{"metrics":{"temperature":21.37,"humidity":44.1,"battery":3.9,"rssi":-65},"attrs":{"fw":"1.4.2"}}'


class _Subscriber:
    """mosquitto_sub on the services listener; counts throughput lines, times latency lines."""

    def __init__(self, settings, topic: str, client_args: list[str], client_id: str):
        self.proc = subprocess.Popen(
            ["mosquitto_sub", *client_args, "-i", client_id, "-t", f"{topic}/#", "-q", "1", "-V", "mqttv5",
             "-F", "%p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.ready = threading.Event()
        self.latency_publisher_up = threading.Event()
        self.counted = 0
        self.first_at = self.last_at = None
        self.latencies_ms: list[float] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic()
            kind = line[:1]
            with self.cond:
                if kind == b"R":
                    self.ready.set()
                elif kind == b"W":
                    self.latency_publisher_up.set()
                elif kind == b"T":
                    self.counted += 1
                    self.first_at = self.first_at or now
                    self.last_at = now
                elif kind == b"L":
                    self.latencies_ms.append((time.time_ns() - int(line.split(b" ", 2)[1])) / 1e6)
                self.cond.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(condition, timeout)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def raw_broker(settings, messages: int = 20_000, publishers: int = 2, latency_messages: int = 200,
               latency_rate: float = 100.0, timeout: float = 60.0) -> dict:
    """QoS 1 publish -> subscribe through the running Mosquitto (services listener, mTLS, C clients).

    Throughput: ``publishers`` mosquitto_pub -l (100 in flight each) send ``messages`` as fast
    as they go; rate = messages after the first / (last - first arrival at the subscriber).
    Latency: one publisher sends ``latency_messages`` paced at ``latency_rate``/s, each carrying
    its send time; latency = arrival - send (same clock, this process).
    """
    from fleet.identity.pki import LocalPKI

    pki = LocalPKI(settings.pki_dir)
    cert, key = pki.service_identity(settings.bridge_client_id)
    client_args = ["-h", settings.mqtt_host, "-p", str(settings.mqtt_service_port), "--cafile",
                   str(pki.ca_chain_path), "--cert", str(cert), "--key", str(key)]
    run = uuid.uuid4().hex[:6]
    topic = f"bench-baseline/{run}"
    sub = _Subscriber(settings, topic, client_args, f"bench-base-{run}-sub")
    try:
        # The subscription is in force once a marker comes back (no fixed sleep for the SUBACK).
        marker = subprocess.Popen(["mosquitto_pub", *client_args, "-i", f"bench-base-{run}-ready",
                                   "-t", f"{topic}/ready", "-q", "1", "-l"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0)
        deadline = time.monotonic() + timeout
        while not sub.ready.wait(0.2):
            if time.monotonic() > deadline or marker.poll() is not None or sub.proc.poll() is not None:
                marker.kill()
                raise RuntimeError("raw broker baseline: the subscriber never received the ready marker")
            marker.stdin.write(b"R\n")
        marker.stdin.close()
        marker.wait(10)

        per = max(1, messages // publishers)
        total = per * publishers
        pid = broker_pid(settings)
        cpu0 = cpu_seconds(pid)
        pubs = [subprocess.Popen(["mosquitto_pub", *client_args, "-i", f"bench-base-{run}-p{i}",
                                  "-t", f"{topic}/t{i}", "-q", "1", "-V", "mqttv5", "-M", "100", "-l"],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for i in range(publishers)]
        for i, p in enumerate(pubs):
            p.stdin.write(b"".join(b"T %d %d %s\n" % (i, n, _PAD) for n in range(per)))
            p.stdin.close()
        complete = sub.wait_for(lambda: sub.counted >= total, timeout)
        cpu1 = cpu_seconds(pid)
        for p in pubs:
            p.wait(30)
        span = (sub.last_at - sub.first_at) if sub.first_at is not None else 0.0
        rate = (sub.counted - 1) / span if span > 0 else 0.0

        lat = subprocess.Popen(["mosquitto_pub", *client_args, "-i", f"bench-base-{run}-lat",
                                "-t", f"{topic}/lat", "-q", "1", "-V", "mqttv5", "-l"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0)
        # Its connection (TLS handshake) must not count as the first message's latency.
        lat.stdin.write(b"W\n")
        if not sub.latency_publisher_up.wait(timeout):
            raise RuntimeError("raw broker baseline: the latency publisher's first message never arrived")
        start = time.monotonic()
        for n in range(latency_messages):
            while time.monotonic() < start + n / latency_rate:  # paced, one message at a time
                time.sleep(0.001)
            lat.stdin.write(b"L %d %s\n" % (time.time_ns(), _PAD))
        sub.wait_for(lambda: len(sub.latencies_ms) >= latency_messages, timeout)
        lat.stdin.close()
        lat.wait(30)
    finally:
        sub.stop()
    lats = sub.latencies_ms
    return {"messages": total, "received": sub.counted, "complete": complete, "publishers": publishers,
            "rate": rate, "us_per_msg": 1e6 / rate if rate else None,
            "broker_cpu_us_per_msg": (cpu1 - cpu0) / max(1, sub.counted) * 1e6,
            "latency_messages": len(lats), "latency_rate": latency_rate,
            "p50_ms": percentile(lats, 50), "p99_ms": percentile(lats, 99)}


# -- the baseline and warm-up ---------------------------------------------------------------


def measure(settings=None, broker: bool = True, broker_messages: int = 20_000, out: TextIO = sys.stdout) -> dict:
    """CPU calibration and (unless ``broker`` is False) the raw broker baseline, printed."""
    cpu = cpu_calibration()
    base = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0], "cpu": cpu, "broker": None}
    if broker:
        if settings is None:
            from fleet.config import Settings

            settings = Settings.from_env()
        base["broker"] = raw_broker(settings, messages=broker_messages)
    print_baseline(base, out)
    return base


def print_baseline(base: dict, out: TextIO = sys.stdout) -> None:
    cpu = base["cpu"]
    out.write(f"Baseline (same run, {base['cores']} cores, load avg {base['load_avg_1m']:.1f}):\n"
              f"  CPU calibration (json dumps+loads of an envelope + dict work, Python {cpu['python']}): "
              f"{cpu['us_per_op_best']:.1f} us/op best, {cpu['us_per_op_median']:.1f} median of {cpu['repeats']}; "
              f"single core {cpu['ops_per_s_single_core']:,.0f} ops/s\n")
    b = base.get("broker")
    if b:
        def fmt(v):
            return f"{v:.1f}" if v is not None else "-"

        out.write(f"  raw broker QoS 1 pub->sub (mTLS, C clients, {b['publishers']} publishers, "
                  f"{b['received']:,}/{b['messages']:,} msgs): {b['rate']:,.0f} msg/s, broker "
                  f"{b['broker_cpu_us_per_msg']:.0f} us/msg; latency at {b['latency_rate']:.0f}/s p50 "
                  f"{fmt(b['p50_ms'])} ms, p99 {fmt(b['p99_ms'])} ms\n")
    out.flush()


def windows_stable(values: list[float | None], tolerance: float = 0.10, span: int = 3) -> bool:
    """The last ``span`` windows' figures all lie within ``tolerance`` of the largest (all > 0).

    Two windows can agree by chance while the machine is still settling (or another tenant's load
    comes and goes), so the benches ask for three in a row.
    """
    if len(values) < span:
        return False
    last = values[-span:]
    if any(v is None or v <= 0 for v in last):
        return False
    return (max(last) - min(last)) / max(last) < tolerance


def warm_up(measure_window: Callable[[], float | None], *, max_seconds: float, tolerance: float = 0.10,
            label: str = "msg/s", out: TextIO = sys.stderr, clock: Callable[[], float] = time.monotonic,
            span: int = 3) -> dict:
    """Run windows until ``span`` consecutive figures agree within ``tolerance`` or ``max_seconds`` pass.

    Each window's figure and the time since the warm-up (and the bench process) started are
    printed; the result says whether and after how long the figures became stable.
    """
    start = clock()
    windows: list[dict] = []
    values: list[float] = []
    stable = False
    while True:
        value = measure_window()
        elapsed = clock() - start
        values.append(value)
        windows.append({"after_s": round(elapsed, 2), "value": value})
        shown = f"{value:,.0f}" if value is not None else "-"
        out.write(f"  warm-up window {len(values)}: {shown} {label} (after {elapsed:.1f} s)\n")
        out.flush()
        if windows_stable(values, tolerance, span):
            stable = True
            break
        if elapsed >= max_seconds:
            break
    elapsed = clock() - start
    result = {"stable": stable, "seconds": round(elapsed, 2), "tolerance": tolerance, "span": span,
              "windows": windows,
              "since_process_start_s": round(clock() - PROCESS_START, 2) if clock is time.monotonic else None}
    out.write(f"  warm-up: {'stable' if stable else 'NOT stable'} after {elapsed:.1f} s "
              f"({len(values)} windows; needs {span} consecutive within {tolerance:.0%}"
              + ("" if stable else f"; capped at {max_seconds:.0f} s") + ")\n")
    return result


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
