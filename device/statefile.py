"""Small JSON state files (shadow state, command results), replaced atomically.

Each write goes to a temporary file in the same directory and is renamed over the old one, so a
reader (the agent after a crash or kill) sees either the previous or the new content, never a torn
file. No fsync by default, like the seq store: the data survives a process crash or kill -9 (the
kernel keeps the pages); firmware that must survive power loss passes ``fsync=True``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_json(path: Path | None) -> Any:
    """The file's JSON value, or None when there is no path, no file or an unreadable one (logged)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # A damaged state file must not keep the device from starting: it starts empty.
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def write_json(path: Path | None, value: Any, *, fsync: bool = False) -> None:
    """Replace the file's content with ``value`` as JSON, atomically (no-op without a path)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
