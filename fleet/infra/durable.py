"""Durability on a local filesystem: what a crash-safe write-then-rename needs."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (Linux: a read-only descriptor will do). After ``os.replace`` the
    rename is durable only once its directory is fsynced too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
