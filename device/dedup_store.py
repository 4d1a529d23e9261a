"""The results a device gave to commands, by command id, persisted across its own restarts.

The platform delivers commands at least once (a device that disconnects before its receipt gets
the command again, and the bridge may re-publish after a crash), so the agent looks every command id
up here first and answers a repeat with the stored result instead of running the command again.

Bounded: an entry is kept ``retention_ms`` past the later of its command's ``expires_at`` and the
time it was stored (redeliveries happen before expiry; the margin covers a bridge replaying late),
and never more than ``max_entries`` (oldest dropped first). The file is replaced atomically on every
change (device/statefile.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from device.statefile import read_json, write_json

_FILE_FORMAT = 1


class DedupStore:
    def __init__(self, path: Path | None = None, *, max_entries: int = 256, retention_ms: int = 86_400_000):
        self.path = path
        self.max_entries = max_entries
        self.retention_ms = retention_ms
        self._lock = threading.Lock()
        # command id -> {"payload": the result message, "stored_at": ms, "expires_at": ms | None};
        # insertion order is age order (an id stored again moves to the end).
        self._entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        raw = read_json(self.path)
        if not isinstance(raw, dict) or not isinstance(raw.get("results"), dict):
            return {}
        return {cid: e for cid, e in raw["results"].items()
                if isinstance(e, dict) and isinstance(e.get("payload"), dict) and type(e.get("stored_at")) is int}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def get(self, command_id: str) -> dict[str, Any] | None:
        """The result message stored for this command id, or None."""
        with self._lock:
            entry = self._entries.get(command_id)
            return dict(entry["payload"]) if entry else None

    def put(self, command_id: str, payload: dict[str, Any], now: int, expires_at: int | None = None) -> None:
        """Store (or replace) the result message for a command id, prune, and persist."""
        with self._lock:
            self._entries.pop(command_id, None)
            self._entries[command_id] = {"payload": dict(payload), "stored_at": now, "expires_at": expires_at}
            self._prune(now)
            write_json(self.path, {"format": _FILE_FORMAT, "results": self._entries})

    def _prune(self, now: int) -> None:
        def keep(entry: dict[str, Any]) -> bool:
            expires_at = entry.get("expires_at")
            horizon = max(entry["stored_at"], expires_at if type(expires_at) is int else 0)
            return now <= horizon + self.retention_ms

        for cid in [cid for cid, e in self._entries.items() if not keep(e)]:
            del self._entries[cid]
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
