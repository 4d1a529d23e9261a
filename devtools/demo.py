"""The main command: the whole pipeline on one machine with a simulated fleet flowing through it.

1. the local stack (Mosquitto, Kafka, Cassandra, Flink) via the launcher,
2. every job under jobs/ submitted to the Flink cluster (skipped if already running),
3. the bridge(s) and the API,
4. a simulated fleet publishing over mutual TLS for ``duration`` seconds,
5. meanwhile, a shadow round (devtools/demo_shadow.py): an operator changes the desired state of
   some devices through the API and waits for each device to apply and report it,
6. and an OTA round (devtools/demo_ota.py): a firmware image rolled out to a dozen devices in three
   waves, one device with an injected install failure, followed until the deployment is final,
7. a report of what flowed: records per Kafka topic, this run's messages checked exactly once
   in the lake, the shadow round and the OTA round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devtools import demo_ota
from devtools.demo_shadow import start_round
from devtools.stack import launcher
from devtools.stack.apps import PROJECT_ROOT, BridgeComponent, settings_env
from fleet.config import Settings
from fleet.contract.topics import Kafka

JOBS_DIR = PROJECT_ROOT / "jobs"


def discover_jobs() -> list[Path]:
    """Each job's entry point, jobs/<name>/job.py."""
    return sorted(JOBS_DIR.glob("*/job.py"))


def submit_jobs(settings: Settings, out=None) -> None:
    out = out or sys.stderr
    from devtools.stack import flink

    running = {job["name"] for job in flink.list_jobs(settings) if job.get("state") in ("RUNNING", "CREATED",
                                                                                      "INITIALIZING")}
    for job_file in discover_jobs():
        job_name = job_file.parent.name
        if any(job_name in name for name in running):
            out.write(f"  {'flink':<10} job {job_name} already running\n")
            continue
        t0 = time.monotonic()
        job_id = flink.submit_job(settings, job_file, [])
        out.write(f"  {'flink':<10} submitted {job_name} as {job_id} ({time.monotonic() - t0:.1f}s)\n")


def topic_offsets(settings: Settings) -> dict[str, int]:
    """Total records per topic (sum of end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        totals = {}
        for name in Kafka.ALL:
            topic = settings.topic(name)
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            totals[name] = sum(consumer.end_offsets(parts).values()) if parts else 0
        return totals
    finally:
        consumer.close()


def run_fleet(settings: Settings, devices: int, rate: float, duration: float, summary: Path,
              ota_faults: Iterable[str] = ()) -> int:
    argv = [sys.executable, "-m", "devtools.simulator", "--devices", str(devices), "--rate", str(rate),
            "--duration", str(duration), "--json", str(summary)]
    for spec in ota_faults:
        argv += ["--ota-fault", spec]
    return subprocess.run(argv, env=settings_env(settings), cwd=PROJECT_ROOT).returncode


@dataclass(frozen=True)
class Delivery:
    """This run's messages against what a sink holds of them."""

    sent: int
    present: int     # distinct (device, seq) of this run found
    duplicates: int  # rows beyond the first for one (device, seq)
    missing: int

    @property
    def exactly_once(self) -> bool:
        return self.present == self.sent and self.duplicates == 0


def delivery(seq_ranges: dict[str, list[int]], rows: Iterable[tuple[str, int]]) -> Delivery:
    """``seq_ranges``: device -> [first seq sent in this run, next seq after its last]; ``rows``: the
    sink's (device_id, seq) pairs, any devices and runs (others are ignored)."""
    seen: dict[tuple[str, int], int] = {}
    for device_id, seq in rows:
        span = seq_ranges.get(device_id)
        if span is not None and span[0] <= seq < span[1]:
            seen[(device_id, seq)] = seen.get((device_id, seq), 0) + 1
    sent = sum(end - start for start, end in seq_ranges.values())
    return Delivery(sent, len(seen), sum(seen.values()) - len(seen), sent - len(seen))


def lake_delivery(settings: Settings, seq_ranges: dict[str, list[int]]) -> Delivery:
    import pyarrow.compute as pc

    from fleet.lake.dataset import telemetry_dataset

    table = telemetry_dataset(settings.lake_path / "telemetry").to_table(
        columns=["device_id", "seq"], filter=pc.field("device_id").isin(sorted(seq_ranges)))
    return delivery(seq_ranges, zip(table.column("device_id").to_pylist(), table.column("seq").to_pylist(), strict=True))


def wait_for_lake(settings: Settings, seq_ranges: dict[str, list[int]], timeout: float = 60.0) -> Delivery:
    """The lake commits on checkpoints: poll until it holds the whole run, or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = lake_delivery(settings, seq_ranges)
        if found.present >= found.sent or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def report(settings: Settings, before: dict[str, int], after: dict[str, int], lake: Delivery | None = None,
           out=None) -> None:
    out = out or sys.stdout
    out.write("\nWhat flowed (records added per Kafka topic):\n")
    for name in Kafka.ALL:
        delta = after.get(name, 0) - before.get(name, 0)
        if delta:
            out.write(f"  {settings.topic(name):<28} {delta:>10,}\n")
    if lake is not None:
        verdict = "exactly once" if lake.exactly_once else "NOT exactly once"
        out.write(f"\nParquet lake, this run's devices: sent {lake.sent:,}, in the lake {lake.present:,}, "
                  f"duplicates {lake.duplicates:,}, missing {lake.missing:,} ({verdict}) "
                  f"under {settings.lake_path / 'telemetry'}\n")


def demo_key(settings: Settings, role: str = "viewer") -> str:
    """A fresh API key (read-only by default), so the operator can look at what flowed right away."""
    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(settings)
    try:
        _, secret = ApiKeyStore(sessions.get()).create(f"demo-{role}", Role(role), None)
    finally:
        sessions.shutdown()
    return secret


def print_try_it(settings: Settings, out=None) -> None:
    out = out or sys.stdout
    key = demo_key(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    out.write(f"\nTry the API (a read-only key made for this demo; admin keys: 'fleet admin bootstrap'):\n"
              f"  curl -s -H 'X-API-Key: {key}' '{base}/v1/devices/sim-00000/telemetry?limit=3'\n"
              f"  curl -s -H 'X-API-Key: {key}' '{base}/v1/devices/sim-00000/telemetry/aggregate?metric=temperature&bucket=1m'\n"
              f"  curl -s -H 'X-API-Key: {key}' '{base}/v1/devices/sim-00000/telemetry/gaps'\n"
              f"  OpenAPI: {base}/docs   Flink UI: http://127.0.0.1:{settings.flink_rest_port}\n")


def run(settings: Settings, *, devices: int, rate: float, duration: float, bridges: int = 1,
        keep_running: bool = True) -> int:
    progress = launcher.Progress()
    components = launcher.up(settings, list(launcher.INFRA), progress)
    if discover_jobs():
        submit_jobs(settings)
    extra_bridges = [BridgeComponent(settings, i) for i in range(1, bridges)]
    components += launcher.up(settings, ["bridge", "api"], progress)
    for bridge in extra_bridges:
        bridge.prepare()
        bridge.start()
    print("\nThe stack is up:")
    launcher.print_endpoints(components + extra_bridges)
    before = topic_offsets(settings)
    delay = min(15.0, duration / 3)  # the rounds start once the fleet is connected
    ota_setup = demo_ota.choose(devices)
    asked = duration
    if ota_setup:
        duration = demo_ota.fleet_duration(duration, delay)
    raised = f" (raised from {asked:.0f}s so the OTA round ends while it runs)" if duration > asked else ""
    print(f"\nSimulating {devices} devices at {rate}/s each for {duration:.0f}s{raised} ...", flush=True)
    summary_file = settings.run_dir / "demo-simulator.json"
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    operator_key = demo_key(settings, "operator")
    shadow_devices = [f"sim-{i:05d}" for i in range(min(devices, 20))]
    shadow_thread, shadow_result = start_round(settings, operator_key, shadow_devices, delay=delay)
    ota_round = demo_ota.start_round(settings, operator_key, ota_setup, delay=delay) if ota_setup else None
    rc = run_fleet(settings, devices, rate, duration, summary_file,
                   ota_faults=[ota_setup.fault_spec] if ota_setup else ())
    shadow_thread.join(60)
    if ota_round:
        ota_round[0].join(30)  # it ends within the fleet's run; this covers a slow last request
    seq_ranges = json.loads(summary_file.read_text())["seq_ranges"] if summary_file.exists() else {}
    print("Waiting for the lake to commit this run (checkpoints) ...", flush=True)
    lake = wait_for_lake(settings, seq_ranges) if seq_ranges else None
    report(settings, before, topic_offsets(settings), lake)
    print(shadow_result[0].summary() if shadow_result else "Shadow: the round did not finish")
    if ota_round is None:
        print(f"OTA: skipped (the staged rollout needs a fleet of at least {demo_ota.TARGETS} devices)")
    else:
        print(ota_round[1][0].summary() if ota_round[1] else "OTA: the round did not finish")
    print_try_it(settings)
    if keep_running:
        print("\nThe stack keeps running: 'fleet stack status', 'fleet stack logs NAME', "
              "'fleet stack down [--wipe]'.")
    else:
        for bridge in extra_bridges:
            bridge.stop()
        launcher.down(settings)
    return rc
