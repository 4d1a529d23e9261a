"""The main command: the whole pipeline on one machine with a simulated fleet flowing through it.

1. the local stack (Mosquitto, Kafka, Cassandra, Flink) via the launcher,
2. every job under jobs/ submitted to the Flink cluster (skipped if already running),
3. the bridge(s) and the API,
4. a simulated fleet publishing over mutual TLS for ``duration`` seconds,
5. a report of what flowed: records per Kafka topic, rows in Cassandra, files in the lake.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fleet.settings import Settings
from fleet.stack import launcher
from fleet.stack.apps import PROJECT_ROOT, BridgeComponent, settings_env
from fleet.topics import Kafka

JOBS_DIR = PROJECT_ROOT / "jobs"


def discover_jobs() -> list[Path]:
    return sorted(JOBS_DIR.glob("*_job.py"))


def submit_jobs(settings: Settings, out=None) -> None:
    out = out or sys.stderr
    from fleet.stack import flink

    running = {job["name"] for job in flink.list_jobs(settings) if job.get("state") in ("RUNNING", "CREATED",
                                                                                      "INITIALIZING")}
    for job_file in discover_jobs():
        job_name = job_file.stem.replace("_job", "")
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


def run_fleet(settings: Settings, devices: int, rate: float, duration: float) -> int:
    argv = [sys.executable, "-m", "device.simulator", "--devices", str(devices), "--rate", str(rate),
            "--duration", str(duration)]
    return subprocess.run(argv, env=settings_env(settings), cwd=PROJECT_ROOT).returncode


def report(settings: Settings, before: dict[str, int], after: dict[str, int], out=None) -> None:
    out = out or sys.stdout
    out.write("\nWhat flowed (records added per Kafka topic):\n")
    for name in Kafka.ALL:
        delta = after.get(name, 0) - before.get(name, 0)
        if delta:
            out.write(f"  {settings.topic(name):<28} {delta:>10,}\n")
    lake = settings.lake_path / "telemetry"
    if lake.exists():
        from fleet.lake import telemetry_dataset

        files = list(lake.rglob("*.parquet"))
        rows = telemetry_dataset(lake).count_rows()
        out.write(f"\nParquet lake: {rows:,} rows in {len(files)} files under {lake}\n")


def demo_key(settings: Settings) -> str:
    """A fresh read-only API key, so the operator can look at what flowed right away."""
    from fleet.apikeys import ApiKeyStore
    from fleet.auth import Role
    from fleet.db import CassandraSessions

    sessions = CassandraSessions(settings)
    try:
        _, secret = ApiKeyStore(sessions.get()).create("demo-viewer", Role.viewer, None)
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
    print(f"\nSimulating {devices} devices at {rate}/s each for {duration:.0f}s ...", flush=True)
    rc = run_fleet(settings, devices, rate, duration)
    time.sleep(10)  # let the bridge and the jobs drain what is in flight (sinks commit on checkpoints)
    report(settings, before, topic_offsets(settings))
    print_try_it(settings)
    if keep_running:
        print("\nThe stack keeps running: 'fleet stack status', 'fleet stack logs NAME', "
              "'fleet stack down [--wipe]'.")
    else:
        for bridge in extra_bridges:
            bridge.stop()
        launcher.down(settings)
    return rc
