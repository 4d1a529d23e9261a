"""What the launcher needs from each part of the local stack."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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
