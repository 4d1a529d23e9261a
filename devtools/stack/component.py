"""What the launcher needs from each part of the local stack, and the base most parts share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

from devtools.stack import jars
from devtools.stack.process import ManagedProcess, ensure_port_free
from fleet.config import Settings


class Component(Protocol):
    """One service of the local stack (Mosquitto, Kafka, Cassandra, Flink, bridge, API).

    ``prepare`` does the idempotent one-time work (install, download, configure, format);
    ``start`` launches the process(es) and returns without waiting; ``healthy`` is a cheap
    readiness probe; ``post_start`` runs once healthy (topics, migrations); ``stop`` stops
    only what this launcher started (by pid file).
    """

    name: str
    settings: Settings
    start_timeout: float

    def prepare(self) -> None: ...

    def start(self) -> None: ...

    def healthy(self) -> bool: ...

    def post_start(self) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...

    def endpoints(self) -> dict[str, str]: ...

    def log_files(self) -> list[Path]: ...


class ProcessComponent:
    """A component that is one ManagedProcess named after it: log ``<log_dir>/<name>.log``, pid
    ``<run_dir>/<name>.pid``. ``start`` checks ``ports()`` are free first; an ``argv`` known only
    later (a binary looked up in ``prepare``, a JVM command line) is set on ``self.process``."""

    name: str
    start_timeout: float
    stop_timeout: float = 30.0

    def __init__(self, settings: Settings, argv: Sequence[str] = (), *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None):
        self.settings = settings
        # The launcher's wait_until watches this to fail fast if it dies during start-up.
        self.process = ManagedProcess(
            name=self.name, argv=list(argv), log_file=settings.log_dir / f"{self.name}.log",
            pid_file=settings.run_dir / f"{self.name}.pid", env=env, cwd=cwd,
        )

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    def ports(self) -> list[tuple[str, int, str]]:
        """(host, port, what needs it) for each port the process listens on."""
        return []

    def prepare(self) -> None:
        pass

    def start(self) -> None:
        if self.process.is_running():
            return
        for host, port, what in self.ports():
            ensure_port_free(host, port, what)
        self.process.start()

    def healthy(self) -> bool:
        raise NotImplementedError

    def post_start(self) -> None:
        pass

    def stop(self) -> None:
        self.process.stop(timeout=self.stop_timeout)

    def is_running(self) -> bool:
        return self.process.is_running()

    def endpoints(self) -> dict[str, str]:
        raise NotImplementedError

    def log_files(self) -> list[Path]:
        return [self.process.log_file]


class JarComponent(ProcessComponent):
    """A JVM service run from its pinned jar set (devtools/stack/maven/<name>/pom.xml), with its
    files under ``<data_dir>/<name>`` (also its working directory)."""

    def __init__(self, settings: Settings):
        self.home = settings.data_dir / self.name
        super().__init__(settings, cwd=self.home)

    @cached_property
    def jar_dir(self) -> Path:
        """Downloaded on first use; cached by POM hash."""
        return jars.resolve(self.name, self.settings.jar_dir)
