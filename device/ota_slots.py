"""A/B firmware slots simulated on disk: what a bootloader keeps between boots.

The rules are those of U-Boot's ``bootcount`` / Mender's ``upgrade_available``, in small:

* Two slots, ``a`` and ``b``; the **active** one holds the committed image (the factory image is
  slot ``a``, not on disk). An update is written to the other one and arms a **trial** of it; the
  active slot is never touched by an install, so there is always an image that booted before.
* On every boot with a trial armed the bootloader boots the trial slot and counts the boot, until
  the trial has booted ``max_boots`` times without being committed, or the running image marked it
  failed (its self-test failed): then it boots the active slot again and drops the trial (fall back).
* The running image commits the trial once it is healthy: the trial slot becomes the active one.

State in ``slots.json`` (replaced atomically):
``{"format": 1, "active": "a", "slots": {"a": {"version", "sha256"?}, "b": {...}},
"trial": null | {"slot", "deployment_id", "version", "boots", "max_boots", "failed"}}``.
Without a path it lives in memory (lightweight simulated devices); with one, nothing is written
until the first install, so a device that never updated keeps following its configured version.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.statefile import read_json, write_json

_FILE_FORMAT = 1
SLOTS = ("a", "b")


@dataclass(frozen=True)
class BootOutcome:
    """What the last boot did with a trial: ``booted`` it (boot = how often, 1 first) or ``fell_back``."""

    kind: str                 # "booted" | "fell_back"
    deployment_id: str
    version: str              # the version now running
    boots: int                # boots of the trial image so far
    trial_version: str        # the version the trial was for
    reason: str = ""          # fell_back: "crash_loop" | "self_test_failed"


class SlotStore:
    def __init__(self, path: Path | None, factory_version: str):
        self.path = path
        self._lock = threading.Lock()
        raw = read_json(path)
        if isinstance(raw, dict) and raw.get("active") in SLOTS and isinstance(raw.get("slots"), dict):
            self._state: dict[str, Any] = raw
        else:
            self._state = {"format": _FILE_FORMAT, "active": "a", "slots": {"a": {"version": factory_version}},
                           "trial": None}
        self._running = self._state["active"]

    # -- reading ----------------------------------------------------------------------------
    @property
    def active(self) -> str:
        return str(self._state["active"])

    @property
    def inactive(self) -> str:
        return "b" if self.active == "a" else "a"

    @property
    def running_slot(self) -> str:
        return self._running

    @property
    def running_version(self) -> str:
        with self._lock:
            return self._version(self._running)

    def _version(self, slot: str) -> str:
        return str((self._state["slots"].get(slot) or {}).get("version", ""))

    def trial(self) -> dict[str, Any] | None:
        with self._lock:
            trial = self._state.get("trial")
            return dict(trial) if isinstance(trial, dict) else None

    # -- the bootloader ---------------------------------------------------------------------
    def boot(self) -> BootOutcome | None:
        """Choose the slot to run (power-on or reboot); None when there is no trial to speak of."""
        with self._lock:
            trial = self._state.get("trial")
            if not isinstance(trial, dict):
                self._running = self.active
                return None
            if trial.get("failed") or trial["boots"] >= trial["max_boots"]:
                self._state["trial"] = None
                self._running = self.active
                self._save()
                return BootOutcome("fell_back", trial["deployment_id"], self._version(self.active), trial["boots"],
                                   trial["version"], "self_test_failed" if trial.get("failed") else "crash_loop")
            trial["boots"] += 1
            self._running = trial["slot"]
            self._save()
            return BootOutcome("booted", trial["deployment_id"], trial["version"], trial["boots"], trial["version"])

    # -- the OTA client ---------------------------------------------------------------------
    def install(self, image: Path, slot_path: Path, *, version: str, sha256: str, deployment_id: str,
                max_boots: int) -> str:
        """Write the verified image into the inactive slot and arm a trial of it; returns the slot.

        A real device writes the partition; here the file is renamed into place (same directory tree)."""
        with self._lock:
            slot = self.inactive
            slot_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(image, slot_path)
            self._state["slots"][slot] = {"version": version, "sha256": sha256}
            self._state["trial"] = {"slot": slot, "deployment_id": deployment_id, "version": version, "boots": 0,
                                    "max_boots": max(1, max_boots), "failed": False}
            self._save()
            return slot

    def commit(self) -> None:
        """The running trial image is healthy: it becomes the active slot."""
        with self._lock:
            trial = self._state.get("trial")
            if not isinstance(trial, dict) or self._running != trial["slot"]:
                return
            self._state["active"] = trial["slot"]
            self._state["trial"] = None
            self._save()

    def fail_trial(self) -> None:
        """The running trial image failed its self-test: the next boot falls back."""
        with self._lock:
            trial = self._state.get("trial")
            if isinstance(trial, dict):
                trial["failed"] = True
                self._save()

    def _save(self) -> None:
        write_json(self.path, self._state)
