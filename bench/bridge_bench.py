"""Bridge benchmark: sustained MQTT -> Kafka throughput with zero loss, against the running stack.

    .venv/bin/python bench/bridge_bench.py [--rates 1000,2500,5000,7500,10000] [--bridges 1]

What it does, in one run on one machine:
1. the same-run baseline (bench/baseline.py): a CPU calibration and raw Mosquitto QoS 1
   publish -> subscribe (C clients over the mTLS services listener), the ceiling the bridge is
   compared with; the key figures are printed also as ratios to it;
2. starts ``--bridges`` bridge processes on throwaway topics (``bench-<run>.*``, telemetry with
   LogAppendTime so Kafka stamps when each record landed) and a throwaway share group;
3. for each rate: a simulated fleet publishes telemetry (QoS 1, mTLS, ts = publish time) for
   ``--stage-seconds``; then every published (device, seq) is looked up in Kafka:
   zero loss, p50/p99 publish-to-Kafka latency (append time - ts), achieved throughput
   (records / (last append - first publish)), and CPU per message of the bridge processes and
   of Mosquitto (from /proc);
   before the first stage, a warm-up at the first rate in ``--warmup-window-s`` windows until
   three consecutive windows' achieved msg/s agree within 10 % (the bridges are freshly started,
   i.e. cold), each window printed;
4. prints a table, writes JSON under var/bench/ (and one line to var/bench/bridge.jsonl) with the
   baseline, the ratios and the warm-up, ends the bridges' broker sessions and deletes the
   throwaway topics. Figures and method: bench/README.md.

Load drivers: ``--driver c`` (default) feeds one ``mosquitto_pub -l`` per device with paced,
timestamped lines, so the load generator costs ~15 us/message and leaves the 2 cores to the
broker, the bridge and Kafka; ``--driver agent`` runs the Python device simulator (the reference
agent, ~100 us/message of its own CPU).

A stack bridge in the default share group also receives the bench traffic (and writes it to
the real topics): stop it (``fleet stack down bridge``) for clean figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import orjson  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

from device.identity import DeviceIdentity  # noqa: E402
from device.seqstore import SeqStore  # noqa: E402
from devtools.enrollment import RegistryEnrollment  # noqa: E402
from fleet.config import Settings  # noqa: E402
from fleet.contract.topics import Kafka  # noqa: E402

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import baseline  # noqa: E402
from baseline import broker_pid, cpu_seconds, percentile  # noqa: E402,F401 (e2e_bench imported them from here)

# -- processes and CPU ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Kafka ----------------------------------------------------------------------------------


def create_topics(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="bridge-bench")
    try:
        topics = []
        for name in Kafka.ALL:
            configs = {"message.timestamp.type": "LogAppendTime"} if name == Kafka.TELEMETRY else {}
            topics.append(NewTopic(settings.topic(name), settings.topic_partitions, 1, topic_configs=configs))
        admin.create_topics(topics, timeout_ms=30000)
        admin.wait_for_topics([t.name for t in topics])
    finally:
        admin.close()


def delete_topics(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="bridge-bench")
    try:
        admin.delete_topics([settings.topic(n) for n in Kafka.ALL], raise_errors=False)
    finally:
        admin.close()


class TelemetryReader:
    """Reads the bench telemetry topic from where the last stage ended."""

    def __init__(self, settings: Settings):
        self.topic = settings.topic(Kafka.TELEMETRY)
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                      fetch_max_bytes=16 * 1024 * 1024, max_poll_records=50000)
        self.parts = [TopicPartition(self.topic, p) for p in sorted(self.consumer.partitions_for_topic(self.topic))]
        self.consumer.assign(self.parts)
        self.consumer.seek_to_beginning()

    def collect(self, expected: set[tuple[str, int]], timeout: float) -> dict:
        """Read until every expected (device, seq) was seen or timeout; latency per first copy."""
        seen: set[tuple[str, int]] = set()
        latencies: list[int] = []
        duplicates = 0
        first_ts, last_append = None, None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not expected <= seen:
            for batch in self.consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    value = orjson.loads(rec.value)
                    key = (value["device_id"], value["payload"]["seq"])
                    if key not in expected:
                        continue
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    ts = value["payload"]["ts"]
                    latencies.append(rec.timestamp - ts)  # LogAppendTime - publish time
                    first_ts = ts if first_ts is None else min(first_ts, ts)
                    last_append = rec.timestamp if last_append is None else max(last_append, rec.timestamp)
        latencies.sort()
        return {"seen": len(seen), "missing": len(expected - seen), "duplicates": duplicates,
                "first_ts": first_ts, "last_append": last_append, "latencies": latencies}

    def close(self) -> None:
        self.consumer.close()


# -- bridges --------------------------------------------------------------------------------


class BridgeProcs:
    def __init__(self, settings: Settings, count: int, log_dir: Path):
        from devtools.stack.apps import settings_env

        self.settings, self.count = settings, count
        self.instances = [800 + i for i in range(count)]
        self.ports = [free_port() for _ in range(count)]
        self.log_dir = log_dir
        self.env = settings_env(settings)
        self.env["FLEET_BRIDGE_SHARE_GROUP"] = settings.bridge_share_group
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, instance: int, port: int, *extra: str) -> subprocess.Popen:
        log = open(self.log_dir / f"bridge-{instance}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "bridge", "--instance", str(instance), "--metrics-port",
                                 str(port), *extra], env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=log)

    def start(self, timeout: float = 60) -> None:
        self.procs = [self._spawn(i, p) for i, p in zip(self.instances, self.ports, strict=True)]
        deadline = time.monotonic() + timeout
        for proc, port in zip(self.procs, self.ports, strict=True):
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"a bridge exited at start; see {self.log_dir}")
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("bridges did not become healthy")
                time.sleep(0.2)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        # End the throwaway sessions so the broker stops queueing for them.
        retire = [self._spawn(i, 0, "--retire") for i in self.instances]
        for p in retire:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()


# -- load drivers ---------------------------------------------------------------------------


class CDriver:
    """One mosquitto_pub -l per device (mTLS with the device's own certificate), fed paced lines."""

    def __init__(self, settings: Settings, identities: list[DeviceIdentity]):
        self.settings = settings
        self.identities = identities
        self.seqs = [SeqStore(i.directory / "seq") for i in identities]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        s = self.settings
        for ident in self.identities:
            self.procs.append(subprocess.Popen(
                ["mosquitto_pub", "-h", s.mqtt_host, "-p", str(s.mqtt_device_port), "--cafile", str(ident.ca_path),
                 "--cert", str(ident.cert_path), "--key", str(ident.key_path), "-i", ident.device_id,
                 "-t", f"devices/{ident.device_id}/telemetry", "-q", "1", "-V", "mqttv5", "-M", "100", "-l"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0))
        time.sleep(2.0)  # TLS handshakes
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            raise SystemExit(f"{len(dead)} mosquitto_pub processes exited (broker refused the device certificate?)")

    def run(self, rate: float, seconds: float) -> dict[str, list[int]]:
        n = len(self.identities)
        ranges = {ident.device_id: [seq.next_value, seq.next_value]
                  for ident, seq in zip(self.identities, self.seqs, strict=True)}
        start = time.monotonic()
        sent, rr = 0, 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            due = int(rate * elapsed) - sent
            if due > 0:
                chunks: dict[int, list[bytes]] = {}
                now = time.time_ns() // 1_000_000
                for _ in range(due):
                    d = rr % n
                    rr += 1
                    seq = self.seqs[d].take()
                    chunks.setdefault(d, []).append(
                        b'{"ts":%d,"seq":%d,"metrics":{"temperature":%.2f,"humidity":%.1f,"battery":3.9,"rssi":-65}}\n'
                        % (now, seq, 20 + (seq % 100) / 10, 40 + seq % 20))
                for d, lines in chunks.items():
                    self.procs[d].stdin.write(b"".join(lines))
                sent += due
            time.sleep(0.005)
        for ident, seq in zip(self.identities, self.seqs, strict=True):
            ranges[ident.device_id][1] = seq.next_value
        return ranges

    def stop(self) -> None:
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for seq in self.seqs:
            seq.close()


class AgentDriver:
    """The Python device simulator (reference agent): realistic, but ~100 us CPU per message."""

    def __init__(self, settings: Settings, identities: list[DeviceIdentity], processes: int, state_dir: Path):
        self.settings, self.identities, self.processes, self.state_dir = settings, identities, processes, state_dir

    def start(self) -> None:
        pass

    def run(self, rate: float, seconds: float) -> dict[str, list[int]]:
        from devtools.simulator import simulate

        prefix = self.identities[0].device_id.rsplit("-", 1)[0]
        with open(os.devnull, "w") as quiet:
            summary = simulate(self.settings, devices=len(self.identities), rate=rate / len(self.identities),
                               duration=seconds, processes=self.processes, prefix=prefix, state_dir=self.state_dir,
                               progress=seconds + 60, drain=60, out=quiet)
        return summary["seq_ranges"]

    def stop(self) -> None:
        pass


# -- the run --------------------------------------------------------------------------------


@dataclass
class Stage:
    offered: float
    published: int = 0
    in_kafka: int = 0
    missing: int = 0
    duplicates: int = 0
    achieved: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    bridge_cpu_us: float = 0.0
    broker_cpu_us: float = 0.0
    sustained: bool = False
    notes: list[str] = field(default_factory=list)


def run_stage(rate: float, seconds: float, driver, bridges: BridgeProcs, reader: TelemetryReader,
              mosquitto: int | None, max_p99_ms: float) -> Stage:
    stage = Stage(rate)
    bcpu0, mcpu0 = bridges.cpu(), cpu_seconds(mosquitto)
    ranges = driver.run(rate, seconds)
    expected = {(dev, s) for dev, (first, nxt) in ranges.items() for s in range(first, nxt)}
    stage.published = len(expected)
    got = reader.collect(expected, timeout=max(60.0, seconds * 3))
    bcpu1, mcpu1 = bridges.cpu(), cpu_seconds(mosquitto)
    stage.in_kafka, stage.missing, stage.duplicates = got["seen"], got["missing"], got["duplicates"]
    if got["first_ts"] is not None and got["last_append"] > got["first_ts"]:
        stage.achieved = got["seen"] / ((got["last_append"] - got["first_ts"]) / 1000)
    stage.p50_ms, stage.p99_ms = percentile(got["latencies"], 50), percentile(got["latencies"], 99)
    stage.bridge_cpu_us = (bcpu1 - bcpu0) / max(1, got["seen"]) * 1e6
    stage.broker_cpu_us = (mcpu1 - mcpu0) / max(1, got["seen"]) * 1e6
    if stage.published < 0.95 * rate * seconds:
        stage.notes.append("load generator fell short of the offered rate")
    stage.sustained = (stage.missing == 0 and stage.p99_ms is not None and stage.p99_ms <= max_p99_ms
                       and stage.achieved >= 0.95 * stage.published / seconds)
    return stage


def stage_ratios(stage: Stage, base: dict) -> dict:
    """The stage's key figures divided by the same-run baseline's."""
    broker, cpu = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    return {"achieved_vs_raw_broker": baseline.ratio(stage.achieved, broker.get("rate")),
            "bridge_us_per_msg_vs_calibration": baseline.ratio(stage.bridge_cpu_us, cpu),
            "broker_us_per_msg_vs_raw_broker": baseline.ratio(stage.broker_cpu_us, broker.get("broker_cpu_us_per_msg")),
            "p50_vs_raw_broker_p50": baseline.ratio(stage.p50_ms, broker.get("p50_ms"))}


def print_ratios(stages: list[Stage], base: dict, warm: dict | None, out=sys.stdout) -> None:
    broker, cpu = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    out.write("As ratios to the same-run baseline (raw broker msg/s, broker us/msg and p50; CPU calibration us/op):\n")
    for s in stages:
        out.write(f"  {s.offered:>7,.0f}/s: achieved {baseline.with_ratio(s.achieved, broker.get('rate'), unit=' msg/s')}"
                  f"; bridge {baseline.with_ratio(s.bridge_cpu_us, cpu, unit=' us/msg')}"
                  f"; broker {baseline.with_ratio(s.broker_cpu_us, broker.get('broker_cpu_us_per_msg'), unit=' us/msg')}"
                  f"; p50 {baseline.with_ratio(s.p50_ms, broker.get('p50_ms'), unit=' ms')}\n")
    if warm:
        out.write(f"Warm-up of the freshly started bridge(s): {'stable' if warm['stable'] else 'NOT stable'} after "
                  f"{warm['seconds']:.0f} s ({len(warm['windows'])} windows of {warm['window_s']:.0f} s, "
                  f"{warm['span']} consecutive "
                  f"within {warm['tolerance']:.0%}); {warm['since_process_start_s']:.0f} s after this bench process "
                  f"started\n")


def print_table(stages: list[Stage], raw: dict | None, args, out=sys.stdout) -> None:
    out.write(f"\nBridge benchmark: {args.bridges} bridge process(es), driver={args.driver}, {args.devices} devices, "
              f"{args.stage_seconds:.0f} s per stage, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}\n")
    if raw:
        out.write(f"Raw Mosquitto QoS 1 publish->subscribe (C clients, services listener, {raw['publishers']} "
                  f"publishers, {raw['received']:,} msgs): {raw['rate']:,.0f} msg/s, broker "
                  f"{raw['broker_cpu_us_per_msg']:.0f} us/msg\n")
    hdr = (f"{'offered/s':>10} {'published':>10} {'in Kafka':>10} {'missing':>8} {'dups':>6} {'achieved/s':>11} "
           f"{'p50 ms':>8} {'p99 ms':>8} {'bridge us/msg':>14} {'broker us/msg':>14}  sustained")
    out.write(hdr + "\n" + "-" * len(hdr) + "\n")
    for s in stages:
        fmt = lambda v: f"{v:8.0f}" if v is not None else f"{'-':>8}"  # noqa: E731
        out.write(f"{s.offered:>10,.0f} {s.published:>10,} {s.in_kafka:>10,} {s.missing:>8,} {s.duplicates:>6,} "
                  f"{s.achieved:>11,.0f} {fmt(s.p50_ms)} {fmt(s.p99_ms)} {s.bridge_cpu_us:>14.0f} "
                  f"{s.broker_cpu_us:>14.0f}  {'yes' if s.sustained else 'NO'}"
                  + (f"  ({'; '.join(s.notes)})" if s.notes else "") + "\n")
    best = max((s.achieved for s in stages if s.sustained), default=0.0)
    line = f"\nMax sustained into Kafka with zero loss: {best:,.0f} msg/s"
    if raw and raw["rate"]:
        line += f" ({best / raw['rate']:.0%} of raw broker QoS 1 throughput)"
    out.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,2500,5000,7500,10000", help="offered msg/s per stage")
    ap.add_argument("--stage-seconds", type=float, default=20.0)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--bridges", type=int, default=1, help="bridge processes sharing the subscription")
    ap.add_argument("--driver", choices=("c", "agent"), default="c")
    ap.add_argument("--agent-processes", type=int, default=2, help="simulator processes (driver=agent)")
    ap.add_argument("--raw-messages", type=int, default=20_000,
                    help="raw broker baseline size (0: CPU calibration only)")
    ap.add_argument("--warmup-window-s", type=float, default=5.0, help="length of one warm-up window")
    ap.add_argument("--warmup-rate", type=float, default=None,
                    help="offered msg/s of the warm-up windows (default: the first rate; one above capacity "
                         "shows a slow cold start as low windows, one below it only if the path cannot keep up)")
    ap.add_argument("--warmup-max-s", type=float, default=60.0,
                    help="warm up at the first rate until three consecutive windows agree within 10%%, at most this "
                         "long (0: no warm-up)")
    ap.add_argument("--max-p99-ms", type=float, default=1000.0, help="above this a stage is not 'sustained'")
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after one was not sustained")
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    warmup_rate = args.warmup_rate or rates[0]

    base = Settings.from_env()
    if not shutil.which("mosquitto_pub"):
        raise SystemExit("mosquitto_pub not found: apt-get install -y mosquitto-clients")
    run_id = uuid.uuid4().hex[:6]
    settings = base.replace(topic_prefix=f"bench-{run_id}.", bridge_share_group=f"bench-{run_id}")
    bench_dir = base.var_dir / "bench"
    (bench_dir / "logs").mkdir(parents=True, exist_ok=True)
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{base.bridge_metrics_port}/health", timeout=1).status == 200:
            print("note: the stack's bridge is running and also consumes the bench traffic "
                  "(stop it with 'fleet stack down bridge' for clean figures)", file=sys.stderr)
    except OSError:
        pass

    # Registered like real devices, so the bridge's registry check is part of what is measured.
    enrollment = RegistryEnrollment.open(settings, device_type="bench", groups=["bench"])
    identities = [enrollment.enroll(f"bench-{i:05d}", bench_dir / "devices" / f"bench-{i:05d}")
                  for i in range(args.devices)]
    mosquitto = broker_pid(settings)
    print(f"run {run_id}: topics bench-{run_id}.*, broker pid {mosquitto}", file=sys.stderr)

    # Same run, same machine state, before the bench's own bridges and load.
    base = baseline.measure(settings, broker=args.raw_messages > 0, broker_messages=args.raw_messages)
    raw = base["broker"]

    create_topics(settings)
    bridges = BridgeProcs(settings, args.bridges, bench_dir / "logs")
    driver = CDriver(settings, identities) if args.driver == "c" else \
        AgentDriver(settings, identities, args.agent_processes, bench_dir)
    stages: list[Stage] = []
    reader = None
    warm = None
    try:
        bridges.start()
        driver.start()
        reader = TelemetryReader(settings)
        if args.warmup_max_s > 0:
            print(f"warm-up at {warmup_rate:,.0f} msg/s in {args.warmup_window_s:.0f} s windows "
                  f"(<= {args.warmup_max_s:.0f} s):", file=sys.stderr)
            warm = baseline.warm_up(lambda: run_stage(warmup_rate, args.warmup_window_s, driver, bridges, reader,
                                                      mosquitto, args.max_p99_ms).achieved,
                                    max_seconds=args.warmup_max_s, label="msg/s into Kafka")
            warm["window_s"], warm["rate"] = args.warmup_window_s, warmup_rate
        for rate in rates:
            print(f"stage {rate:,.0f} msg/s ...", file=sys.stderr)
            stage = run_stage(rate, args.stage_seconds, driver, bridges, reader, mosquitto, args.max_p99_ms)
            stages.append(stage)
            print(f"  {asdict(stage)}", file=sys.stderr)
            if not stage.sustained and not args.keep_going:
                break
    finally:
        driver.stop()
        if reader:
            reader.close()
        bridges.stop()
        if not args.keep_topics:
            delete_topics(settings)
    print_table(stages, raw, args)
    print_ratios(stages, base, warm)
    result = {"run": run_id, "at": dt.datetime.now(dt.UTC).isoformat(), "args": vars(args) | {"json": None},
              "cores": os.cpu_count(), "raw": raw, "baseline": base, "warmup": warm,
              "stages": [asdict(s) | {"ratios": stage_ratios(s, base)} for s in stages]}
    path = args.json or bench_dir / f"bridge-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    with open(bench_dir / "bridge.jsonl", "a") as fh:
        fh.write(json.dumps(result, default=str) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
