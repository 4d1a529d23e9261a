"""Deploy the platform's Flink jobs to any Flink cluster: submit, stop with a savepoint, list.

This is the production path behind ``fleet jobs`` (and what the local launcher's
devtools/stack/flink.py submits with). A job is submitted with the real ``flink run --python`` CLI
of the installed PyFlink, with everything the job needs on the client side:

- the project's packages (``fleet``, ``jobs``) as one zip for ``--pyFiles`` (shipping the folders
  would put their modules at the top level);
- a Flink configuration that works on Java 17 (flink-conf/config.yaml carries the --add-opens
  list) pointing at the target cluster's REST address;
- the connector jars (``FLINK_LIB_DIR``), needed by the client to build the job graph;
- this interpreter as the client's and workers' Python, and the ``FLEET_*`` environment, so the
  job builds its Settings (absolute lake path included) like every other process.

After submitting, the job is checked over REST: RUNNING, with exactly-once checkpointing on. A
job that a bare cluster accepts with its defaults (checkpointing off) loses data silently.

Everything else (list, stop-with-savepoint) goes through the REST API. Plain Python; nothing here
imports the local launcher (devtools/stack/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from fleet.infra.errors import InfraError

if TYPE_CHECKING:
    from fleet.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = PROJECT_ROOT / "jobs"
# Each job is a package jobs/<name>/ whose main() is in this module.
JOB_ENTRY = "job.py"
REPO_CONF = PROJECT_ROOT / "flink-conf" / "config.yaml"
# Packages shipped with every job (--pyFiles), so a cluster without the project installed works.
PROJECT_PACKAGES = ("fleet", "jobs")
# Files of PyFlink's conf dir the CLI scripts expect next to config.yaml.
CLIENT_CONF_FILES = ("log4j-cli.properties", "log4j-console.properties", "log4j.properties")
# Flink reports "checkpointing off" as an interval of Long.MAX_VALUE ms.
CHECKPOINTING_OFF_MS = 2 ** 63 - 1
TERMINAL_STATES = ("FINISHED", "CANCELED", "FAILED")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class DeployError(InfraError):
    """Something a data engineer must fix; the message says what."""


@dataclass(frozen=True)
class Cluster:
    """A Flink cluster by its REST endpoint."""

    url: str

    @classmethod
    def parse(cls, url: str) -> Cluster:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeployError(f"--cluster wants a Flink REST URL like http://jobmanager:8081, got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 8081)
        return cls(f"{parts.scheme}://{parts.hostname}:{port}")

    @classmethod
    def local(cls, rest_port: int) -> Cluster:
        return cls(f"http://127.0.0.1:{rest_port}")

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 8081


# --- the job and its Python archive -------------------------------------------------------------

def available_jobs() -> list[str]:
    """The jobs the platform runs: one package per job, jobs/<name>/ with its entry point job.py."""
    return sorted(p.parent.name for p in JOBS_DIR.glob(f"*/{JOB_ENTRY}"))


def job_script(name: str) -> Path:
    """The file ``flink run --python`` runs for job ``name``: jobs/<name>/job.py."""
    script = JOBS_DIR / name / JOB_ENTRY
    if not script.is_file():
        raise DeployError(f"no job {name!r}; the platform's jobs are: {', '.join(available_jobs())}")
    return script


def archive_members(root: Path = PROJECT_ROOT) -> list[tuple[Path, str]]:
    """(file, name in the zip) for every module of the project's packages, without caches."""
    members = []
    for package in PROJECT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                members.append((path, path.relative_to(root).as_posix()))
    return members


def build_archive(target: Path, root: Path = PROJECT_ROOT) -> Path:
    """The zip for --pyFiles: keeps ``fleet.`` and ``jobs.`` importable as packages. Written
    beside and renamed, so a job being submitted never reads a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, name in archive_members(root):
            zf.write(path, name)
    tmp.replace(target)
    return target


# --- the client side: PyFlink, configuration, environment ---------------------------------------

def pyflink_home() -> Path:
    try:
        import pyflink
    except ImportError:
        raise DeployError("PyFlink is not installed: pip install -e '.[flink]' (apache-flink==2.2.1)") from None
    return Path(pyflink.__file__).resolve().parent


def python_path(existing: str | None = None, first: Sequence[str] = ()) -> str:
    """PYTHONPATH for Python run by Flink (client and thread-mode workers).

    Thread mode embeds CPython (PEMJA) from the *base* installation of python.executable, which
    does not activate a virtualenv: without the venv's site-packages the TaskManager fails with
    "No module named 'pemja'". Directories only; .pth files are not read from PYTHONPATH.
    """
    parts = [p for p in first if p]
    parts += [p for p in site.getsitepackages() if Path(p).is_dir() and p not in parts]
    if existing:
        parts += [p for p in existing.split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'a.c': 2} -> {'a.b': 1, 'a.c': 2} (Flink reads both forms)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def project_conf() -> dict[str, Any]:
    import yaml

    return flatten(yaml.safe_load(REPO_CONF.read_text()) or {})


def client_conf(cluster: Cluster, worker_python: str) -> dict[str, Any]:
    """flink-conf/config.yaml (checkpointing, Java 17 options) aimed at ``cluster``.

    The client's configuration travels with the job: exactly-once checkpointing and retained
    checkpoints come from here even when the cluster's own config leaves them unset.
    """
    return {**project_conf(),
            "rest.address": cluster.host,
            "rest.port": cluster.port,
            # The interpreter that builds the graph here, and the one the TaskManagers run.
            "python.client.executable": sys.executable,
            "python.executable": worker_python}


def write_client_conf_dir(target: Path, conf: Mapping[str, Any]) -> Path:
    """A FLINK_CONF_DIR for the CLI: ``conf`` plus PyFlink's log4j files."""
    import yaml

    target.mkdir(parents=True, exist_ok=True)
    package_conf = pyflink_home() / "conf"
    for name in CLIENT_CONF_FILES:
        if (package_conf / name).exists():
            shutil.copyfile(package_conf / name, target / name)
    header = ("# Generated by fleet/infra/flink_jobs.py from flink-conf/config.yaml for one target cluster; "
              "edits are overwritten.\n")
    (target / "config.yaml").write_text(
        header + yaml.safe_dump(dict(conf), default_flow_style=False, sort_keys=True, width=1 << 16))
    return target


def find_lib_dir(default: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The connector jars the client needs: FLINK_LIB_DIR, else the local stack's lib/."""
    lib = Path(environ.get("FLINK_LIB_DIR") or default)
    if not any(lib.glob("*.jar")):
        raise DeployError(f"no Flink jars in {lib}: run 'fleet stack up flink' once (it assembles "
                          "var/data/flink/lib: PyFlink's lib, flink-python, the connectors of "
                          "devtools/stack/maven/flink/pom.xml and java/flink-fleet), or set FLINK_LIB_DIR")
    return lib


def lake_path_problem(fleet_env: Mapping[str, str]) -> str | None:
    """Why the job would write its lake somewhere useless, or None (same rule as the job's)."""
    from fleet.infra.job_config import configured_lake_path

    lake = configured_lake_path(fleet_env)
    if not lake or not PurePath(lake).is_absolute():
        return (f"the lake path {lake!r} is not absolute (relative paths resolve inside the job's "
                "extracted archive on the TaskManager); set FLEET_LAKE_DIR to an absolute path")
    return None


def client_env(fleet_env: Mapping[str, str], conf_dir: Path, lib_dir: Path, log_dir: Path,
               base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The CLI's environment: ours + the FLEET_* settings + where Flink's conf, jars and logs are."""
    env = dict(base)
    env.update(fleet_env)
    env.update({
        "FLINK_CONF_DIR": str(conf_dir),
        "FLINK_LIB_DIR": str(lib_dir),
        "FLINK_LOG_DIR": str(log_dir),
        # The CLI runs the job's main() to build the graph: with our interpreter (venv).
        "PYFLINK_CLIENT_EXECUTABLE": sys.executable,
        "PYTHONPATH": python_path(base.get("PYTHONPATH"), first=[str(PROJECT_ROOT)]),
    })
    return env


def run_argv(cluster: Cluster, job_py: Path, archive: Path, savepoint: str | None = None,
             allow_non_restored: bool = False, parallelism: int | None = None, detached: bool = True,
             job_args: Sequence[str] = ()) -> list[str]:
    argv = [str(pyflink_home() / "bin" / "flink"), "run", "--target", "remote",
            f"-Drest.address={cluster.host}", f"-Drest.port={cluster.port}"]
    if detached:
        argv.append("--detached")
    if savepoint:
        argv += ["--fromSavepoint", savepoint]
        if allow_non_restored:
            argv.append("--allowNonRestoredState")
    if parallelism:
        argv += ["--parallelism", str(parallelism)]
    return argv + ["--python", str(job_py), "--pyFiles", str(archive), *job_args]


def parse_job_id(output: str) -> str | None:
    match = re.search(r"JobID ([0-9a-f]{32})", output)
    return match.group(1) if match else None


def submit(argv: Sequence[str], env: Mapping[str, str], what: str, timeout: float = 300) -> str:
    """Run ``flink run``; the job id it printed, or a DeployError with the CLI's output."""
    try:
        proc = subprocess.run(list(argv), env=dict(env), cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise DeployError(f"{what}: no Flink CLI at {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what}: the Flink CLI did not finish within {timeout:.0f}s") from None
    output = proc.stdout + proc.stderr
    job_id = parse_job_id(output)
    if proc.returncode != 0 or not job_id:
        raise DeployError(f"{what} failed (exit {proc.returncode}); the Flink CLI said:\n{output[-4000:]}")
    return job_id


def client_dirs(settings: Settings) -> dict[str, Path]:
    """Where the client keeps what it generates (under FLEET_VAR_DIR/data/flink, like the stack)."""
    root = settings.data_dir / "flink"
    return {"lib": root / "lib", "archive": root / "pyfiles" / "fleet-project.zip",
            "client_conf": root / "client-conf", "log": settings.log_dir / "flink"}


def submit_to(settings: Settings, cluster: Cluster, job: str, savepoint: str | None = None,
              parallelism: int | None = None, worker_python: str | None = None,
              allow_non_restored: bool = False, job_args: Sequence[str] = (), timeout: float = 300) -> str:
    """Submit ``jobs/<job>/job.py`` to any cluster with a client conf rendered from
    flink-conf/config.yaml; the job id. (The local stack's own conf is used by
    devtools/stack/flink.py's submit_job, which also keeps its TaskManager's Python fresh.)"""
    fleet_env = settings.to_env()
    problem = lake_path_problem(fleet_env)
    if problem:
        raise DeployError(problem)
    dirs = client_dirs(settings)
    conf = client_conf(cluster, worker_python or sys.executable)
    conf_dir = write_client_conf_dir(dirs["client_conf"] / f"{cluster.host}_{cluster.port}", conf)
    lib_dir = find_lib_dir(dirs["lib"])
    dirs["log"].mkdir(parents=True, exist_ok=True)
    script = job_script(job)
    argv = run_argv(cluster, script, build_archive(dirs["archive"]), savepoint=savepoint,
                    allow_non_restored=allow_non_restored, parallelism=parallelism, job_args=job_args)
    env = client_env(fleet_env, conf_dir, lib_dir, dirs["log"])
    return submit(argv, env, f"submitting {script.relative_to(PROJECT_ROOT)} to {cluster.url}", timeout=timeout)


# --- REST ---------------------------------------------------------------------------------------

def rest(cluster: Cluster, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    url = f"{cluster.url}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:2000]
        raise DeployError(f"Flink REST {method} {path} answered {err.code}: {detail}") from None
    except OSError as err:
        raise DeployError(f"Flink REST {method} {path} unreachable at {url}: {err}") from None
    return json.loads(raw) if raw else {}


def poll(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.5) -> Any:
    """check() until it returns something truthy; DeployError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def list_jobs(cluster: Cluster) -> list[dict[str, Any]]:
    """REST /jobs/overview: dicts with jid, name, state, start-time, ..."""
    jobs: list[dict[str, Any]] = rest(cluster, "GET", "/jobs/overview").get("jobs", [])
    return jobs


def resolve_job(jobs: Sequence[Mapping[str, Any]], name_or_id: str) -> str:
    """The id of the one RUNNING job named ``name_or_id``, or ``name_or_id`` if it is a job id."""
    if JOB_ID.match(name_or_id):
        return name_or_id
    running: list[str] = [j["jid"] for j in jobs if j.get("name") == name_or_id and j.get("state") == "RUNNING"]
    if not running:
        states = sorted({j.get("state", "?") for j in jobs if j.get("name") == name_or_id})
        seen = f" (seen: {', '.join(states)})" if states else ""
        raise DeployError(f"no RUNNING job named {name_or_id!r} on the cluster{seen}")
    if len(running) > 1:
        raise DeployError(f"{len(running)} RUNNING jobs named {name_or_id!r}: {', '.join(running)}; "
                          "give the job id")
    return running[0]


def refuse_second_copy(jobs: Sequence[Mapping[str, Any]], name: str) -> None:
    """Two copies of a job would consume the same Kafka group and write the same rows twice."""
    running = [j["jid"] for j in jobs if j.get("name") == name and j.get("state") == "RUNNING"]
    if running:
        raise DeployError(f"job {name!r} is already RUNNING ({', '.join(running)}); stop it with a savepoint "
                          f"first ('fleet jobs stop {name}') and submit from that savepoint")


def checkpoint_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with a job's REST /jobs/<id>/checkpoints/config for exactly-once delivery."""
    found = []
    interval = config.get("interval")
    if not isinstance(interval, int) or interval <= 0 or interval >= CHECKPOINTING_OFF_MS:
        found.append(f"checkpointing is off (interval {interval})")
    if str(config.get("mode", "")).lower() != "exactly_once":
        found.append(f"checkpointing mode is {config.get('mode')!r}, not exactly_once")
    externalization = config.get("externalization") or {}
    if not externalization.get("enabled") or externalization.get("delete_on_cancellation"):
        found.append(f"checkpoints are not retained on cancellation (externalization {externalization})")
    return found


def root_exception(cluster: Cluster, job_id: str) -> str:
    try:
        exc = rest(cluster, "GET", f"/jobs/{job_id}/exceptions?maxExceptions=1")
    except DeployError as err:
        return str(err)
    entries = (exc.get("exceptionHistory") or {}).get("entries") or []
    return (entries[0].get("stacktrace", "") if entries else exc.get("root-exception") or "")[:3000]


def wait_running(cluster: Cluster, job_id: str, timeout: float = 240) -> None:
    """Until the job and every one of its tasks run; DeployError if it fails or restarts."""
    def running() -> bool:
        try:
            details = rest(cluster, "GET", f"/jobs/{job_id}")
        except DeployError:
            return False
        state = details.get("state")
        if state in TERMINAL_STATES or state == "RESTARTING":
            raise DeployError(f"job {job_id} is {state}: {root_exception(cluster, job_id)}")
        vertices = details.get("vertices") or []
        return state == "RUNNING" and bool(vertices) and all(v.get("status") == "RUNNING" for v in vertices)

    poll(running, f"job {job_id} to run every task", timeout)


def verify_exactly_once(cluster: Cluster, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """The job RUNNING with exactly-once checkpointing; its checkpoint config, else DeployError."""
    wait_running(cluster, job_id, timeout)
    config: dict[str, Any] = rest(cluster, "GET", f"/jobs/{job_id}/checkpoints/config")
    found = checkpoint_problems(config)
    if found:
        raise DeployError(f"job {job_id} runs WITHOUT exactly-once delivery: {'; '.join(found)}. Stop it "
                          f"('fleet jobs stop {job_id}') and fix the configuration (flink-conf/config.yaml)")
    return config


def savepoint_target(directory: str | None) -> str | None:
    """A --savepoint-dir as Flink wants it: URIs (s3://, file:) as given, paths made absolute."""
    if not directory:
        return None
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", directory):
        return directory
    return Path(directory).resolve().as_uri()


def await_savepoint(cluster: Cluster, job_id: str, trigger_id: str, what: str, timeout: float) -> str:
    """Poll a savepoint operation until it completes; its path, or a DeployError with the cause."""
    def completed() -> dict[str, Any] | None:
        status = rest(cluster, "GET", f"/jobs/{job_id}/savepoints/{trigger_id}")
        if status.get("status", {}).get("id") != "COMPLETED":
            return None
        return {"operation": status.get("operation") or {}}

    operation = poll(completed, f"the {what} of job {job_id}", timeout)["operation"]
    if "failure-cause" in operation:
        cause = operation["failure-cause"].get("stack-trace", "")[:3000]
        raise DeployError(f"{what} of job {job_id} failed:\n{cause}")
    location: str = operation["location"]
    return location


def stop_with_savepoint(cluster: Cluster, job_id: str, target: str | None = None, drain: bool = False,
                        timeout: float = 300) -> str:
    """Stop the job with a savepoint (Kafka offsets, state, committed lake files); its path.

    Without ``target`` the cluster's execution.checkpointing.savepoint-dir is used."""
    body: dict[str, Any] = {"drain": drain, "formatType": "CANONICAL"}
    if target:
        body["targetDirectory"] = target
    trigger = rest(cluster, "POST", f"/jobs/{job_id}/stop", body)
    return await_savepoint(cluster, job_id, trigger["request-id"], "stop-with-savepoint", timeout)


def wait_ended(cluster: Cluster, job_id: str, timeout: float = 60) -> str:
    """Until the job is in a terminal state (its slots are free again); that state."""
    state: str = poll(lambda: (lambda s: s if s in TERMINAL_STATES else None)(
        rest(cluster, "GET", f"/jobs/{job_id}").get("state")), f"job {job_id} to end", timeout)
    return state


def restored_from(cluster: Cluster, job_id: str) -> str | None:
    """The checkpoint or savepoint path the job restored from, if any."""
    restored = rest(cluster, "GET", f"/jobs/{job_id}/checkpoints").get("latest", {}).get("restored")
    return (restored or {}).get("external_path")


# --- listing ------------------------------------------------------------------------------------

def describe(job: Mapping[str, Any], config: Mapping[str, Any] | None,
             checkpoints: Mapping[str, Any] | None) -> str:
    """One line per job: id, name, state, checkpointing mode/interval, last completed checkpoint."""
    head = f"{job.get('jid', '?'):<32}  {job.get('name', '?'):<12} {job.get('state', '?'):<10}"
    if config is None:
        return f"{head} checkpointing: unknown"
    problems = checkpoint_problems(config)
    if problems:
        mode = f"checkpointing NOT exactly-once ({'; '.join(problems)})"
    else:  # no problems: the interval is there, a positive int
        mode = f"checkpointing {config.get('mode')} every {config['interval'] / 1000:g}s"
    completed = ((checkpoints or {}).get("latest") or {}).get("completed")
    if completed:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(completed.get("latest_ack_timestamp", 0) / 1000))
        last = f"last checkpoint #{completed.get('id')} at {at} UTC {completed.get('external_path', '')}"
    else:
        last = "no completed checkpoint yet"
    return f"{head} {mode}; {last}"


def job_lines(cluster: Cluster) -> list[str]:
    lines = []
    for job in sorted(list_jobs(cluster), key=lambda j: j.get("start-time", 0)):
        try:
            config = rest(cluster, "GET", f"/jobs/{job['jid']}/checkpoints/config")
            checkpoints = rest(cluster, "GET", f"/jobs/{job['jid']}/checkpoints")
        except DeployError:  # e.g. a job that never ran a task has no checkpoint statistics
            config, checkpoints = None, None
        lines.append(describe(job, config, checkpoints))
    return lines
