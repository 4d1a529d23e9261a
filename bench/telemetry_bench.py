"""Telemetry job throughput on this machine: records/s through build() on the local Flink cluster.

    .venv/bin/python bench/telemetry_bench.py [--records 300000] [--devices 1000]
        [--runs discard,lake,cassandra,all] [--core java,python] [--event-time payload] [--python-mode thread]

Writes a file of envelopes (the bridge's format, 5 metrics, ~3% duplicates, a few gaps) under
var/bench/, then submits bench/telemetry_bench_job.py once per run with ``flink run`` and reads
the job's timing from the REST API. Throughput = records / (end of the telemetry-core task -
start of the job's first task), i.e. without the CLI's JVM start and graph submission.
``--core`` picks the telemetry-core implementation (JobOptions.core; comma-separated runs each).

Java core (the default), same box and input shape, 600k records (2026-11-27, load average 3-12):
    discard (source + keying + Java core)         65,000 - 124,000 records/s (Python core in the
                                                   same sessions: 8,400 - 9,400; 5,200 at load 30)
    lake                                          ~75,000 records/s (Python core: ~6,700)
The Java core's rules cost ~3 us per record outside Flink (parse, state decode/encode, observe),
against the Python operator's ~100+ us; with it the job runs no Python per record at all.
Cassandra runs were not repeated for it (they would load the shared stack's Cassandra); they are
bound by Cassandra, not by the core.

Python core (--core python), measured on the 2-core / 24 GiB dev box (2026-11-27, parallelism 2,
thread mode, 200k records of 1000 devices, 5 metrics each, ~3% redeliveries; the box was shared
with a second full stack, so load average 3-10 and +-30% between runs):
    discard (source + keying + Python core)        7,000 - 11,000 records/s
    lake (Parquet, exactly once)                   6,700 -  9,100 records/s  (one ~1 MB file per
                                                                              checkpoint and hour)
    cassandra (raw + 1-min rollups + gaps + stats) 3,200 -  4,100 records/s  (Cassandra CPU-bound:
                                                   ~130 us of Cassandra CPU per row unbatched,
                                                   ~40% less with 16-row UNLOGGED batches)
    all (lake + cassandra)                         4,100 -  4,400 records/s
    process mode instead of thread (discard, 50k)  ~850 records/s vs ~4,600 (thread), about 5x
Before moving keying, event time and row building to Java and caching state reads, the same
discard run did 3,300 records/s (PyFlink's key_by and a Row-with-map output each cost a Python
call per record; a state read or write from thread-mode Python costs tens of microseconds).

Cassandra runs write into a throwaway keyspace (migrated, dropped afterwards), lake runs into a
throwaway directory under var/bench/ (deleted afterwards). Results are
appended to var/bench/telemetry.jsonl.

The figures above predate the same-run baseline. Now every run first measures it
(bench/baseline.py: CPU calibration, raw broker QoS 1 pub->sub) and prints each figure also as a
ratio to it (us per record / calibration us per op); the cluster (private: freshly started, so
a cold JVM) is first warmed by repeated ``discard`` jobs of ``--warmup-records`` until three
consecutive jobs' records/s agree within 10 % (``--warmup-max-s`` caps it), each printed with
the time from its job's start (Flink REST start-time) to its first task running and to its end.
Method and a run on the 2-core box: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline  # noqa: E402 - after the sys.path set-up above

from devtools.stack import flink  # noqa: E402 - after the sys.path set-up above
from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above

JOB = Path(__file__).resolve().parent / "telemetry_bench_job.py"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def write_input(path: Path, records: int, devices: int, seed: int = 7) -> None:
    """Envelopes as the bridge writes them (orjson, device_id first), 1 s apart per device."""
    import orjson

    rng = random.Random(seed)
    seq = [0] * devices
    with open(path, "wb") as fh:
        for i in range(records):
            d = i % devices
            s = seq[d]
            seq[d] += 1 if rng.random() > 0.001 else 2  # an occasional gap
            ts = T0 + s * 1000 + d
            env = {"device_id": f"dev-{d:05d}", "type": "telemetry", "ts": ts, "ingest_ts": ts + 40,
                   "mqtt_topic": f"devices/dev-{d:05d}/telemetry",
                   "payload": {"ts": ts, "seq": s, "metrics": {
                       "temp": round(20 + rng.random() * 5, 3), "hum": round(40 + rng.random() * 20, 3),
                       "volt": round(3.2 + rng.random() * 0.2, 3), "rssi": -60 - rng.randrange(30), "cpu": rng.random()},
                       "attrs": {"fw": "1.4.2"}}}
            line = orjson.dumps(env) + b"\n"
            fh.write(line)
            if rng.random() < 0.03:  # bridge redelivery
                fh.write(line)


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def run_once(settings: Settings, stack: Settings, input_path: Path, sinks: str, event_time: str, python_mode: str,
             keyspace: str | None, cassandra_batch: int, core: str = "java") -> dict:
    """``settings``: the Flink cluster to run on; ``stack``: where the bench's files go."""
    lake = stack.var_dir / "bench" / f"lake-{int(time.time())}"
    args = ["--input", str(input_path), "--sinks", sinks, "--event-time", event_time, "--python-mode", python_mode,
            "--lake-dir", str(lake), "--cassandra-batch", str(cassandra_batch), "--core", core]
    if keyspace:
        args += ["--keyspace", keyspace]
    t0 = time.monotonic()
    job_id = flink.submit_job(settings, JOB, args)
    try:
        flink.wait_for_job_state(settings, job_id, ["FINISHED"], timeout=3600, interval=1.0, fail_on_restart=True)
    except Exception:
        flink.cancel_job(settings, job_id)
        raise
    wall = time.monotonic() - t0
    details = flink.job_details(settings, job_id)
    vertices = details["vertices"]
    start = min(v["start-time"] for v in vertices if v["start-time"] > 0)
    job_start = details.get("start-time") or start  # when the JobManager accepted the job
    core = next(v for v in vertices if "telemetry-core" in v["name"])
    end = max(v["end-time"] for v in vertices)
    lake_files = sorted(lake.rglob("*.parquet"))
    lake_bytes = sum(f.stat().st_size for f in lake_files)
    shutil.rmtree(lake, ignore_errors=True)
    return {"job_id": job_id, "seconds_core": (core["end-time"] - start) / 1000,
            "seconds_job_start_to_first_task": (start - job_start) / 1000,
            "seconds_job_start_to_end": (end - job_start) / 1000,
            "seconds_all_tasks": (end - start) / 1000, "seconds_wall_incl_submit": round(wall, 1),
            "lake_files": len(lake_files), "lake_mb": round(lake_bytes / 1e6, 1),
            "vertices": [v["name"] for v in vertices]}


def record_ratios(records_per_s: float, base: dict) -> dict:
    """Throughput as us per record (wall, whole cluster) and that over the calibration's us per op."""
    us = 1e6 / records_per_s if records_per_s else None
    return {"us_per_record": us, "us_per_record_vs_calibration": baseline.ratio(us, base["cpu"]["us_per_op_best"])}


def warm_cluster(flink_settings: Settings, settings: Settings, a, out_dir: Path) -> dict:
    """Repeated small discard jobs until consecutive ones agree: how long the cluster needs to warm."""
    path = out_dir / f"telemetry-{a.warmup_records}-{a.devices}.jsonl"
    if not path.exists():
        write_input(path, a.warmup_records, a.devices)
    lines = count_lines(path)

    def window() -> float:
        r = run_once(flink_settings, settings, path, "discard", a.event_time, a.python_mode, None,
                     a.cassandra_batch, a.core.split(",")[0])
        print(f"    job {r['job_id'][:8]}: first task {r['seconds_job_start_to_first_task']:.1f} s and end "
              f"{r['seconds_job_start_to_end']:.1f} s after job start (Flink REST), wall incl. submit "
              f"{r['seconds_wall_incl_submit']} s", file=sys.stderr, flush=True)
        return lines / r["seconds_all_tasks"]

    print(f"warm-up: discard jobs of {lines:,} records until three in a row agree within 10% (<= {a.warmup_max_s:.0f} s):",
          file=sys.stderr, flush=True)
    return baseline.warm_up(window, max_seconds=a.warmup_max_s, label="records/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--runs", default="discard,lake,cassandra,all")
    p.add_argument("--event-time", default="payload", choices=("payload",))
    p.add_argument("--python-mode", default="thread", choices=("thread", "process"))
    p.add_argument("--shared-cluster", action="store_true",
                   help="use the stack's Flink cluster (its slots may be taken by the running jobs); by "
                        "default a private cluster is started on --rest-port and stopped afterwards")
    p.add_argument("--rest-port", type=int, default=28081)
    p.add_argument("--cassandra-batch", type=int, default=64, help="rows per UNLOGGED batch (1 = none)")
    p.add_argument("--core", default="java",
                   help="telemetry-core implementation(s), comma-separated: java (the job's default), python")
    p.add_argument("--warmup-records", type=int, default=50_000, help="records per warm-up job")
    p.add_argument("--warmup-max-s", type=float, default=180.0, help="warm-up cap (0: no warm-up)")
    p.add_argument("--baseline-messages", type=int, default=20_000, help="raw broker baseline size (0: CPU only)")
    a = p.parse_args()
    cores = a.core.split(",")
    if not set(cores) <= {"java", "python"}:
        p.error(f"--core: java and/or python, got {a.core!r}")
    settings = Settings.from_env()
    # Same run, same machine state, before the bench's own cluster loads the machine.
    base = baseline.measure(settings, broker=a.baseline_messages > 0, broker_messages=a.baseline_messages)
    cluster = None
    if not a.shared_cluster:
        # Same config and jars, own var dir and ports: the stack's jobs keep their slots.
        from devtools.stack.process import wait_until

        own = settings.replace(var_dir=settings.var_dir / "bench" / "cluster", flink_rest_port=a.rest_port)
        cluster = flink.FlinkComponent(own)
        t0 = time.monotonic()
        cluster.prepare()
        cluster.start()
        wait_until(cluster.healthy, what="bench Flink cluster", timeout=cluster.start_timeout, process=cluster.process)
        print(f"private Flink cluster on :{a.rest_port} up in {time.monotonic() - t0:.1f} s", flush=True)
        flink_settings = own
    else:
        flink_settings = settings
    out_dir = settings.var_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / f"telemetry-{a.records}-{a.devices}.jsonl"
    if not input_path.exists():
        write_input(input_path, a.records, a.devices)
    lines = count_lines(input_path)
    warm = warm_cluster(flink_settings, settings, a, out_dir) if a.warmup_max_s > 0 else None
    keyspace = None
    results = []
    for sinks in a.runs.split(","):
        if sinks in ("cassandra", "all") and keyspace is None:
            keyspace = f"bench_{int(time.time())}"
            from fleet.infra.migrations import apply_migrations

            apply_migrations(settings, keyspace=keyspace)
        for core in cores:
            r = run_once(flink_settings, settings, input_path, sinks, a.event_time, a.python_mode, keyspace,
                         a.cassandra_batch, core)
            r.update(sinks=sinks, core=core, cassandra_batch=a.cassandra_batch, records=lines, event_time=a.event_time,
                     python_mode=a.python_mode, records_per_s=round(lines / r["seconds_all_tasks"]),
                     parallelism=flink_settings.flink_parallelism, load_avg_1m=os.getloadavg()[0],
                     cluster="private" if cluster else "shared", at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            r.update(ratios=record_ratios(r["records_per_s"], base), baseline=base, warmup=warm)
            results.append(r)
            print(f"{sinks:<10} {core:<6} batch={a.cassandra_batch:<3} {a.python_mode:<7} {lines} records in "
                  f"{r['seconds_all_tasks']:.1f} s -> {r['records_per_s']} records/s (wall incl. submit "
                  f"{r['seconds_wall_incl_submit']} s, lake {r['lake_files']} files / {r['lake_mb']} MB, "
                  f"load {r['load_avg_1m']:.1f})", flush=True)
            ratio = baseline.with_ratio(r['ratios']['us_per_record'], base['cpu']['us_per_op_best'], '.1f', ' us/record')
            print(f"{'':<10} as ratio: {ratio} "
                  f"(calibration {base['cpu']['us_per_op_best']:.1f} us/op)", flush=True)
            with open(out_dir / "telemetry.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
    if warm:
        print(f"warm-up of the {'freshly started private' if cluster else 'shared'} cluster: "
              f"{'stable' if warm['stable'] else 'NOT stable'} after {warm['seconds']:.0f} s "
              f"({len(warm['windows'])} discard jobs, {warm['span']} consecutive within {warm['tolerance']:.0%})", flush=True)
    if cluster is not None:
        cluster.stop()
    if keyspace:
        from fleet.infra.cassandra import open_session

        session = open_session(settings)
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        session.cluster.shutdown()


if __name__ == "__main__":
    main()
