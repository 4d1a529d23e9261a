"""A Flink 2.2 standalone cluster (one JobManager, one TaskManager) from the apache-flink pip package.

The pip package ships the runtime (``pyflink/bin``, ``lib``, ``opt``) but no connectors. ``prepare``
resolves the connector jars (devtools/stack/maven/flink/pom.xml) and the project's own Java
extension (java/flink-fleet), and builds a private ``lib/`` of symlinks (pip runtime + flink-python +
connectors) and a runtime conf dir (``flink-conf/config.yaml`` + this machine's paths and ports).
Both daemons run in the foreground under ``ManagedProcess``, so the pid files are ours.

Jobs are submitted with the real ``flink run --python`` CLI; everything else (list, cancel, stop
with savepoint) goes through the REST API, which answers in milliseconds instead of a JVM start.
The production part of that (archive, CLI arguments and environment, REST, stop-with-savepoint)
lives in fleet/infra/flink_jobs.py, behind ``fleet jobs``; this module adds the local stack's checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from devtools.stack import jars
from devtools.stack.flink_recovery import JobRecord, JobRecords, plan_recovery
from devtools.stack.process import ManagedProcess, StackError, ensure_port_free, run_checked, wait_until
from fleet.config import Settings
from fleet.infra import flink_jobs as deploy
from fleet.infra.flink_jobs import PROJECT_PACKAGES, TERMINAL_STATES, flatten, python_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REPO_CONF = PROJECT_ROOT / "flink-conf" / "config.yaml"
JAR_SET = "flink"
EXTENSION_DIR = PROJECT_ROOT / "java" / "flink-fleet"
__all__ = ["PROJECT_PACKAGES", "flatten", "python_path"]  # re-exported from fleet.infra.flink_jobs
# Files of the package's conf dir the scripts expect next to config.yaml.
CONF_FILES = ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml",
              "logback-console.xml")
RPC_PORT_OFFSET = 6123 - 8081  # JobManager RPC port follows the REST port (6123 for 8081)


@contextlib.contextmanager
def _stack_errors() -> Iterator[None]:
    """The launcher's callers handle StackError; fleet.infra.flink_jobs raises DeployError."""
    try:
        yield
    except deploy.DeployError as err:
        raise StackError(str(err)) from None


def pyflink_home() -> Path:
    with _stack_errors():
        return deploy.pyflink_home()


class FlinkLayout:
    """Where the local cluster's generated files live (everything under var/)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir / "flink"
        self.conf_dir = self.root / "conf"
        self.lib_dir = self.root / "lib"
        self.checkpoint_dir = self.root / "checkpoints"
        self.savepoint_dir = self.root / "savepoints"
        self.tmp_dir = self.root / "tmp"
        self.log_dir = settings.log_dir / "flink"
        self.pid_dir = settings.run_dir / "flink"
        # Every job that reached a terminal state (devtools/stack/flink_recovery.py reads it).
        self.archive_dir = self.root / "completed-jobs"
        self.jobs_file = self.pid_dir / "jobs.json"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.flink_rest_port}"

    def env(self) -> dict[str, str]:
        """Environment for the pip package's scripts (daemons and CLI)."""
        env = dict(os.environ)
        env.update({
            "FLINK_CONF_DIR": str(self.conf_dir),
            "FLINK_LIB_DIR": str(self.lib_dir),
            "FLINK_LOG_DIR": str(self.log_dir),
            "FLINK_PID_DIR": str(self.pid_dir),
            # The CLI runs the job's Python program to build the graph: our interpreter.
            "PYFLINK_CLIENT_EXECUTABLE": sys.executable,
            "PYTHONPATH": python_path(env.get("PYTHONPATH")),
        })
        return env


def runtime_overrides(settings: Settings, layout: FlinkLayout) -> dict[str, Any]:
    """Machine-specific keys appended to the project's config."""
    rest_port = settings.flink_rest_port
    return {
        # Java 17 needs the package's --add-opens list (copied so it matches the runtime version).
        "env.java.opts.all": _package_conf().get("env.java.opts.all", ""),
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": rest_port + RPC_PORT_OFFSET,
        "jobmanager.bind-host": "localhost",
        "taskmanager.bind-host": "localhost",
        "taskmanager.host": "localhost",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": rest_port,
        "metrics.reporter.prom.port": f"{settings.flink_metrics_port}-{settings.flink_metrics_port + 9}",
        "parallelism.default": settings.flink_parallelism,
        "execution.checkpointing.dir": layout.checkpoint_dir.as_uri(),
        "execution.checkpointing.savepoint-dir": layout.savepoint_dir.as_uri(),
        "jobmanager.archive.fs.dir": layout.archive_dir.as_uri(),
        "io.tmp.dirs": str(layout.tmp_dir),
        # Workers and the client must use the interpreter that has the project and PyFlink.
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
    }


def _package_conf() -> dict[str, Any]:
    return flatten(yaml.safe_load((pyflink_home() / "conf" / "config.yaml").read_text()) or {})


def render_config(settings: Settings, layout: FlinkLayout) -> str:
    project = flatten(yaml.safe_load(REPO_CONF.read_text()) or {})
    merged = {**project, **runtime_overrides(settings, layout)}
    header = (f"# Generated by devtools/stack/flink.py from {REPO_CONF.relative_to(PROJECT_ROOT)} plus this "
              "machine's paths and ports; edits are overwritten.\n")
    return header + yaml.safe_dump(merged, default_flow_style=False, sort_keys=True, width=1 << 16)


def build_lib_dir(layout: FlinkLayout, extra_jar_dirs: Sequence[Path]) -> None:
    """lib/ = the pip runtime's lib + flink-python (thread mode wants it on the parent class path)
    + connector jars. Symlinks, rebuilt on every prepare, so a changed jar set never lingers."""
    home = pyflink_home()
    jars_in = sorted((home / "lib").glob("*.jar")) + sorted((home / "opt").glob("flink-python*.jar"))
    for d in extra_jar_dirs:
        jars_in += sorted(d.glob("*.jar"))
    staging = layout.root / ".lib.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for jar in jars_in:
        (staging / jar.name).symlink_to(jar)
    shutil.rmtree(layout.lib_dir, ignore_errors=True)
    staging.rename(layout.lib_dir)


def lib_fingerprint(layout: FlinkLayout) -> str:
    """Names, sizes and times of the jars lib/ points at: changes when a jar is rebuilt."""
    digest = hashlib.sha256()
    for jar in sorted(layout.lib_dir.glob("*.jar")):
        st = jar.stat()
        digest.update(f"{jar.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prepare_lib(settings: Settings) -> Path:
    """Resolve the connector jars, build java/flink-fleet and assemble the cluster's lib/ (also
    what local pipeline tests put on their JVM's class path via FLINK_LIB_DIR)."""
    layout = FlinkLayout(settings)
    connectors = jars.resolve(JAR_SET, settings.jar_dir)
    build_lib_dir(layout, [connectors, *build_extension(settings)])
    return layout.lib_dir


class FlinkComponent:
    name = "flink"
    start_timeout = 120.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.layout = FlinkLayout(settings)
        bin_dir = pyflink_home() / "bin"
        self.jobmanager = ManagedProcess(
            name="flink-jobmanager", argv=[str(bin_dir / "jobmanager.sh"), "start-foreground"],
            log_file=settings.log_dir / "flink-jobmanager.log", pid_file=settings.run_dir / "flink-jobmanager.pid",
            env=self.layout.env(), cwd=self.layout.root,
        )
        self.taskmanager = ManagedProcess(
            name="flink-taskmanager", argv=[str(bin_dir / "taskmanager.sh"), "start-foreground"],
            log_file=settings.log_dir / "flink-taskmanager.log", pid_file=settings.run_dir / "flink-taskmanager.pid",
            env=self.layout.env(), cwd=self.layout.root,
        )
        # The launcher watches this one for an early exit during start-up.
        self.process = self.jobmanager
        self.jobmanager_started = False  # by this start(): its jobs are gone, post_start restores them

    def prepare(self) -> None:
        prepare_lib(self.settings)
        for d in (self.layout.conf_dir, self.layout.checkpoint_dir, self.layout.savepoint_dir,
                  self.layout.tmp_dir, self.layout.log_dir, self.layout.pid_dir, self.layout.archive_dir):
            d.mkdir(parents=True, exist_ok=True)
        package_conf = pyflink_home() / "conf"
        for name in CONF_FILES:
            shutil.copyfile(package_conf / name, self.layout.conf_dir / name)
        (self.layout.conf_dir / "config.yaml").write_text(render_config(self.settings, self.layout))

    def start(self) -> None:
        (self.layout.pid_dir / "cluster.lib").write_text(lib_fingerprint(self.layout))
        self.jobmanager_started = not self.jobmanager.is_running()
        if self.jobmanager_started and self.taskmanager.is_running():
            # The JobManager died under a running TaskManager: its orphaned tasks would keep
            # writing for a heartbeat timeout beside the restored jobs. A fresh one instead.
            self.taskmanager.stop(timeout=30)
        if self.jobmanager_started:
            ensure_port_free("127.0.0.1", self.settings.flink_rest_port, "the Flink JobManager (REST)")
            ensure_port_free("127.0.0.1", self.settings.flink_rest_port + RPC_PORT_OFFSET, "the Flink JobManager (RPC)")
            self.jobmanager.start()
        if not self.taskmanager.is_running():
            self.taskmanager.start()

    def healthy(self) -> bool:
        try:
            overview = rest(self.settings, "GET", "/overview", timeout=2)
        except StackError:
            return False
        return overview.get("taskmanagers", 0) >= 1 and overview.get("slots-total", 0) >= 1

    def post_start(self) -> None:
        if self.jobmanager_started:
            restore_jobs(self.settings)

    def stop(self) -> None:
        # TaskManager first, so the JobManager does not start restarting jobs on a lost TM.
        self.taskmanager.stop(timeout=30)
        self.jobmanager.stop(timeout=30)

    def is_running(self) -> bool:
        return self.jobmanager.is_running() or self.taskmanager.is_running()

    def endpoints(self) -> dict[str, str]:
        p = self.settings.flink_metrics_port
        return {"web UI / REST": self.layout.rest_url,
                "metrics (Prometheus)": f"http://127.0.0.1:{p}-{p + 9}/metrics",
                "checkpoints": str(self.layout.checkpoint_dir),
                "savepoints": str(self.layout.savepoint_dir)}

    def log_files(self) -> list[Path]:
        own = [self.jobmanager.log_file, self.taskmanager.log_file]
        return own + sorted(self.layout.log_dir.glob("*.log"))

    # --- fault injection (tests) -------------------------------------------------------------

    def kill_taskmanager(self) -> None:
        """kill -9 the TaskManager, as a crash would; running jobs fail over and wait for slots."""
        self.taskmanager.kill()
        wait_until(lambda: not self.taskmanager.is_running(), what="TaskManager exit", timeout=10)

    def restart_taskmanager(self, timeout: float = 60.0) -> None:
        """Start a TaskManager (after a kill or stop) and wait until a *new* one has registered."""
        before = set(taskmanager_ids(self.settings))
        self.taskmanager.start()
        wait_until(lambda: bool(set(taskmanager_ids(self.settings)) - before),
                   what="TaskManager registration", timeout=timeout, process=self.taskmanager)

    def recycle_taskmanager(self) -> None:
        """Graceful stop + start: a fresh Python interpreter for the next job (see submit_job)."""
        self.taskmanager.stop(timeout=30)
        self.restart_taskmanager()


# --- the project's Java extension -----------------------------------------------------------------

def build_extension(settings: Settings) -> list[Path]:
    """The directory with java/flink-fleet's jar and its runtime dependencies (the Cassandra
    driver), built with Maven once and again only when its POM or sources change."""
    if not EXTENSION_DIR.exists():
        return []
    sources = sorted([EXTENSION_DIR / "pom.xml", *(EXTENSION_DIR / "src").rglob("*.java")])
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(EXTENSION_DIR)).encode() + b"\0" + path.read_bytes())
    target = settings.jar_dir / EXTENSION_DIR.name
    stamp = target / ".sources.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest.hexdigest() and (target / "flink-fleet.jar").exists():
        return [target]
    if shutil.which("mvn") is None:
        raise StackError("Maven ('mvn') is needed once to build java/flink-fleet; install the 'maven' package")
    build_dir = settings.jar_dir / f".build-{EXTENSION_DIR.name}"
    staging = settings.jar_dir / f".{EXTENSION_DIR.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run_checked(["mvn", "-q", "-B", "-f", str(EXTENSION_DIR / "pom.xml"), f"-Dfleet.build.dir={build_dir}",
                 "-DskipTests", "package", "dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={staging}"],
                what="building java/flink-fleet (the project's Flink sinks)", timeout=1800)
    shutil.copyfile(build_dir / "flink-fleet.jar", staging / "flink-fleet.jar")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    stamp.write_text(digest.hexdigest())
    return [target]


# --- REST and CLI ----------------------------------------------------------------------------------

def local_cluster(settings: Settings) -> deploy.Cluster:
    return deploy.Cluster.local(settings.flink_rest_port)


def rest(settings: Settings, method: str, path: str, body: dict | None = None, timeout: float = 10) -> Any:
    with _stack_errors():
        return deploy.rest(local_cluster(settings), method, path, body, timeout)


def taskmanager_ids(settings: Settings) -> list[str]:
    try:
        return [tm["id"] for tm in rest(settings, "GET", "/taskmanagers", timeout=2).get("taskmanagers", [])]
    except StackError:
        return []


def submit_job(settings: Settings, job_py: Path | str, args: Sequence[str] = (), detached: bool = True,
               savepoint: str | None = None, allow_non_restored: bool = False,
               parallelism: int | None = None, timeout: float = 300) -> str:
    """``flink run --python job_py [args]`` against the local cluster; returns the job id.

    The CLI runs the job's ``main()`` with our interpreter (PYFLINK_CLIENT_EXECUTABLE) and the
    stack's FLEET_* environment, so the job builds its Settings exactly like every other process.
    """
    layout = FlinkLayout(settings)
    if not (layout.conf_dir / "config.yaml").exists():
        raise StackError("the Flink runtime config is missing; run 'fleet stack up' first")
    job_py = Path(job_py).resolve()
    started_with = layout.pid_dir / "cluster.lib"
    if started_with.exists() and started_with.read_text() != lib_fingerprint(layout):
        raise StackError("the Flink cluster runs older jars than var/data/flink/lib (java/flink-fleet or the "
                         "connector set was rebuilt): restart it with 'fleet stack down flink && fleet stack up flink'")
    code = _ensure_fresh_python(settings, layout)
    with _stack_errors():
        argv = deploy.run_argv(local_cluster(settings), job_py, package_project(layout), savepoint=savepoint,
                               allow_non_restored=allow_non_restored, parallelism=parallelism,
                               detached=detached, job_args=args)
        env = deploy.client_env(settings.to_env(), layout.conf_dir, layout.lib_dir, layout.log_dir,
                                base=layout.env())
        job_id = deploy.submit(argv, env, f"submitting {job_py.parent.name}/{job_py.name} to Flink", timeout=timeout)
    code.record()
    # The job's name is its package's (every jobs/<name>/job.py executes as <name>).
    JobRecords(layout.jobs_file).remember(JobRecord(job_py.parent.name, str(job_py), list(args), parallelism, job_id))
    return job_id


def project_code_hash() -> str:
    digest = hashlib.sha256()
    for path, name in deploy.archive_members(PROJECT_ROOT):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _CodeStamp:
    """Which project code the running TaskManager's embedded interpreter has imported."""

    def __init__(self, path: Path, pid: int | None, digest: str):
        self.path, self.pid, self.digest = path, pid, digest

    def record(self) -> None:
        if self.pid:
            self.path.write_text(f"{self.pid} {self.digest}\n")


def _ensure_fresh_python(settings: Settings, layout: FlinkLayout) -> _CodeStamp:
    """In thread mode every job's Python runs in ONE interpreter per TaskManager process, and a
    module imported by an earlier job stays in sys.modules: a job submitted after its code
    changed would silently run the old code. So when the project's code differs from what this
    TaskManager has already run, the local stack's TaskManager is restarted first (running jobs
    fail over to their latest checkpoint). A real deployment runs one cluster per job version
    (application mode) or restarts TaskManagers on upgrade."""
    component = FlinkComponent(settings)
    digest = project_code_hash()
    stamp_path = layout.pid_dir / "taskmanager.code"
    pid = component.taskmanager.pid()
    try:
        seen_pid, seen_digest = stamp_path.read_text().split()
    except (OSError, ValueError):
        seen_pid, seen_digest = "", ""
    if pid and seen_pid == str(pid) and seen_digest != digest:
        sys.stderr.write("  flink      project code changed since this TaskManager ran it: restarting the "
                         "TaskManager so the job gets a fresh Python interpreter\n")
        component.recycle_taskmanager()
        pid = component.taskmanager.pid()
    layout.pid_dir.mkdir(parents=True, exist_ok=True)
    return _CodeStamp(stamp_path, pid, digest)


def package_project(layout: FlinkLayout) -> Path:
    """A zip of the project's packages for --pyFiles: a shipped directory lands on PYTHONPATH
    itself (its modules become top-level), a zip keeps ``fleet.`` and ``jobs.`` importable."""
    return deploy.build_archive(layout.root / "pyfiles" / "fleet-project.zip", PROJECT_ROOT)


def list_jobs(settings: Settings) -> list[dict[str, Any]]:
    """Jobs the cluster knows: dicts with id, name, state, start-time, ... (REST /jobs/overview)."""
    jobs = rest(settings, "GET", "/jobs/overview").get("jobs", [])
    for job in jobs:
        job["id"] = job.get("jid")
    return jobs


def job_details(settings: Settings, job_id: str) -> dict[str, Any]:
    return rest(settings, "GET", f"/jobs/{job_id}")


def wait_for_job_state(settings: Settings, job_id: str, states: Sequence[str], timeout: float = 120,
                       all_tasks_running: bool = False, interval: float = 0.5,
                       fail_on_restart: bool = False) -> str:
    """Wait until the job reaches one of ``states`` (and, optionally, every task runs).

    A job that ends FAILED (when not waited for) raises at once with its root exception; with
    ``fail_on_restart`` so does one that is restarting (the restart strategy retries for ever).
    """
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        try:
            details = job_details(settings, job_id)
        except StackError:
            time.sleep(interval)
            continue
        state = details.get("state", "")
        if (state == "FAILED" and "FAILED" not in states) or (fail_on_restart and state == "RESTARTING"):
            raise StackError(f"job {job_id} {state}: {_root_exception(settings, job_id)}")
        if state in states:
            vertices = details.get("vertices", [])
            if not all_tasks_running or (vertices and all(v.get("status") == "RUNNING" for v in vertices)):
                return state
        time.sleep(interval)
    raise StackError(f"job {job_id} did not reach {'/'.join(states)} within {timeout:.0f}s (last state {state}); "
                     f"last exception: {_root_exception(settings, job_id)[:1500]}")


def _root_exception(settings: Settings, job_id: str) -> str:
    try:
        exc = rest(settings, "GET", f"/jobs/{job_id}/exceptions?maxExceptions=1")
        entries = (exc.get("exceptionHistory") or {}).get("entries") or []
        return (entries[0].get("stacktrace", "") if entries else exc.get("root-exception") or "")[:3000]
    except StackError as err:
        return str(err)


def cancel_job(settings: Settings, job_id: str, wait: bool = True) -> None:
    JobRecords(FlinkLayout(settings).jobs_file).forget_job_id(job_id)  # ended on purpose: not restored
    rest(settings, "PATCH", f"/jobs/{job_id}?mode=cancel")
    if wait:
        wait_for_job_state(settings, job_id, ["CANCELED", "FINISHED", "FAILED"], timeout=60)


def stop_with_savepoint(settings: Settings, job_id: str, target_dir: Path | None = None,
                        drain: bool = False, timeout: float = 300) -> str:
    """Stop the job with a savepoint (Kafka offsets, state, committed lake files); returns its path."""
    target = target_dir or FlinkLayout(settings).savepoint_dir
    JobRecords(FlinkLayout(settings).jobs_file).forget_job_id(job_id)
    with _stack_errors():
        return deploy.stop_with_savepoint(local_cluster(settings), job_id, target.as_uri(), drain, timeout)


def _latest_checkpoint(settings: Settings, job_id: str, kind: str) -> dict[str, Any] | None:
    """The job's latest ``kind`` ("restored", "completed") checkpoint record from REST, or None."""
    try:
        latest: dict[str, Any] | None = rest(settings, "GET", f"/jobs/{job_id}/checkpoints").get("latest", {}).get(kind)
        return latest
    except StackError:
        return None


def wait_for_restore(settings: Settings, job_id: str, after_ms: int, timeout: float = 180) -> dict[str, Any]:
    """Wait until the job has restored from a checkpoint/savepoint after ``after_ms`` (epoch ms)
    and runs every task again; returns the REST 'restored' record (id, external_path, ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        restored = _latest_checkpoint(settings, job_id, "restored")
        if restored and restored.get("restore_timestamp", 0) >= after_ms:
            wait_for_job_state(settings, job_id, ["RUNNING"], all_tasks_running=True,
                               timeout=max(1.0, deadline - time.monotonic()))
            return restored
        time.sleep(0.5)
    raise StackError(f"job {job_id} did not restore within {timeout:.0f}s; "
                     f"last exception: {_root_exception(settings, job_id)[:1500]}")


def wait_for_checkpoint_after(settings: Settings, job_id: str, after_ms: int, timeout: float = 60) -> dict[str, Any]:
    """Wait until the job has completed a checkpoint after ``after_ms`` (epoch ms); its REST record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        completed = _latest_checkpoint(settings, job_id, "completed")
        if completed and completed.get("latest_ack_timestamp", 0) >= after_ms:
            return completed
        time.sleep(0.5)
    raise StackError(f"job {job_id} completed no checkpoint within {timeout:.0f}s")


def kill_taskmanager(settings: Settings, restart: bool = True) -> None:
    """kill -9 the TaskManager (fault tests); by default start a fresh one right away."""
    component = FlinkComponent(settings)
    component.kill_taskmanager()
    if restart:
        component.restart_taskmanager()


def restart_taskmanager(settings: Settings) -> None:
    FlinkComponent(settings).restart_taskmanager()


def restore_jobs(settings: Settings, out: TextIO | None = None) -> list[str]:
    """After a JobManager start: resubmit every recorded job that no longer runs, from its
    latest retained checkpoint (flink_recovery's module docstring); the new job ids. A job that
    cannot be restored is reported and left for the operator, never silently dropped: `fleet
    stack status` then shows it missing."""
    out = out or sys.stderr
    layout = FlinkLayout(settings)
    records = JobRecords(layout.jobs_file)
    live = {j["name"] for j in list_jobs(settings) if j["state"] not in TERMINAL_STATES}
    plan = plan_recovery(records.load(), live, layout.archive_dir, layout.checkpoint_dir)
    for record in plan.ended:
        records.forget(record.name)
    restored = []
    for record, checkpoint in plan.restore:
        source = f"checkpoint {checkpoint.name} of {record.job_id}" if checkpoint else "no checkpoint: from the start"
        out.write(f"  flink      restoring job {record.name} ({source}) ...\n")
        out.flush()
        try:
            job_id = submit_job(settings, record.script, record.args, savepoint=str(checkpoint) if checkpoint else None,
                                parallelism=record.parallelism)
            wait_for_job_state(settings, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
        except StackError as err:
            out.write(f"  flink      job {record.name} NOT restored: {str(err)[:1500]}\n"
                      f"             restore it by hand: fleet jobs submit {record.name} --from-savepoint "
                      f"{checkpoint or '<path>'}\n")
            continue
        out.write(f"  flink      restored job {record.name} as {job_id}\n")
        restored.append(job_id)
    return restored
