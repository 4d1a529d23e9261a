"""The demo's shadow round: while the simulated fleet runs, an operator changes the desired state
of some of its devices through the API, and the round waits until each device has applied the
change and reported it back (PATCH --> shadow job --> downlink --> device --> report --> API).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from fleet.config import Settings


@dataclass
class ShadowRound:
    """What the round did: devices asked, converged, and seconds from PATCH to the report."""

    asked: int = 0
    accepted: int = 0
    converged: int = 0
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.asked:
            return "Shadow: no change sent (the fleet ended first)"
        times = sorted(self.seconds)
        p50 = f", PATCH -> reported p50 {times[len(times) // 2] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms" \
            if times else ""
        errors = f"; errors: {'; '.join(self.errors[:3])}" if self.errors else ""
        return (f"Shadow: desired changed on {self.asked} devices, accepted {self.accepted}, "
                f"applied and reported back by {self.converged}{p50}{errors}")


def _call(base: str, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def run_round(settings: Settings, key: str, device_ids: list[str], timeout: float = 30.0) -> ShadowRound:
    base = f"http://{settings.api_host}:{settings.api_port}"
    marker = uuid.uuid4().hex[:8]
    out = ShadowRound()
    started: dict[str, float] = {}
    for device_id in device_ids:
        out.asked += 1
        started[device_id] = time.monotonic()
        status, body = _call(base, key, "PATCH", f"/v1/devices/{device_id}/shadow",
                             {"desired": {"led": "blue", "demo_run": marker}})
        if status in (200, 202):
            out.accepted += 1
        else:
            out.errors.append(f"{device_id}: {status} {body}")
            started.pop(device_id)
    deadline = time.monotonic() + timeout
    while started and time.monotonic() < deadline:
        for device_id in list(started):
            status, doc = _call(base, key, "GET", f"/v1/devices/{device_id}/shadow")
            state = doc.get("state", {}) if status == 200 and isinstance(doc, dict) else {}
            if state.get("reported", {}).get("demo_run") == marker and not state.get("delta"):
                out.converged += 1
                out.seconds.append(time.monotonic() - started.pop(device_id))
        time.sleep(0.2)
    return out


def start_round(settings: Settings, key: str, device_ids: list[str], delay: float) -> tuple[threading.Thread, list]:
    """Run the round on a thread after ``delay`` seconds (the fleet connected by then)."""
    result: list[ShadowRound] = []

    def later() -> None:
        time.sleep(delay)
        result.append(run_round(settings, key, device_ids))

    thread = threading.Thread(target=later, name="demo-shadow", daemon=True)
    thread.start()
    return thread, result
