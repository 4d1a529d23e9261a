"""The device side of OTA deployments: notify -> download -> verify -> install -> reboot -> self-test -> commit.

No MQTT here: ``handle(raw)`` takes one ``devices/{id}/ota/notify`` payload, and what the device
reports goes out through ``emit(Message)`` on ``devices/{id}/ota/status`` (docs/device-contract.md,
"OTA for firmware authors"). The agent calls ``handle`` on a serial lane; the download and install
run on a thread of their own, so neither the MQTT loop nor the shared downlink workers wait for a
firmware image. The states reported, in order:

``RECEIVED`` -> ``DOWNLOADING`` (``progress`` every ``progress_step`` %) -> ``DOWNLOADED`` (sha256
and signature verified) -> ``INSTALLING`` (into the inactive A/B slot) -> ``REBOOTING`` -> after the
reboot ``BOOTED`` (``firmware_version``, ``boot``) -> self-test -> commit (nothing more to say: the
platform decides success by the health window). Or ``FAILED`` (``failure``: download | verify |
install; the platform may retry with a higher ``attempt``), ``REJECTED`` (for good: tampered, bad or
unknown signature, wrong device type, malformed notify), ``ROLLED_BACK`` (the new image did not come
up healthy; the bootloader went back to the old slot) or ``ALREADY_INSTALLED``.

Rules kept here:

* A deployment the device finished (committed, rolled back, rejected, canceled, already installed)
  is remembered (persisted, the last ``max_remembered``) and a notify for it again is ignored; after
  ``FAILED`` only a notify with a higher ``attempt`` (the platform's retry) starts it again.
* Every report for a deployment carries the ``attempt`` of the notify it works on (the platform
  drops a FAILED of an older attempt, so a repeated report cannot use up a retry).
* A notify for the deployment in progress does not restart it: it refreshes the attempt and, for
  the same image, the download url (the platform re-sends the notify on reconnect with a fresh
  signed url) and resumes a download that is not running (after a restart). A device that comes
  back with an expired url waits for that notify instead of asking with it (a 403).
* The notify's ``max_boots`` (the deployment's policy) overrides ``OtaOptions.max_boots``, so the
  bootloader falls back when the platform counts a crash loop.
* Cancel stops the deployment and discards its download while it is RECEIVED, DOWNLOADING or
  DOWNLOADED; from INSTALLING on it runs to its own outcome (a half-written slot is worse). A
  cancel may wait in the MQTT session while the device is away, so INSTALLING starts only while
  connected and ``install_hold`` seconds after a connect: the notices queued for the device are
  handled first.
* A download interrupted by anything (network, restart, a failed attempt) resumes with ``Range``
  from where the partial file ends; a rejected or canceled image is deleted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

from device.ota_download import DownloadError, Interrupted, Oversize, fetch, make_opener
from device.ota_faults import OtaFaults
from device.ota_slots import BootOutcome, SlotStore
from device.ota_verify import TAMPERED, NoTrustedKeys, check_image, load_trusted_keys
from device.shadow_sync import Message
from device.statefile import read_json, write_json
from fleet.contract.topics import Downlink, Uplink

log = logging.getLogger(__name__)

NOTIFY_SUFFIX = Downlink.OTA_NOTIFY.value
STATUS_SUFFIX = Uplink.OTA_STATUS.value

# Reported states (schemas/mqtt/ota-status.schema.json).
RECEIVED = "RECEIVED"
DOWNLOADING = "DOWNLOADING"
DOWNLOADED = "DOWNLOADED"
INSTALLING = "INSTALLING"
REBOOTING = "REBOOTING"
BOOTED = "BOOTED"
FAILED = "FAILED"
REJECTED = "REJECTED"
ROLLED_BACK = "ROLLED_BACK"
ALREADY_INSTALLED = "ALREADY_INSTALLED"
# How the device remembers a deployment it finished without a final report of its own.
COMMITTED = "COMMITTED"
CANCELED = "CANCELED"

FAILURE_DOWNLOAD = "download"
FAILURE_VERIFY = "verify"
FAILURE_INSTALL = "install"
WRONG_DEVICE_TYPE = "wrong_device_type"
INVALID_NOTIFY = "invalid_notify"

CANCELABLE = frozenset({RECEIVED, DOWNLOADING, DOWNLOADED})
RESUMABLE = frozenset({RECEIVED, DOWNLOADING, DOWNLOADED, INSTALLING})
# The id names files on the device, so nothing that could leave its directory.
DEPLOYMENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_BOOTS_RANGE = (1, 20)  # as the platform clamps the policy (fleet/ota/execution.py DevicePolicy)
_FILE_FORMAT = 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class OtaOptions:
    # The notify's url is a path+query under this (an absolute url is taken as it is).
    api_base_url: str = "http://127.0.0.1:8000"
    # PEM files of the Ed25519 public keys the device trusts for firmware (shipped with it).
    trusted_keys: tuple[str, ...] = ()
    faults: OtaFaults = OtaFaults()
    # Boots of a new image without a commit before the bootloader falls back to the old slot
    # (a notify's max_boots, the deployment's policy, takes its place).
    max_boots: int = 2
    # Refuse images for another device type (when both the device and the notify name one).
    device_type: str | None = None
    progress_step: int = 10
    # Retries of one attempt's download after a network error (each resumes), with doubling backoff.
    download_retries: int = 3
    retry_backoff: float = 1.0
    timeout: float = 30.0
    max_remembered: int = 256
    # Seconds after a connect before INSTALLING may start (never while disconnected): time for the
    # notices the broker kept for the device (a cancel) to be handled first.
    install_hold: float = 2.0


@dataclass
class Job:
    deployment_id: str
    attempt: int
    firmware: dict[str, Any]
    state: str = RECEIVED
    max_boots: int | None = None  # the notify's (the deployment's policy); None: OtaOptions.max_boots

    @classmethod
    def from_json(cls, raw: Any) -> Job | None:
        try:
            return cls(str(raw["deployment_id"]), int(raw["attempt"]), dict(raw["firmware"]), str(raw["state"]),
                       parse_max_boots(raw.get("max_boots")))
        except (KeyError, TypeError, ValueError):
            return None


class _Failed(Exception):
    def __init__(self, failure: str, error: str):
        super().__init__(error)
        self.failure = failure
        self.error = error


class _Rejected(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


def _thread_submit(fn: Callable[..., Any], *args: Any) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


def parse_max_boots(value: Any) -> int | None:
    """A notify's max_boots, clamped as the platform clamps it; None if absent or not an integer."""
    low, high = MAX_BOOTS_RANGE
    return min(max(value, low), high) if type(value) is int else None


def url_expired(url: str, now_s: int) -> bool:
    """Whether a signed download url's ``exp`` (epoch seconds) has passed; False without one."""
    exp = parse_qs(urlsplit(url).query).get("exp")
    try:
        return exp is not None and int(exp[0]) <= now_s
    except ValueError:
        return False


def parse_firmware(fw: Any, api_base_url: str) -> dict[str, Any] | str:
    """The notify's firmware object, checked and normalised, or what is wrong with it."""
    if not isinstance(fw, dict):
        return "firmware must be an object"
    version, sha, size, sig = fw.get("version"), fw.get("sha256"), fw.get("size"), fw.get("signature")
    signer, url = fw.get("signer"), fw.get("url")
    if not isinstance(version, str) or not 1 <= len(version) <= 64:
        return "firmware.version must be a string of 1 to 64 characters"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return "firmware.sha256 must be 64 hex characters"
    if type(size) is not int or size < 0:
        return "firmware.size must be a non-negative integer"
    if not isinstance(sig, str) or not sig:
        return "firmware.signature must be a base64 string"
    if signer is not None and not isinstance(signer, str):
        return "firmware.signer must be a key id"
    if not isinstance(url, str) or not url or urlsplit(urljoin(api_base_url, url)).scheme not in ("http", "https"):
        return "firmware.url must be a path under the API or an http(s) url"
    out = {"version": version, "sha256": sha.lower(), "size": size, "signature": sig, "signer": signer, "url": url}
    for key in ("firmware_id", "device_type"):
        if isinstance(fw.get(key), str):
            out[key] = fw[key]
    return out


class OtaUpdater:
    def __init__(self, directory: Path | None, factory_version: str, emit: Callable[[Message], None],
                 restart: Callable[[bool], None], options: OtaOptions | None = None, *,
                 ssl_context: Callable[[], ssl.SSLContext] | None = None,
                 submit: Callable[..., None] | None = None, clock: Callable[[], int] = now_ms, name: str = "ota"):
        """``directory``: where the state, the downloads and the slots live (None: memory, and a
        temporary directory for files). ``emit(Message)``: publish (thread-safe); ``restart(crash)``:
        take the device down and boot it again (``crash``: as a crash would, no goodbye);
        ``submit(fn, *args)``: run a short task off the MQTT thread (the self-test)."""
        self.directory = directory
        self.options = options or OtaOptions()
        self.emit = emit
        self.restart = restart
        self.clock = clock
        self.name = name
        # The health check of a freshly booted image; False (or raising) makes the device fall back.
        self.self_test: Callable[[], bool] = lambda: True
        self._ssl_context = ssl_context
        self._submit = submit or _thread_submit
        self._lock = threading.RLock()
        self._halt = threading.Event()      # cancel or shutdown: the worker stops at its next step
        self._closing = False
        self._worker: threading.Thread | None = None
        self._tmp: Path | None = None
        self._failed_once: set[str] = set()  # download_failure_once: deployments already broken off
        self._boot_outcome: BootOutcome | None = None
        # time.monotonic() of the last connect; None while disconnected. -inf: never told (no agent
        # around the updater), which lets an install start at once.
        self._online_since: float | None = float("-inf")
        self._state_path = directory / "state.json" if directory else None
        self.slots = SlotStore(directory / "slots.json" if directory else None, factory_version)
        raw = read_json(self._state_path)
        raw = raw if isinstance(raw, dict) else {}
        self._job: Job | None = Job.from_json(raw["job"]) if raw.get("job") else None
        finished = raw.get("finished")
        self._finished: dict[str, dict[str, Any]] = {
            k: v for k, v in finished.items() if isinstance(v, dict)} if isinstance(finished, dict) else {}

    # -- state ------------------------------------------------------------------------------
    @property
    def running_version(self) -> str:
        return self.slots.running_version

    @property
    def job(self) -> Job | None:
        with self._lock:
            return Job(**asdict(self._job)) if self._job else None

    def finished(self, deployment_id: str) -> str | None:
        """How the device finished this deployment (a reported state, COMMITTED or CANCELED), or None."""
        with self._lock:
            entry = self._finished.get(deployment_id)
            return str(entry["state"]) if entry else None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no download/install runs (tests)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _files(self) -> Path:
        if self.directory is not None:
            return self.directory
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            return self._tmp

    def _part_path(self, job: Job) -> Path:
        return self._files() / "download" / f"{job.deployment_id}.{job.firmware['sha256'][:16]}.part"

    def _save(self) -> None:
        write_json(self._state_path, {"format": _FILE_FORMAT, "job": asdict(self._job) if self._job else None,
                                      "finished": self._finished})

    def _set_state(self, job: Job, state: str) -> None:
        with self._lock:
            job.state = state
            if self._job is job:
                self._save()

    def _finish(self, deployment_id: str, state: str, attempt: int) -> None:
        with self._lock:
            self._finished.pop(deployment_id, None)
            self._finished[deployment_id] = {"state": state, "attempt": attempt, "at": self.clock()}
            while len(self._finished) > self.options.max_remembered:
                del self._finished[next(iter(self._finished))]
            if self._job is not None and self._job.deployment_id == deployment_id:
                self._job = None
            self._save()

    def _report(self, deployment_id: str, state: str, *, attempt: int | None,
                after_ack: Callable[[], None] | None = None, **fields: Any) -> None:
        """``attempt``: of the notify being worked on (None only when the device no longer knows it)."""
        payload: dict[str, Any] = {"deployment_id": deployment_id, "state": state}
        payload.update({k: v for k, v in dict(fields, attempt=attempt).items() if v is not None})
        payload["ts"] = self.clock()
        self.emit(Message(STATUS_SUFFIX, payload, after_ack))

    def _worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # -- downlink (a serial lane) -----------------------------------------------------------
    def handle(self, raw: bytes | str) -> None:
        """One notify message; never raises because of its content."""
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: ignoring a notify that is not JSON: %s", self.name, exc)
            return
        if not isinstance(msg, dict):
            log.warning("%s: ignoring a notify that is not a JSON object", self.name)
            return
        dep = msg.get("deployment_id")
        if not isinstance(dep, str) or not DEPLOYMENT_ID_PATTERN.fullmatch(dep):
            log.warning("%s: ignoring a notify without a usable deployment_id: %.80r", self.name, dep)
            return
        if self._closing:
            return
        op = msg.get("op")
        if op == "install":
            self._on_install(dep, msg)
        elif op == "cancel":
            self._on_cancel(dep)
        else:
            log.warning("%s: ignoring notify op %.40r for %s", self.name, op, dep)

    def _on_install(self, dep: str, msg: dict[str, Any]) -> None:
        attempt = msg.get("attempt")
        attempt = attempt if type(attempt) is int and attempt >= 1 else 1
        with self._lock:
            done = self._finished.get(dep)
            if done is not None and not (done["state"] == FAILED and attempt > done.get("attempt", 0)):
                log.info("%s: deployment %s already finished (%s); notify ignored", self.name, dep, done["state"])
                return
            current = self._job
            if current is not None and current.deployment_id == dep:
                self._refresh(current, attempt, msg)
                return
        if current is not None and not self._abandon(current):
            self._report(dep, FAILED, attempt=attempt, failure=FAILURE_INSTALL,
                         error=f"busy: deployment {current.deployment_id} is {current.state.lower()}")
            return
        fw = parse_firmware(msg.get("firmware"), self.options.api_base_url)
        if isinstance(fw, str):
            self._finish(dep, REJECTED, attempt)
            self._report(dep, REJECTED, attempt=attempt, error=f"{INVALID_NOTIFY}: {fw}")
            return
        wanted, mine = fw.get("device_type"), self.options.device_type
        if wanted is not None and mine is not None and wanted != mine:
            self._finish(dep, REJECTED, attempt)
            self._report(dep, REJECTED, attempt=attempt, error=WRONG_DEVICE_TYPE)
            return
        if fw["version"] == self.running_version:
            self._finish(dep, ALREADY_INSTALLED, attempt)
            self._report(dep, ALREADY_INSTALLED, attempt=attempt, firmware_version=self.running_version)
            return
        job = Job(dep, attempt, fw, max_boots=parse_max_boots(msg.get("max_boots")))
        with self._lock:
            self._job = job
            self._save()
            self._report(dep, RECEIVED, attempt=attempt)
            self._prune_downloads(self._part_path(job))
            self._start(job)

    def _refresh(self, job: Job, attempt: int, msg: dict[str, Any]) -> None:
        """A notify for the deployment in progress (lock held): its url, and a resume.

        The same attempt comes again when the device reconnects, with a fresh signed url: a device
        away longer than the url's lifetime resumes with that one (the worker re-reads it per try)."""
        if attempt >= job.attempt:  # an older attempt's notify (late) brings nothing newer
            job.attempt = attempt
            fw = parse_firmware(msg.get("firmware"), self.options.api_base_url)
            if isinstance(fw, dict) and fw["sha256"] == job.firmware["sha256"]:
                job.firmware["url"] = fw["url"]
            if (max_boots := parse_max_boots(msg.get("max_boots"))) is not None:
                job.max_boots = max_boots
            self._save()
        if job.state in RESUMABLE and not self._worker_alive():
            log.info("%s: resuming deployment %s from %s", self.name, job.deployment_id, job.state)
            self._start(job)
        else:
            log.info("%s: deployment %s in progress (%s); repeated notify", self.name, job.deployment_id, job.state)

    def _abandon(self, job: Job) -> bool:
        """Give up the deployment in progress for a newer one; False if it is past cancelling."""
        with self._lock:
            if job.state not in CANCELABLE:
                return False
            worker = self._worker if self._worker_alive() else None
            self._halt.set()
        if worker is not None:
            worker.join(self.options.timeout + 5)
            if worker.is_alive():
                return False
        with self._lock:
            if self._job is job:
                self._discard(job)
                self._finish(job.deployment_id, CANCELED, job.attempt)
        log.info("%s: deployment %s abandoned for a newer one", self.name, job.deployment_id)
        return True

    def _on_cancel(self, dep: str) -> None:
        with self._lock:
            job = self._job
            if job is None or job.deployment_id != dep:
                if dep not in self._finished:
                    self._finish(dep, CANCELED, 0)  # a notify still on its way is then ignored
                return
            if job.state not in CANCELABLE:
                log.info("%s: cancel of %s ignored: it is %s and runs to its outcome", self.name, dep, job.state)
                return
            if self._worker_alive():
                self._halt.set()  # the worker discards the download and finishes it
                return
            self._discard(job)
            self._finish(dep, CANCELED, job.attempt)
        log.info("%s: deployment %s canceled", self.name, dep)

    # -- the worker -------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        self._halt.clear()
        self._worker = threading.Thread(target=self._run, args=(job,), name=f"{self.name}-{job.deployment_id}",
                                        daemon=True)
        self._worker.start()

    def _run(self, job: Job) -> None:
        stage = FAILURE_DOWNLOAD
        dep = job.deployment_id
        try:
            digest = self._download(job)
            stage = FAILURE_VERIFY
            self._verify(job, digest)
            stage = FAILURE_INSTALL
            self._install(job)
        except Interrupted:
            if self._closing:
                return  # shut down: the job and its partial file stay for the next start
            with self._lock:
                self._discard(job)
                self._finish(dep, CANCELED, job.attempt)
            log.info("%s: deployment %s canceled, download discarded", self.name, dep)
        except _Rejected as exc:
            log.warning("%s: deployment %s rejected: %s", self.name, dep, exc.error)
            with self._lock:
                self._discard(job)
                self._finish(dep, REJECTED, job.attempt)
            self._report(dep, REJECTED, attempt=job.attempt, error=exc.error)
        except _Failed as exc:
            log.warning("%s: deployment %s failed (%s): %s", self.name, dep, exc.failure, exc.error)
            self._fail(job, exc.failure, exc.error)
        except Exception as exc:
            log.exception("%s: deployment %s failed in %s", self.name, dep, stage)
            self._fail(job, stage, f"{type(exc).__name__}: {exc}")

    def _fail(self, job: Job, failure: str, error: str) -> None:
        # The partial (or verified) download stays: the platform's retry resumes from it.
        self._finish(job.deployment_id, FAILED, job.attempt)
        self._report(job.deployment_id, FAILED, attempt=job.attempt, failure=failure, error=error[:1024])

    def _discard(self, job: Job) -> None:
        self._part_path(job).unlink(missing_ok=True)

    def _prune_downloads(self, keep: Path) -> None:
        """Partial files of deployments given up on (a failed one not retried) go with a new one."""
        for path in keep.parent.glob("*.part") if keep.parent.is_dir() else ():
            if path != keep:
                path.unlink(missing_ok=True)

    def _opener(self, url: str) -> Any:
        https = urlsplit(url).scheme == "https"
        return make_opener(self._ssl_context() if https and self._ssl_context else None)

    def _download(self, job: Job) -> bytes:
        fw, faults, dep = job.firmware, self.options.faults, job.deployment_id
        size, part, step = fw["size"], self._part_path(job), max(1, self.options.progress_step)
        quiet = job.state not in (RECEIVED, DOWNLOADING)  # resumed after the download had completed
        reported = -1

        def progress(done: int) -> None:
            nonlocal reported
            level = (100 if size == 0 else done * 100 // size) // step * step
            if not quiet and level > reported:
                reported = level
                self._report(dep, DOWNLOADING, attempt=job.attempt, progress=min(100, level))

        if not quiet:
            self._set_state(job, DOWNLOADING)
            progress(part.stat().st_size if part.exists() and part.stat().st_size <= size else 0)
            if faults.stall:
                log.warning("%s: stalling deployment %s (injected)", self.name, dep)
                self._halt.wait()
                raise Interrupted()
        fail_at = None
        if faults.download_failure_once and dep not in self._failed_once:
            self._failed_once.add(dep)
            fail_at = max(1, size // 2)
        target = size // 2

        def tamper(offset: int, chunk: bytearray) -> None:
            if offset <= target < offset + len(chunk):
                chunk[target - offset] ^= 0xFF

        tries = 0
        while True:
            url = urljoin(self.options.api_base_url, job.firmware["url"])  # re-read: a retry may bring a new one
            try:
                return fetch(url, part, size, opener=self._opener(url), timeout=self.options.timeout, stop=self._halt,
                             progress=progress, rate=faults.slow_download,
                             tamper=tamper if faults.corrupt_download else None, fail_at=fail_at)
            except Oversize:
                raise _Rejected(TAMPERED) from None
            except DownloadError as exc:
                tries += 1
                if not exc.retryable or tries > self.options.download_retries:
                    raise _Failed(FAILURE_DOWNLOAD, str(exc)) from None
                log.info("%s: download of %s interrupted (%s); resuming", self.name, dep, exc)
                if self._halt.wait(self.options.retry_backoff * 2 ** (tries - 1)):
                    raise Interrupted() from None

    def _verify(self, job: Job, digest: bytes) -> None:
        fw = job.firmware
        part = self._part_path(job)
        try:
            problem = check_image(digest, part.stat().st_size, sha256=fw["sha256"], size=fw["size"],
                                  signature=fw["signature"], signer=fw.get("signer"),
                                  keys=load_trusted_keys(self.options.trusted_keys),
                                  flip_signature=self.options.faults.bad_signature)
        except NoTrustedKeys as exc:
            raise _Failed(FAILURE_VERIFY, str(exc)) from None
        if problem is not None:
            raise _Rejected(problem)
        with self._lock:
            if self._halt.is_set():
                raise Interrupted()
            self._set_state(job, DOWNLOADED)
        self._report(job.deployment_id, DOWNLOADED, attempt=job.attempt)

    def _await_install_window(self) -> None:
        """Block while disconnected or within ``install_hold`` of a connect (Interrupted: cancel or close).

        A cancel sent while the device was away waits in its MQTT session and arrives just after the
        reconnect, on the same lane as on_connect: installing at once (a download completed while
        away, or resumed complete after a restart) would run past it."""
        while True:
            with self._lock:
                since = self._online_since
            left = 0.25 if since is None else self.options.install_hold - (time.monotonic() - since)
            if left <= 0:
                return
            if self._halt.wait(min(left, 0.25)):
                raise Interrupted()

    def _install(self, job: Job) -> None:
        fw = job.firmware
        self._await_install_window()
        with self._lock:
            if self._halt.is_set():
                raise Interrupted()
            self._set_state(job, INSTALLING)  # from here on a cancel no longer stops it
        self._report(job.deployment_id, INSTALLING, attempt=job.attempt)
        if self.options.faults.install_failure:
            raise _Failed(FAILURE_INSTALL, "writing the inactive slot failed (injected)")
        slot_path = self._files() / "slots" / f"slot-{self.slots.inactive}.img"
        try:
            slot = self.slots.install(self._part_path(job), slot_path, version=fw["version"], sha256=fw["sha256"],
                                      deployment_id=job.deployment_id,
                                      max_boots=job.max_boots or self.options.max_boots)
        except OSError as exc:
            raise _Failed(FAILURE_INSTALL, f"writing the inactive slot failed: {exc}") from None
        log.info("%s: %s installed in slot %s; rebooting", self.name, fw["version"], slot)
        self._set_state(job, REBOOTING)
        # Down only once the platform has REBOOTING: resent after the reboot it would follow BOOTED.
        self._report(job.deployment_id, REBOOTING, attempt=job.attempt, after_ack=lambda: self.restart(False))

    # -- boots ------------------------------------------------------------------------------
    def boot(self) -> str:
        """Power-on or reboot: the bootloader picks the slot; returns the firmware version now running.
        Cheap (one small file at most): the agent calls it before it connects."""
        outcome = self.slots.boot()
        with self._lock:
            self._boot_outcome = outcome
        return self.slots.running_version

    def on_connect(self) -> None:
        """After every connect (a lane): report how the last boot went, resume an interrupted job."""
        with self._lock:
            outcome, self._boot_outcome = self._boot_outcome, None
            job = self._job
            self._online_since = time.monotonic()
        if outcome is not None:
            dep = outcome.deployment_id
            attempt = job.attempt if job is not None and job.deployment_id == dep else None
            if outcome.kind == "booted":
                if job is not None and job.deployment_id == dep:
                    self._set_state(job, BOOTED)
                self._report(dep, BOOTED, attempt=attempt, firmware_version=outcome.version, boot=outcome.boots,
                             after_ack=lambda: self._submit(self._self_test, dep))
            else:
                log.warning("%s: %s did not come up healthy (%s); back on %s", self.name, outcome.trial_version,
                            outcome.reason, outcome.version)
                self._finish(dep, ROLLED_BACK, attempt or 0)
                self._report(dep, ROLLED_BACK, attempt=attempt, firmware_version=outcome.version,
                             error=outcome.reason)
        self._resume()

    def on_disconnect(self) -> None:
        """After every disconnect (the same lane as on_connect, so in order): no install starts until
        the next connect."""
        with self._lock:
            self._online_since = None

    def _resume(self) -> None:
        with self._lock:
            job = self._job
            if job is None or self._closing or self._worker_alive():
                return
            if job.state in RESUMABLE:
                if self._needs_fresh_url(job):
                    # The platform re-sends the notify (a fresh url) when the device is back: _refresh.
                    log.info("%s: deployment %s: the download url expired; waiting for its notify", self.name,
                             job.deployment_id)
                    return
                log.info("%s: resuming deployment %s from %s", self.name, job.deployment_id, job.state)
                self._start(job)
            elif self.slots.trial() is None:
                # Rebooted, but the bootloader has nothing armed for it: the outcome was decided
                # and the device stopped before it wrote it down.
                done = COMMITTED if self.running_version == job.firmware.get("version") else ROLLED_BACK
                self._finish(job.deployment_id, done, job.attempt)

    def _needs_fresh_url(self, job: Job) -> bool:
        """The download still has to ask the server, and its signed url has expired."""
        if job.state not in (RECEIVED, DOWNLOADING):
            return False
        part = self._part_path(job)
        if part.exists() and part.stat().st_size == job.firmware["size"]:
            return False
        return url_expired(job.firmware["url"], self.clock() // 1000)

    def _self_test(self, dep: str) -> None:
        trial = self.slots.trial()
        if trial is None or trial["deployment_id"] != dep or self.slots.running_slot != trial["slot"]:
            return
        if self.options.faults.crash_loop:
            log.warning("%s: %s crashes after booting (injected)", self.name, trial["version"])
            self.restart(True)
            return
        try:
            healthy = bool(self.self_test())
        except Exception:
            log.exception("%s: self-test of %s raised", self.name, trial["version"])
            healthy = False
        if not healthy:
            log.warning("%s: self-test of %s failed; falling back", self.name, trial["version"])
            self.slots.fail_trial()
            self.restart(False)
            return
        self.slots.commit()
        with self._lock:
            job = self._job
            self._finish(dep, COMMITTED, job.attempt if job and job.deployment_id == dep else 0)
        log.info("%s: %s committed", self.name, trial["version"])

    # -- shutdown ---------------------------------------------------------------------------
    def close(self, timeout: float = 0.0) -> None:
        """Stop the worker at its next step (a download stays resumable); wait up to ``timeout``."""
        with self._lock:
            self._closing = True
            self._halt.set()
            worker = self._worker
        if worker is not None and timeout > 0:
            worker.join(timeout)
        if self._tmp is not None and not (worker is not None and worker.is_alive()):
            shutil.rmtree(self._tmp, ignore_errors=True)


def options_from(config: Any) -> OtaOptions:
    """OtaOptions from an AgentConfig's OTA fields (device/agent.py)."""
    return OtaOptions(api_base_url=config.api_base_url, trusted_keys=tuple(str(p) for p in config.firmware_keys),
                      faults=config.ota_faults, max_boots=config.ota_max_boots, device_type=config.device_type)

