"""Bring the local stack up and down: Mosquitto, Kafka, Cassandra, Flink, then bridge and API.

Infrastructure starts in parallel (each is a separate process) and is then waited on in order;
each component's ``post_start`` (topics, migrations) runs once it is healthy. Everything is
idempotent: ``up`` on a running stack only checks it.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from devtools.stack.process import StackError, wait_until
from fleet.config import Settings

# name -> "module:Class"; imported lazily so `fleet stack status` works on a partial install.
INFRA = {
    "mosquitto": "devtools.stack.mosquitto:MosquittoComponent",
    "kafka": "devtools.stack.kafka:KafkaComponent",
    "cassandra": "devtools.stack.cassandra:CassandraComponent",
    "flink": "devtools.stack.flink:FlinkComponent",
}
APPS = {
    "bridge": "devtools.stack.apps:BridgeComponent",
    "api": "devtools.stack.apps:ApiComponent",
}
ALL = {**INFRA, **APPS}

# Rough resident memory each part needs (MiB), to refuse early on a machine that is too small.
MEMORY_MIB = {"mosquitto": 50, "kafka": 1000, "cassandra": 1800, "flink": 3500, "bridge": 150, "api": 150}


def load(name: str, settings: Settings):
    try:
        target = ALL[name]
    except KeyError:
        raise StackError(f"unknown component {name!r}; known: {', '.join(ALL)}") from None
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(settings)


def available_memory_mib() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 30


@dataclass
class Progress:
    """One line per step; on a terminal, a live elapsed-seconds counter."""

    # Resolved when a Progress is made, not when this module is imported: sys.stderr may be
    # swapped in between (pytest's capture, a redirected CLI), and an old one may be closed.
    out: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        self.tty = self.out.isatty()
        self._last_print = 0.0

    def step(self, name: str, what: str) -> Callable[[float], None]:
        label = f"  {name:<10} {what}"
        self.out.write(label + ("" if self.tty else "\n"))
        self.out.flush()
        self._last_print = time.monotonic()

        def tick(elapsed: float) -> None:
            if self.tty:
                self.out.write(f"\r{label} ... {elapsed:4.0f}s")
                self.out.flush()
            elif time.monotonic() - self._last_print > 15:
                self.out.write(f"{label} ... still waiting ({elapsed:.0f}s)\n")
                self.out.flush()
                self._last_print = time.monotonic()

        return tick

    def done(self, name: str, what: str, seconds: float) -> None:
        line = f"  {name:<10} {what} ({seconds:.1f}s)"
        self.out.write(("\r" + line + " " * 10 + "\n") if self.tty else line + "\n")
        self.out.flush()


def up(settings: Settings, names: list[str] | None = None, progress: Progress | None = None) -> list:
    names = names or list(INFRA)
    progress = progress or Progress()
    components = [load(n, settings) for n in names]
    pending = [c for c in components if not (c.is_running() and _safe_healthy(c))]
    need = sum(MEMORY_MIB.get(c.name, 100) for c in pending)
    if need > available_memory_mib():
        raise StackError(f"not enough memory: starting {', '.join(c.name for c in pending)} needs about "
                         f"{need} MiB, only {available_memory_mib()} MiB available")
    for c in components:
        if c in pending:
            t0 = time.monotonic()
            progress.step(c.name, "preparing")
            c.prepare()
            progress.done(c.name, "prepared", time.monotonic() - t0)
    # Infrastructure starts in parallel; the platform's own processes only once it is healthy
    # (the bridge and the API need Kafka, Cassandra and the broker at start-up).
    for phase in (INFRA, APPS):
        group = [c for c in components if _base_name(c.name) in phase]
        started = {}
        for c in group:
            if c in pending:
                c.start()
                started[c.name] = time.monotonic()
        for c in group:
            t0 = started.get(c.name, time.monotonic())
            if c in pending:
                tick = progress.step(c.name, "starting")
                wait_until(c.healthy, what=f"{c.name} start-up", timeout=c.start_timeout,
                           process=getattr(c, "process", None), on_tick=tick)
            c.post_start()
            progress.done(c.name, "ready" if c in pending else "already running", time.monotonic() - t0)
    return components


def _base_name(name: str) -> str:
    """'bridge-1' -> 'bridge': extra instances belong to their component's phase."""
    return name.split("-", 1)[0]


def _safe_healthy(component) -> bool:
    try:
        return bool(component.healthy())
    except Exception:
        return False


def down(settings: Settings, names: list[str] | None = None, wipe: bool = False,
         progress: Progress | None = None) -> None:
    import shutil

    progress = progress or Progress()
    names = names or list(ALL)
    # Reverse dependency order: apps first, then Flink, Cassandra, Kafka, Mosquitto.
    for name in reversed([n for n in ALL if n in names]):
        try:
            component = load(name, settings)
        except (ImportError, StackError):
            continue
        if component.is_running():
            t0 = time.monotonic()
            progress.step(name, "stopping")
            component.stop()
            progress.done(name, "stopped", time.monotonic() - t0)
    if wipe:
        for sub in (settings.data_dir, settings.run_dir, settings.lake_path, settings.log_dir):
            shutil.rmtree(sub, ignore_errors=True)
        progress.out.write(f"  wiped data, logs and lake under {settings.var_dir} (jars and PKI kept)\n")


def status(settings: Settings) -> list[dict]:
    rows = []
    for name in ALL:
        try:
            component = load(name, settings)
        except ImportError as exc:
            rows.append({"name": name, "state": f"not installed ({exc})", "endpoints": {}, "logs": []})
            continue
        running = component.is_running()
        healthy = running and _safe_healthy(component)
        state = ("healthy" if healthy else "starting/unhealthy") if running else "stopped"
        row = {"name": name, "state": state, "endpoints": component.endpoints(),
               "logs": [str(p) for p in component.log_files()]}
        if name == "flink" and healthy:
            row["jobs"] = job_states(settings)
        rows.append(row)
    return rows


def expected_jobs() -> list[str]:
    """The jobs the platform runs: one package per job, jobs/<name>/job.py."""
    from fleet.infra.flink_jobs import available_jobs

    return available_jobs()


def job_states(settings: Settings) -> dict[str, str]:
    """Each expected job's state on the cluster: RUNNING, another Flink state, or "NOT RUNNING"
    (a healthy cluster with no job, e.g. after a JobManager crash, is not a healthy platform)."""
    from devtools.stack import flink

    try:
        known = flink.list_jobs(settings)
    except Exception as exc:  # the REST API answered health but not this: say so, don't crash
        return {name: f"unknown ({exc})" for name in expected_jobs()}
    states = {}
    for name in expected_jobs():
        mine = [j.get("state", "?") for j in known if j.get("name") == name]
        states[name] = "RUNNING" if "RUNNING" in mine else (mine[-1] if mine else "NOT RUNNING")
    return states


def log_files(settings: Settings, name: str | None) -> list[Path]:
    names = [name] if name else list(ALL)
    files: list[Path] = []
    for n in names:
        try:
            files.extend(load(n, settings).log_files())
        except ImportError:
            continue
    return [f for f in files if f.exists()]


def print_endpoints(components, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    for c in components:
        for label, where in c.endpoints().items():
            out.write(f"  {c.name:<10} {label:<18} {where}\n")
        for log in c.log_files():
            out.write(f"  {c.name:<10} {'log':<18} {log}\n")
