"""The demo's OTA round: while the simulated fleet runs, an operator uploads a small firmware image
and rolls it out through the API to a dozen of the fleet's devices in three waves, one of them with
an injected install failure, and the round follows the deployment until it is final (POST firmware
--> POST deployment --> OTA job --> ota/notify --> device downloads, installs, reboots, reports
--> health window --> next wave).

The fleet's devices are real DeviceAgents (device type "simulated"); the failure is injected by the
simulator (``--ota-fault INDEX:install_failure``), so ``choose`` is called before the fleet starts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.config import Settings

DEMO_NAME = "demo-ota"
DEVICE_TYPE = "simulated"  # devtools/enrollment.py registers the simulated fleet with it
TARGETS = 12
SKIP = 20  # the shadow round takes the fleet's first 20 devices: the rollout takes the next ones when there are
FAULT = "install_failure"
# The first device of wave 2: wave 1 needs 100%, and a 75% wave of 5 still meets it with one failure.
FAULT_POSITION = 2
IMAGE_BYTES = 64 * 1024
HEALTH_WINDOW_MS = 3_000
ROUND_SECONDS = 75.0  # from the round's start (devices ready, upload, create) to the deployment final
READY_SECONDS = 30.0  # of those, at most this long waiting for the targets to be registered and connected
CONFLICT_RETRY_SECONDS = 15.0  # a just-canceled earlier deployment holds its devices until the job has it
POLL_SECONDS = 0.5
MAX_LIST_PAGES = 20


@dataclass(frozen=True)
class OtaSetup:
    """Which fleet devices the rollout targets, in rollout order, and which one fails on purpose."""

    device_ids: list[str]
    faulty: str
    fault_spec: str  # for the simulator's --ota-fault: "<fleet index>:install_failure"


def choose(fleet_size: int, prefix: str = "sim") -> OtaSetup | None:
    """TARGETS consecutive devices of the fleet, past the shadow round's when the fleet has enough;
    None for a fleet smaller than TARGETS (the waves and thresholds need a dozen)."""
    if fleet_size < TARGETS:
        return None
    start = SKIP if fleet_size >= SKIP + TARGETS else fleet_size - TARGETS
    ids = [f"{prefix}-{i:05d}" for i in range(start, start + TARGETS)]
    return OtaSetup(ids, ids[FAULT_POSITION], f"{start + FAULT_POSITION}:{FAULT}")


def fleet_duration(asked: float, delay: float) -> float:
    """Seconds the fleet must publish so the round (starting after ``delay``) ends while it runs."""
    return max(asked, delay + ROUND_SECONDS + 5.0)


def plan() -> dict[str, Any]:
    """Waves of 2, 40% and the rest; thresholds 100/75/75; short health window and no install retry
    so the demo is brisk; timeouts so every execution ends even when the fleet stops first."""
    return {"rate_per_minute": 600,
            "waves": [{"size": 2, "success_threshold_pct": 100},
                      {"size": "40%", "success_threshold_pct": 75},
                      {"size": "100%", "success_threshold_pct": 75}],
            "device": {"health_window_ms": HEALTH_WINDOW_MS, "progress_timeout_ms": 30_000, "timeout_ms": 120_000,
                       "retries": {"install": 0}}}


def deployment_request(firmware_id: str, device_ids: list[str]) -> dict[str, Any]:
    return {"name": DEMO_NAME, "firmware_id": firmware_id, "target": {"device_ids": list(device_ids)}, "plan": plan()}


def new_version(now: float | None = None) -> str:
    """A version per demo run (the catalog refuses a version with another image)."""
    return "demo-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))


def progress_line(d: Mapping[str, Any]) -> str:
    """The deployment as GET shows it, in one line: state, current wave, released, per-wave counts."""
    waves = [w for w in d.get("waves") or [] if isinstance(w, Mapping)]
    parts = [f"{d.get('state')} wave {int(d.get('wave') or 0) + 1}/{len(waves)}, "
             f"released {d.get('released', 0)}/{d.get('target_count', 0)}"]
    for w in waves:
        counts = ", ".join(f"{state} {n}" for state, n in (w.get("counts") or {}).items() if n)
        met = " met" if w.get("met") else ""
        parts.append(f"wave {int(w.get('index') or 0) + 1} {w.get('released', 0)}/{w.get('size', 0)}{met}"
                     + (f": {counts}" if counts else ""))
    return " | ".join(parts)


def failure_reason(item: Mapping[str, Any]) -> str:
    """Why an execution (an item of GET .../devices) ended where it did: its last transition's reason."""
    raw = item.get("execution")
    execution: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    history = [h for h in execution.get("history") or [] if isinstance(h, Mapping)]
    if history and history[-1].get("reason"):
        return str(history[-1]["reason"])
    return str(execution.get("error") or item.get("state") or "unknown")


def stale_demo_deployments(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """Earlier demo rounds' deployments not final (an interrupted demo leaves one holding its devices)."""
    return [str(d["deployment_id"]) for d in items if d.get("name") == DEMO_NAME and not d.get("final")]


@dataclass
class OtaRound:
    """What the round did: the image, the deployment and how it ended, per wave and per failed device."""

    version: str = ""
    targets: int = 0
    injected: dict[str, str] = field(default_factory=dict)  # device id -> fault
    deployment_id: str | None = None
    state: str | None = None
    final: bool = False
    canceled: bool = False  # not final by the deadline, so the round canceled it
    waves: list[tuple[int, int]] = field(default_factory=list)  # (succeeded, failed) per wave
    failed: list[tuple[str, str]] = field(default_factory=list)  # (device id, reason)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        errors = f"; errors: {'; '.join(self.errors[:3])}" if self.errors else ""
        if self.deployment_id is None:
            return f"OTA: no deployment made{errors}"
        ended = f"{self.state} in {self.seconds:.0f} s" if self.final else \
            f"not final after {self.seconds:.0f} s ({self.state}{', canceled' if self.canceled else ''})"
        waves = ", ".join(f"{s}/{f}" for s, f in self.waves)
        failed = ", ".join(f"{device} ({reason}" + (f"; injected {self.injected[device]})" if device in self.injected
                                                   else ")") for device, reason in self.failed) or "none"
        missed = [f"{d} ({fault})" for d, fault in self.injected.items() if d not in dict(self.failed)]
        missed_text = f"; injected but not FAILED: {', '.join(missed)}" if missed else ""
        return (f"OTA: firmware {self.version} to {self.targets} devices in {len(self.waves)} waves {ended}; "
                f"succeeded/failed per wave {waves}; FAILED: {failed}{missed_text}{errors}")


# -- talking to the API -------------------------------------------------------------------------


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw[:200].decode(errors="replace")


def _http(base: str, key: str, method: str, path: str, *, params: Mapping[str, Any] | None = None,
          body: Any = None, data: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded body); status 0 when the API could not be reached."""
    url = base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
    headers = {"X-API-Key": key}
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif data is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, _body(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _body(exc.read())
    except OSError as exc:  # URLError, timeouts, refused connections
        return 0, str(exc)


def _detail(body: Any) -> str:
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


def _cancel_earlier(base: str, key: str) -> list[str]:
    canceled: list[str] = []
    token = None
    for _ in range(MAX_LIST_PAGES):
        status, page = _http(base, key, "GET", "/v1/ota/deployments",
                             params={"limit": 100, **({"page_token": token} if token else {})})
        if status != 200 or not isinstance(page, dict):
            break
        for dep_id in stale_demo_deployments(page.get("items") or []):
            if _http(base, key, "POST", f"/v1/ota/deployments/{dep_id}/cancel")[0] == 202:
                canceled.append(dep_id)
        token = page.get("next_page_token")
        if not token:
            break
    return canceled


def _wait_ready(base: str, key: str, device_ids: list[str], until: float) -> None:
    """Until every target is registered, active and connected (the simulator enrolls then connects
    them), or ``until``: the job would notify a device on connect anyway, this only starts the
    rollout's clock with the fleet up."""
    pending = list(device_ids)
    while pending and time.monotonic() < until:
        for device_id in list(pending):
            status, d = _http(base, key, "GET", f"/v1/devices/{device_id}")
            if status == 200 and isinstance(d, dict) and d.get("status") == "active" \
                    and (d.get("connectivity") or {}).get("connected"):
                pending.remove(device_id)
        if pending:
            time.sleep(POLL_SECONDS)


def _create(base: str, key: str, firmware_id: str, device_ids: list[str], until: float,
            out: OtaRound) -> dict[str, Any] | None:
    retry_until = min(until, time.monotonic() + CONFLICT_RETRY_SECONDS)
    while True:
        status, d = _http(base, key, "POST", "/v1/ota/deployments", body=deployment_request(firmware_id, device_ids))
        if status == 201 and isinstance(d, dict):
            return d
        if status == 409 and time.monotonic() < retry_until:
            time.sleep(1.0)
            continue
        out.errors.append(f"create deployment: {status} {_detail(d)}")
        return None


def _failed_devices(base: str, key: str, deployment_id: str) -> list[tuple[str, str]]:
    status, page = _http(base, key, "GET", f"/v1/ota/deployments/{deployment_id}/devices",
                         params={"state": "FAILED", "limit": 100})
    items = (page.get("items") or []) if status == 200 and isinstance(page, dict) else []
    return [(str(item.get("device_id")), failure_reason(item)) for item in items]


def run_round(settings: Settings, key: str, setup: OtaSetup, timeout: float = ROUND_SECONDS,
              out=None) -> OtaRound:
    out = out or sys.stdout
    base = f"http://{settings.api_host}:{settings.api_port}"
    deadline = time.monotonic() + timeout
    result = OtaRound(version=new_version(), targets=len(setup.device_ids), injected={setup.faulty: FAULT})
    status, fw = _http(base, key, "POST", "/v1/firmware", params={"version": result.version, "device_type": DEVICE_TYPE},
                       data=os.urandom(IMAGE_BYTES))
    if status not in (200, 201) or not isinstance(fw, dict):
        result.errors.append(f"firmware upload: {status} {_detail(fw)}")
        return result
    for dep_id in _cancel_earlier(base, key):
        out.write(f"  ota   canceled {dep_id}, an earlier demo's deployment still active\n")
    _wait_ready(base, key, setup.device_ids, min(deadline, time.monotonic() + READY_SECONDS))
    d = _create(base, key, fw["firmware_id"], setup.device_ids, deadline, result)
    if d is None:
        return result
    result.deployment_id = str(d["deployment_id"])
    out.write(f"  ota   deployment {result.deployment_id}: {result.version} to {len(setup.device_ids)} devices "
              f"({setup.faulty} set to fail: {FAULT})\n")
    t0, last, poll_errors = time.monotonic(), "", 0
    while True:
        line = progress_line(d)
        if line != last:
            out.write(f"  ota   {time.monotonic() - t0:5.1f}s {line}\n")
            out.flush()
            last = line
        if d.get("final") or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
        status, got = _http(base, key, "GET", f"/v1/ota/deployments/{result.deployment_id}")
        if status == 200 and isinstance(got, dict):
            d = got
        elif not poll_errors:
            poll_errors += 1
            result.errors.append(f"GET deployment: {status} {_detail(got)}")
    result.seconds = time.monotonic() - t0
    result.state, result.final = str(d.get("state")), bool(d.get("final"))
    result.waves = [(int(w.get("succeeded") or 0), int(w.get("failed") or 0)) for w in d.get("waves") or []]
    if not result.final:  # it would hold its devices (and the next demo's 409) once the fleet stops
        result.canceled = _http(base, key, "POST", f"/v1/ota/deployments/{result.deployment_id}/cancel")[0] == 202
    result.failed = _failed_devices(base, key, result.deployment_id)
    return result


def start_round(settings: Settings, key: str, setup: OtaSetup, delay: float,
                timeout: float = ROUND_SECONDS) -> tuple[threading.Thread, list[OtaRound]]:
    """Run the round on a thread after ``delay`` seconds (the fleet enrolled and connecting by then)."""
    result: list[OtaRound] = []

    def later() -> None:
        time.sleep(delay)
        try:
            result.append(run_round(settings, key, setup, timeout))
        except Exception as exc:  # the demo's report says so instead of a thread traceback
            result.append(OtaRound(errors=[f"the round failed: {exc!r}"]))

    thread = threading.Thread(target=later, name="demo-ota", daemon=True)
    thread.start()
    return thread, result
