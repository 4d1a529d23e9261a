"""The telemetry sequence number, persisted so a restarted device continues where it stopped.

The next seq is rewritten in place (one pwrite, no fsync) on every message: it survives a
process crash or kill, since the kernel keeps the page. Firmware on flash would instead reserve
blocks (persist seq+1000, hand out the block from RAM) to spare erase cycles, accepting a gap
after a power loss; the pipeline's gap detection reports such gaps.
"""

from __future__ import annotations

import os
from pathlib import Path

_WIDTH = 20  # decimal digits of a 64-bit counter


class SeqStore:
    def __init__(self, path: Path | None):
        self.path = path
        self._fd: int | None = None
        self._next = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            raw = os.pread(self._fd, _WIDTH + 1, 0).strip()
            self._next = int(raw) if raw else 0

    @property
    def next_value(self) -> int:
        return self._next

    def take(self) -> int:
        """The seq for the next message (then advances and persists the counter)."""
        seq = self._next
        self._next = seq + 1
        if self._fd is not None:
            os.pwrite(self._fd, b"%0*d\n" % (_WIDTH, self._next), 0)
        return seq

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
