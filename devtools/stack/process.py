"""Background processes tracked by pid files, and the waits and checks the launcher needs.

Every service the launcher starts runs in its own session (process group) with stdout/stderr
appended to a log file, and its pid in ``<run_dir>/<name>.pid``; ``stop`` signals the whole group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.infra.errors import InfraError


class StackError(InfraError):
    """A failure the launcher reports to the user as one clear message (no traceback)."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_port_free(host: str, port: int, what: str) -> None:
    if port_open(host, port):
        raise StackError(
            f"port {host}:{port} needed by {what} is already taken by another process; "
            f"stop it or configure another port (see README, 'Configuration')"
        )


def tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def require_java(min_major: int = 17, java_home: str | None = None) -> str:
    """Path of a java binary of at least ``min_major``; a clear error if there is none."""
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise StackError(f"Java {min_major} is required but no 'java' was found; install openjdk-{min_major}-jre-headless")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    first = out.splitlines()[0] if out else ""
    try:
        version = first.split('"')[1]
        major = int(version.split(".")[0] if not version.startswith("1.") else version.split(".")[1])
    except (IndexError, ValueError):
        raise StackError(f"could not read the Java version from: {first!r}") from None
    if major < min_major:
        raise StackError(f"Java {min_major}+ is required, found {version} at {java}")
    return java


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_file: Path
    pid_file: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        existing = self.pid()
        if existing:
            return existing
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.update(self.extra_env)
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(self.cwd) if self.cwd else None, env=env, start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, then SIGKILL after ``timeout``. True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would (used by fault tests)."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    process: ManagedProcess | None = None,
    interval: float = 0.5,
    on_tick: Callable[[float], None] | None = None,
) -> None:
    """Poll ``check`` until true; fail fast with the log tail if ``process`` died meanwhile."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return
        except Exception:  # a check that raises is simply not ready yet
            pass
        elapsed = time.monotonic() - start
        if process is not None and not process.is_running():
            raise StackError(
                f"{what}: process exited during start-up; last lines of {process.log_file}:\n"
                f"{tail(process.log_file)}"
            )
        if elapsed > timeout:
            log_hint = f"; see {process.log_file}:\n{tail(process.log_file)}" if process else ""
            raise StackError(f"{what}: not ready after {timeout:.0f}s{log_hint}")
        if on_tick:
            on_tick(elapsed)
        time.sleep(interval)


def run_checked(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, timeout: float | None = None) -> str:
    """Run a short command; raise StackError with its output if it fails."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                             cwd=str(cwd) if cwd else None, timeout=timeout)
    except FileNotFoundError:
        raise StackError(f"{what}: command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"{what}: timed out after {timeout}s: {' '.join(argv)}") from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip().splitlines()[-30:]
        raise StackError(f"{what} failed (exit {res.returncode}):\n" + "\n".join(out))
    return res.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
