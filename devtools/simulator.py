"""A simulated fleet: many DeviceAgents publishing telemetry over mutual TLS.

    python -m devtools.simulator --devices 200 --rate 1 --duration 60

Each worker process drives its share of the devices from ONE MqttLoop thread (hundreds of
paho clients per thread); ``--processes`` spreads the fleet over CPU cores. Devices are
enrolled with the local CA on first use (keys under ``<state-dir>/devices/<id>/``) and keep
their seq there, so reruns continue each device's sequence (and their firmware slots: a device
updated over the air runs its new version on the next run too).

Every device takes OTA deployments (device/ota.py), downloading from ``--api-base-url``;
``--ota-fault 3,7-9:crash_loop`` gives devices 3, 7, 8 and 9 (indices) an injected failure
(device/ota_faults.py: corrupt_download, bad_signature, install_failure, crash_loop, stall,
download_failure_once, slow_download=<bytes/s>).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from device.agent import AgentConfig, DeviceAgent
from device.identity import DeviceIdentity
from device.ota_faults import OtaFaults
from fleet.config import Settings
from fleet.mqtt.loop import MqttLoop

# -- metric generators ----------------------------------------------------------------------


def _walk(start: float, step: float, lo: float, hi: float) -> Callable[[random.Random], Callable[[], float]]:
    """A bounded random walk: plausible sensor data that still changes every sample."""
    def make(rng: random.Random) -> Callable[[], float]:
        value = start + rng.uniform(-step * 10, step * 10)

        def sample() -> float:
            nonlocal value
            value = min(float(hi), max(float(lo), value + rng.gauss(0, step)))
            return round(value, 3)
        return sample
    return make


GENERATORS: dict[str, Callable[[random.Random], Callable[[], float]]] = {
    "temperature": _walk(21.0, 0.2, -40, 85),
    "humidity": _walk(45.0, 0.5, 0, 100),
    "battery": _walk(3.9, 0.005, 3.0, 4.2),
    "rssi": _walk(-65.0, 1.0, -120, -30),
    "pressure": _walk(1013.0, 0.3, 900, 1100),
    "cpu": _walk(20.0, 2.0, 0, 100),
    "vibration": _walk(0.1, 0.02, 0, 5),
    "current": _walk(1.5, 0.05, 0, 20),
}


class MetricSource:
    def __init__(self, names: list[str], rng: random.Random):
        self._gens = [(n, GENERATORS[n](rng)) for n in names]

    def __call__(self) -> dict[str, float]:
        return {name: gen() for name, gen in self._gens}


# -- one worker -----------------------------------------------------------------------------


@dataclass
class WorkerReport:
    worker: int
    devices: int = 0
    connected: int = 0
    sent: int = 0
    acked: int = 0
    dropped: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    unacked: int = 0
    final: bool = False
    # device id -> [first seq sent in this run, next seq after the last one sent]
    seq_ranges: dict[str, list[int]] = field(default_factory=dict)


def device_ids(count: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


def enroll_fleet(settings: Settings, ids: list[str], state_dir: Path) -> list[DeviceIdentity]:
    """Register every simulated device in the registry (which issues its certificate), as an
    operator would through the API, so the bridge's active-device check lets it through."""
    from devtools.enrollment import RegistryEnrollment

    enrollment = RegistryEnrollment.open(settings)
    return [enrollment.enroll(device_id, state_dir / "devices" / device_id) for device_id in ids]


def parse_ota_faults(specs: list[str], ids: list[str]) -> dict[str, OtaFaults]:
    """``["3,7-9:crash_loop", "0:slow_download=2000"]`` -> device id -> its faults (indices into ids)."""
    out: dict[str, OtaFaults] = {}
    for spec in specs:
        which, sep, faults = spec.partition(":")
        if not sep:
            raise ValueError(f"--ota-fault {spec!r}: expected DEVICES:FAULTS, e.g. 3,7-9:crash_loop")
        parsed = OtaFaults.parse(faults)
        for part in which.split(","):
            lo, _, hi = part.strip().partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                if not 0 <= i < len(ids):
                    raise ValueError(f"--ota-fault {spec!r}: device index {i} is not in 0..{len(ids) - 1}")
                out[ids[i]] = parsed
    return out


def run_worker(worker: int, settings: Settings, identities: list[DeviceIdentity], rate: float, duration: float,
               metric_names: list[str], progress: float, drain: float, *,
               report: Callable[[WorkerReport], None], max_inflight: int = 100, seed: int | None = None,
               ota_faults: dict[str, OtaFaults] | None = None, api_base_url: str | None = None) -> WorkerReport:
    rng = random.Random(seed if seed is not None else worker)
    loop = MqttLoop(name=f"sim-{worker}")
    extra = {"api_base_url": api_base_url} if api_base_url else {}
    config = AgentConfig.from_settings(settings, firmware_version="sim-1.0.0", max_inflight=max_inflight, **extra)
    faults = ota_faults or {}
    agents = [DeviceAgent(ident, dataclasses.replace(config, ota_faults=faults.get(ident.device_id, OtaFaults())), loop)
              for ident in identities]
    first_seq = {a.device_id: a.seq.next_value for a in agents}
    sources = {a.device_id: MetricSource(metric_names, rng) for a in agents}
    interval = 1.0 / rate if rate > 0 else math.inf
    state = {"publishing": True}

    def tick(agent: DeviceAgent, due: float) -> None:
        if not state["publishing"]:
            return
        agent.publish_telemetry(sources[agent.device_id](), {"sim": True})
        # Schedule from the due time, not from now, so the rate holds under load.
        nxt = due + interval
        loop.call_later(nxt - time.monotonic(), tick, agent, nxt)

    def begin() -> None:
        start = time.monotonic()
        for i, agent in enumerate(agents):
            # Spread connects over ~1 s and phases over one interval: no thundering herd.
            loop.call_later(i / max(1, len(agents)), agent._connect)
            if interval != math.inf:
                due = start + 1.0 + rng.uniform(0, interval)
                loop.call_later(due - start, tick, agent, due)

    def snapshot(final: bool = False) -> WorkerReport:
        r = WorkerReport(worker, devices=len(agents), final=final)
        for a in agents:
            r.connected += a.connected
            r.sent += a.stats.sent
            r.acked += a.stats.acked
            r.dropped += a.stats.dropped
            r.connect_failures += a.stats.connect_failures
            r.disconnects += a.stats.disconnects
            r.unacked += a.unacked
            if final:
                r.seq_ranges[a.device_id] = [first_seq[a.device_id], a.seq.next_value]
        return r

    loop.start()
    loop.call_soon(begin)
    t_end = time.monotonic() + 1.0 + duration
    while time.monotonic() < t_end:
        time.sleep(min(progress, max(0.0, t_end - time.monotonic())))
        report(snapshot())
    loop.call_soon(lambda: state.update(publishing=False))
    for a in agents:
        loop.call_soon(a.begin_stop)
    stopping = threading.Event()
    loop.call_soon(stopping.set)
    stopping.wait(10)
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and any(a.unacked for a in agents):
        time.sleep(0.1)
    for a in agents:
        loop.call_soon(a.finish_stop)
    time.sleep(0.3)
    loop.stop()
    final = snapshot(final=True)
    report(final)
    return final


def _worker_main(queue: mp.Queue, args: tuple, kwargs: dict) -> None:
    try:
        run_worker(*args, report=queue.put, **kwargs)
    except BaseException as exc:  # tell the parent instead of dying silently
        queue.put({"error": repr(exc)})
        raise


# -- the fleet ------------------------------------------------------------------------------


def simulate(settings: Settings, *, devices: int, rate: float, duration: float, processes: int = 1,
             prefix: str = "sim", metrics: int = 4, state_dir: Path | None = None, progress: float = 5.0,
             drain: float = 30.0, out=sys.stderr, max_inflight: int = 100, ota_faults: list[str] | None = None,
             api_base_url: str | None = None) -> dict:
    state_dir = state_dir or settings.var_dir / "sim"
    ids = device_ids(devices, prefix)
    faults = parse_ota_faults(ota_faults or [], ids)
    t0 = time.monotonic()
    identities = enroll_fleet(settings, ids, state_dir)
    out.write(f"simulator: {devices} devices enrolled in {time.monotonic() - t0:.1f}s, "
              f"{devices * rate:,.0f} msg/s for {duration:.0f}s over {processes} process(es)\n")
    names = list(GENERATORS)[:max(1, min(metrics, len(GENERATORS)))]
    processes = max(1, min(processes, devices))
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    procs = []
    for w in range(processes):
        share = identities[w::processes]
        p = ctx.Process(target=_worker_main, name=f"sim-{w}", daemon=True, args=(
            queue, (w, settings, share, rate, duration, names, progress, drain),
            {"max_inflight": max_inflight, "ota_faults": faults, "api_base_url": api_base_url}))
        p.start()
        procs.append(p)
    latest: dict[int, WorkerReport] = {}
    finals: dict[int, WorkerReport] = {}
    started = time.monotonic()
    errors: list[str] = []
    while len(finals) + len(errors) < processes:
        try:
            item = queue.get(timeout=duration + drain + 60)
        except Exception:
            errors.append("a worker stopped reporting")
            break
        if isinstance(item, dict):
            errors.append(item["error"])
            continue
        latest[item.worker] = item
        if item.final:
            finals[item.worker] = item
        elif len(latest) == processes:
            _progress_line(latest.values(), time.monotonic() - started, devices, out)
    for p in procs:
        p.join(10)
    summary = _summary(finals.values(), time.monotonic() - started, duration, devices, rate)
    summary["errors"] = errors
    out.write(f"simulator: sent {summary['sent']:,} acked {summary['acked']:,} dropped {summary['dropped']:,} "
              f"unacked {summary['unacked']:,} ({summary['sent_rate']:,.0f} msg/s), "
              f"connect failures {summary['connect_failures']}, disconnects {summary['disconnects']}"
              + (f", errors {errors}" if errors else "") + "\n")
    return summary


def _progress_line(reports, elapsed: float, devices: int, out) -> None:
    reports = list(reports)
    sent = sum(r.sent for r in reports)
    out.write(f"  t={elapsed:5.0f}s connected {sum(r.connected for r in reports)}/{devices} "
              f"sent {sent:,} acked {sum(r.acked for r in reports):,} dropped {sum(r.dropped for r in reports):,}\n")
    out.flush()


def _summary(finals, elapsed: float, duration: float, devices: int, rate: float) -> dict:
    finals = list(finals)
    total = {k: sum(getattr(r, k) for r in finals) for k in
             ("sent", "acked", "dropped", "connect_failures", "disconnects", "unacked")}
    ranges: dict[str, list[int]] = {}
    for r in finals:
        ranges.update(r.seq_ranges)
    return {**total, "devices": devices, "target_rate": devices * rate, "duration": duration,
            "sent_rate": total["sent"] / duration if duration else 0.0, "elapsed": elapsed, "seq_ranges": ranges}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.simulator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    ap.add_argument("--processes", type=int, default=1, help="worker processes (one MQTT loop thread each)")
    ap.add_argument("--prefix", default="sim", help="device ids are <prefix>-00000, <prefix>-00001, ...")
    ap.add_argument("--metrics", type=int, default=4, help=f"metrics per message (1..{len(GENERATORS)})")
    ap.add_argument("--state-dir", type=Path, default=None, help="keys, certificates, seq (default var/sim)")
    ap.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds to wait for outstanding acks at the end")
    ap.add_argument("--max-inflight", type=int, default=100, help="unacknowledged QoS 1 messages per device")
    ap.add_argument("--json", type=Path, default=None, help="write the summary (with per-device seq ranges) here")
    ap.add_argument("--api-base-url", default=None,
                    help="where devices download firmware (default: the configured API, http(s)://api_host:api_port)")
    ap.add_argument("--ota-fault", action="append", default=[], metavar="DEVICES:FAULTS",
                    help="inject OTA failures into devices by index, e.g. 3,7-9:crash_loop or 0:slow_download=2000 "
                         "(repeatable)")
    args = ap.parse_args(argv)
    try:
        parse_ota_faults(args.ota_fault, device_ids(args.devices, args.prefix))
    except ValueError as exc:
        ap.error(str(exc))
    settings = Settings.from_env()
    summary = simulate(settings, devices=args.devices, rate=args.rate, duration=args.duration,
                       processes=args.processes, prefix=args.prefix, metrics=args.metrics, state_dir=args.state_dir,
                       progress=args.progress, drain=args.drain, max_inflight=args.max_inflight,
                       ota_faults=args.ota_fault, api_base_url=args.api_base_url)
    if args.json:
        args.json.write_text(json.dumps(summary))
    ok = not summary["errors"] and summary["unacked"] == 0 and summary["dropped"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
