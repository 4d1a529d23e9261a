"""OTA benchmark against the RUNNING stack: a staged rollout to 10,000 simulated devices, and firmware downloads.

    .venv/bin/python bench/ota_bench.py [--devices 10000] [--rate-per-minute 60000] [--waves 1%,10%,100%]
        [--health-window-ms 2000] [--download-clients 8] [--download-image-mb 20] [--download-seconds 20]
        [--warmup-max-s 60] [--skip-rollout] [--skip-download] [--keep-devices]

The devices are simulated at the Kafka level, not over MQTT, so 10,000 of them cost one thread of
this process. They are registry rows without certificates (ids ``otab-<run>-NNNNN``, device type
and group ``otab-<run>``: new every run, so no earlier run's deployment holds them). The bench
reads the ``downlink`` topic (the OTA job's ``ota/notify`` records for its devices) and answers
each install notice by producing, keyed by device id, what the bridge would produce for a device
that installs at once (fleet/contract/envelope.py's ``handle_uplink``, schema-checked):
``ota-status`` RECEIVED, DOWNLOADING, DOWNLOADED, INSTALLING, REBOOTING; ``--reboot-ms`` later on
``device-events`` the status ``{"online": false, "reason": "reboot"}`` and ``{"online": true,
"firmware_version": <new>}``, then ``ota-status`` BOOTED (boot 1). Every device announced itself
online (``device-events``) before any deployment. What is measured is the platform past the
bridge: the API, Kafka, the OTA job (Flink TaskManager) and Cassandra; not Mosquitto or the
bridge (bench/bridge_bench.py measures those), and the devices take no time to download.

1. **Rollout**: a small image (``--image-kb``, random bytes, ``POST /v1/firmware``), one ``POST
   /v1/ota/deployments`` to the ``--devices`` devices (their ids; their group above 10,000) in
   ``--waves`` at ``--rate-per-minute`` with a ``--health-window-ms`` health window; each wave
   starts once the whole previous one succeeded (threshold 100 %). Polls ``GET
   /v1/ota/deployments/{id}`` until final, printing progress every ``--report-every-s``. Reports:
   * time to finish by the job's clock (created_at -> the final state in the deployment's
     history) against the ideal at the configured rate: per wave, its devices after one second's
     burst of the token bucket at the rate, plus one health window;
   * state transitions per second the job sustained: the deployment's transitions read from
     ``ota-events`` (repeats dropped by (device, seq)) over the span of their timestamps, and in
     the busiest 5 s;
   * notice -> SUCCEEDED p50/p99 (the notice's created_at to the SUCCEEDED transition's ts, both
     the job's clock; the health window is part of it), and notice -> read by the bench;
   * CPU (/proc utime+stime) of the Flink TaskManager (every job's Python runs in it: thread
     mode, so other jobs' work is included), the API, Kafka, Cassandra and this bench, from the
     POST until the deployment was seen final; per transition.
2. **Downloads**: a ``--download-image-mb`` image deployed to ``--download-devices`` other devices
   (device type ``otab-<run>-dl``) that stop answering after DOWNLOADING, so their executions stay
   open and the download gate lets them in. ``--download-clients`` threads, each with its own
   HTTP connection, GET ``--range-kb`` ranges in turn through the image for ``--download-seconds``
   with signed URLs made as the job makes them (fleet/ota/download_urls.download_path, the key in
   settings.ota_url_key_path); one client checks the sha256 of its first whole pass. Reports MB/s
   (10^6 bytes) and the API process's CPU seconds per MB. The deployment is canceled afterwards.

Before any load: the same-run baseline (bench/baseline.py: CPU calibration, raw broker) and every
figure also as a ratio to it; for downloads also the blob store read alone (this process, one
thread, the same ranges), the download figures' own baseline. Then a warm-up (``--warmup-max-s``,
0: none): rollouts of one wave to ``--warmup-devices`` devices (a new image each, no health
window) until three in a row agree within 10 % in transitions/s. The shared stack is never
restarted by a bench: the OTA job's age (Flink REST start-time) is printed, and a job this bench
had to submit is cold (the warm-up's rollouts absorb that). The run's devices are deleted from
the registry at the end (``--keep-devices`` keeps them). One JSON object per run to
var/bench/ota-<time>.json, appended to var/bench/ota.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import heapq
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import baseline  # noqa: E402 - after the sys.path set-up above
import httpx  # noqa: E402 - after the sys.path set-up above
import results  # noqa: E402 - after the sys.path set-up above
from baseline import percentile  # noqa: E402 - after the sys.path set-up above
from e2e_bench import component_pids, cpu_snapshot, ensure_job, job_running_for_s  # noqa: E402 - after the sys.path set-up above
from results import fmt  # noqa: E402 - after the sys.path set-up above

from fleet.config import Settings  # noqa: E402 - after the sys.path set-up above
from fleet.contract.envelope import Routed, handle_uplink  # noqa: E402 - after the sys.path set-up above
from fleet.contract.topics import Downlink, Kafka, Uplink  # noqa: E402 - after the sys.path set-up above
from fleet.ota.deployments import FINAL_DEPLOYMENT, FINAL_EXECUTION, MAX_DEVICE_IDS  # noqa: E402 - after the sys.path set-up above

COMPONENTS = ("flink-tm", "api", "kafka", "cassandra", "bridge", "bench")
OTA_STATUS = Uplink.OTA_STATUS.value
STATUS = Uplink.STATUS.value
INITIAL_VERSION = "0.0.1"  # what every simulated device runs when it first announces itself
ROLLOUT_VERSION = "1.0.0"
DOWNLOAD_VERSION = "2.0.0"
# A device's transitions on the way to success (fleet/ota/execution.py): 8 per device.
SUCCESS_PATH = ("QUEUED", "NOTIFIED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING", "VERIFYING",
                "SUCCEEDED")
MB = 1_000_000


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- arguments -----------------------------------------------------------------------------------


def parse_waves(text: str) -> list[str | int]:
    """'1%,10%,100%' -> ['1%', '10%', '100%']; counts as ints ('100,1000,100%' -> [100, 1000, '100%'])."""
    waves: list[str | int] = []
    for part in (p.strip() for p in text.split(",")):
        if part.endswith("%"):
            try:
                pct = float(part[:-1])
            except ValueError:
                pct = -1.0
            if not 0 < pct <= 100:
                raise argparse.ArgumentTypeError(f"wave size {part!r}: a percent above 0 and at most 100")
            waves.append(part)
        elif part.isdigit() and int(part) > 0:
            waves.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"wave size {part!r}: a percent ('10%') or a device count")
    if not waves:
        raise argparse.ArgumentTypeError("at least one wave")
    return waves


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000, help="simulated devices the rollout targets")
    ap.add_argument("--rate-per-minute", type=float, default=60_000.0, help="the plan's release rate (1-100,000)")
    ap.add_argument("--waves", type=parse_waves, default=parse_waves("1%,10%,100%"),
                    help="wave sizes, percents of the targets or counts; the last takes the rest")
    ap.add_argument("--health-window-ms", type=int, default=2_000, help="the plan's health window")
    ap.add_argument("--image-kb", type=int, default=64, help="size of the rollout's firmware image")
    ap.add_argument("--reboot-ms", type=int, default=200, help="a simulated device's reboot: REBOOTING -> offline/online/BOOTED")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="give up waiting for the rollout after this long")
    ap.add_argument("--poll-s", type=float, default=0.5, help="GET /v1/ota/deployments/{id} interval")
    ap.add_argument("--report-every-s", type=float, default=5.0, help="progress line interval")
    ap.add_argument("--settle-s", type=float, default=3.0, help="wait after the devices announced themselves online")
    ap.add_argument("--warmup-devices", type=int, default=500, help="devices of each warm-up rollout (other ones)")
    ap.add_argument("--warmup-max-s", type=float, default=60.0, help="0: no warm-up")
    ap.add_argument("--download-devices", type=int, default=8, help="devices whose signed URLs the clients use")
    ap.add_argument("--download-clients", type=int, default=8, help="concurrent download clients (threads)")
    ap.add_argument("--download-image-mb", type=float, default=20.0, help="size of the downloaded image, MB")
    ap.add_argument("--range-kb", type=int, default=1024, help="bytes per ranged GET, KiB")
    ap.add_argument("--download-seconds", type=float, default=20.0, help="how long the clients download")
    ap.add_argument("--download-baseline-s", type=float, default=3.0, help="the blob store read alone, seconds")
    ap.add_argument("--baseline-messages", type=int, default=20_000, help="raw broker baseline size (0: CPU only)")
    ap.add_argument("--skip-rollout", action="store_true", help="no warm-up and no rollout: downloads only")
    ap.add_argument("--skip-download", action="store_true", help="the rollout only")
    ap.add_argument("--keep-devices", action="store_true", help="leave the run's devices in the registry")
    ap.add_argument("--api-url", default=None, help="default: the stack's API (api_host, api_port, api_tls)")
    a = ap.parse_args(argv)
    if a.devices < 1 or a.warmup_devices < 1 or a.download_devices < 1 or a.download_clients < 1:
        ap.error("--devices, --warmup-devices, --download-devices and --download-clients must be at least 1")
    if not 1 <= a.rate_per_minute <= 100_000:
        ap.error("--rate-per-minute must be between 1 and 100,000 (the API's bound)")
    if not 0 <= a.health_window_ms <= 86_400_000:
        ap.error("--health-window-ms must be between 0 and 86,400,000")
    if a.range_kb < 1 or a.download_image_mb <= 0 or a.image_kb < 1:
        ap.error("--range-kb, --download-image-mb and --image-kb must be positive")
    return a


# -- the simulated device ------------------------------------------------------------------------


class Answer(NamedTuple):
    delay_ms: int  # after the notice arrived
    suffix: str  # devices/{id}/<suffix>: ota/status or status
    payload: dict[str, Any]


def device_answers(notice: Mapping[str, Any], current_version: str, *, hold: bool = False,
                   reboot_ms: int = 200) -> list[Answer]:
    """What a simulated device says to one ``ota/notify`` payload, in order.

    An install runs through at once: RECEIVED, DOWNLOADING, DOWNLOADED, INSTALLING, REBOOTING; then,
    after the reboot, offline (still the old version, as device/agent.py says it), online on the new
    version, BOOTED (boot 1). A held device (``hold``) stops at DOWNLOADING: its execution stays
    open, which is what the download gate asks. A cancel, or any other op: nothing.
    """
    if notice.get("op") != "install":
        return []
    dep = str(notice["deployment_id"])
    new = str(notice["firmware"]["version"])

    def ota(state: str, **extra: Any) -> Answer:
        return Answer(0, OTA_STATUS, {"deployment_id": dep, "state": state, **extra})

    out = [ota("RECEIVED"), ota("DOWNLOADING", progress=0)]
    if hold:
        return out
    out += [ota("DOWNLOADED"), ota("INSTALLING"), ota("REBOOTING")]
    out += [Answer(reboot_ms, STATUS, {"online": False, "firmware_version": current_version, "reason": "reboot"}),
            Answer(reboot_ms, STATUS, {"online": True, "firmware_version": new}),
            Answer(reboot_ms, OTA_STATUS, {"deployment_id": dep, "state": "BOOTED", "firmware_version": new, "boot": 1})]
    return out


def envelope(device_id: str, suffix: str, payload: Mapping[str, Any], at_ms: int,
             max_bytes: int = 16384) -> tuple[str, bytes, bytes]:
    """(logical Kafka topic, key, value) the bridge would produce for this device message, sent at ``at_ms``."""
    raw = json.dumps({**payload, "ts": at_ms}, separators=(",", ":")).encode()
    out = handle_uplink(f"devices/{device_id}/{suffix}", raw, at_ms, max_bytes)
    if not isinstance(out, Routed):
        raise ValueError(f"the bridge would dead-letter devices/{device_id}/{suffix} ({out.reason}): {out.detail}")
    return out.topic, out.key, out.value


# -- what the bench reads of ota-events ----------------------------------------------------------


class Tally:
    """One deployment's execution transitions as read from ``ota-events`` (at least once: a repeat
    of (device, seq) is dropped), with the job's timestamps."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.repeats = 0
        self.by_state: Counter[str] = Counter()
        self.per_second: Counter[int] = Counter()
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.succeeded_at: dict[str, int] = {}
        self.finals = 0  # devices whose execution reached a final state

    def add(self, event: Mapping[str, Any]) -> bool:
        device_id, seq, to, ts = event.get("device_id"), event.get("seq"), event.get("to"), event.get("ts")
        if not isinstance(device_id, str) or type(seq) is not int or not isinstance(to, str) or type(ts) is not int:
            return False
        if (device_id, seq) in self.seen:
            self.repeats += 1
            return False
        self.seen.add((device_id, seq))
        self.by_state[to] += 1
        self.per_second[ts // 1000] += 1
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if to in FINAL_EXECUTION:
            self.finals += 1
            if to == "SUCCEEDED":
                self.succeeded_at[device_id] = ts
        return True

    @property
    def transitions(self) -> int:
        return len(self.seen)

    @property
    def span_s(self) -> float | None:
        if self.first_ts is None or self.last_ts is None or self.last_ts <= self.first_ts:
            return None
        return (self.last_ts - self.first_ts) / 1000

    def per_s(self) -> float | None:
        span = self.span_s
        return self.transitions / span if span else None

    def peak_per_s(self, window_s: int = 5) -> float | None:
        """Transitions per second in the busiest ``window_s`` whole seconds (by the job's ts)."""
        if not self.per_second:
            return None
        first, last = min(self.per_second), max(self.per_second)
        if last - first + 1 < window_s:
            return None
        best = max(sum(self.per_second.get(s, 0) for s in range(start, start + window_s))
                   for start in range(first, last - window_s + 2))
        return best / window_s


# -- the devices, at the Kafka level -------------------------------------------------------------


class KafkaFleet:
    """Every simulated device of the run, in one thread: reads ``downlink`` (the notices for ids
    under ``prefix``) and ``ota-events`` (their transitions), produces their answers (device_answers,
    as the bridge's envelopes) when due. Reading starts at the topics' ends when it is made."""

    def __init__(self, settings: Settings, prefix: str, hold_prefix: str, reboot_ms: int):
        from confluent_kafka import Consumer, Producer

        self.settings = settings
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        self.hold_prefix = hold_prefix
        self.reboot_ms = reboot_ms
        self.max_bytes = settings.max_payload_bytes
        self.downlink_topic = settings.topic(Kafka.DOWNLINK)
        self.events_topic = settings.topic(Kafka.OTA_EVENTS)
        client_id = f"ota-bench-{prefix}"
        # As the bridge's producer (bridge/uplink.py): idempotent, the Java client's partitioner.
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "client.id": client_id,
                                  "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                  "partitioner": "murmur2_random", "on_delivery": self._delivered,
                                  "delivery.report.only.error": True})
        # assign() without commits: the group id is never joined (librdkafka insists on one).
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "client.id": client_id,
                                  "group.id": f"{client_id}-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                                  "enable.auto.offset.store": False, "auto.offset.reset": "latest",
                                  "fetch.wait.max.ms": 10})
        self._assign_at_end([self.downlink_topic, self.events_topic])
        self.lock = threading.Lock()
        self.versions: dict[str, str] = {}  # device -> the firmware it runs
        self.notices: dict[tuple[str, str], tuple[int, int]] = {}  # (deployment, device) -> (created_at, read at)
        self.tallies: dict[str, Tally] = {}
        self.counts: Counter[str] = Counter()
        self._due: list[tuple[float, int, str, str, dict[str, Any]]] = []  # (monotonic due, order, device, suffix, payload)
        self._order = itertools.count()
        self._scheduled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-bench-fleet", daemon=True)
        self.error: BaseException | None = None

    def _assign_at_end(self, topics: list[str]) -> None:
        from confluent_kafka import TopicPartition

        meta = self.consumer.list_topics(timeout=10)
        parts = []
        for topic in topics:
            tm = meta.topics.get(topic)
            if tm is None or tm.error is not None or not tm.partitions:
                raise SystemExit(f"Kafka topic {topic} not found at {self.settings.kafka_bootstrap}: is the stack up?")
            for p in sorted(tm.partitions):
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                parts.append(TopicPartition(topic, p, high))
        self.consumer.assign(parts)

    def start(self) -> KafkaFleet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(10)
        self.consumer.close()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the simulated devices' thread failed: {self.error!r}") from self.error

    # -- called from the main thread ---------------------------------------------------------------

    def announce(self, device_ids: Iterable[str], version: str = INITIAL_VERSION) -> None:
        """Each device online on ``version`` (device-events), as its first connect would say."""
        with self.lock:
            for device_id in device_ids:
                self.versions[device_id] = version
                self._schedule(0.0, device_id, STATUS, {"online": True, "firmware_version": version})

    def drain(self, timeout: float = 30.0) -> None:
        """Until every answer due by now is produced and Kafka acknowledged it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with self.lock:
                if self.counts["produced"] >= self._scheduled:
                    break
            time.sleep(0.05)
        self.producer.flush(max(0.0, deadline - time.monotonic()))

    def seen(self, deployment_id: str) -> tuple[int, int, int]:
        """(transitions, final executions, notices) the bench has read of this deployment so far."""
        with self.lock:
            t = self.tallies.get(deployment_id)
            notices = sum(1 for dep, _ in self.notices if dep == deployment_id)
            return (t.transitions, t.finals, notices) if t else (0, 0, notices)

    def snapshot(self, deployment_id: str) -> tuple[Tally, dict[str, tuple[int, int]]]:
        """A copy of the deployment's tally and its notices by device."""
        with self.lock:
            tally = copy.deepcopy(self.tallies.get(deployment_id) or Tally())
            notices = {dev: n for (dep, dev), n in self.notices.items() if dep == deployment_id}
        return tally, notices

    # -- the thread ---------------------------------------------------------------------------------

    def _schedule(self, due: float, device_id: str, suffix: str, payload: dict[str, Any]) -> None:
        heapq.heappush(self._due, (due, next(self._order), device_id, suffix, payload))
        self._scheduled += 1

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.counts["delivery_errors"] += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msgs = self.consumer.consume(num_messages=2000, timeout=0.02)
                at = now_ms()
                with self.lock:
                    for m in msgs:
                        if m.error() is not None:
                            self.counts["consumer_errors"] += 1
                        elif m.topic() == self.downlink_topic:
                            key = m.key()
                            if key is not None and key.startswith(self._prefix_bytes):
                                self._on_notice(key.decode(), m.value(), at)
                        else:
                            self._on_event(m.value())
                    due = []
                    mono = time.monotonic()
                    while self._due and self._due[0][0] <= mono:
                        due.append(heapq.heappop(self._due))
                for _, _, device_id, suffix, payload in due:
                    self._produce(device_id, suffix, payload)
                self.producer.poll(0)
        except BaseException as exc:  # reported by the main thread (check)
            self.error = exc

    def _produce(self, device_id: str, suffix: str, payload: dict[str, Any]) -> None:
        topic, key, value = envelope(device_id, suffix, payload, now_ms(), self.max_bytes)
        while True:
            try:
                self.producer.produce(self.settings.topic(topic), value=value, key=key)
                break
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.05)
        self.counts["produced"] += 1

    def _on_notice(self, device_id: str, raw: bytes | None, at: int) -> None:
        try:
            record = json.loads(raw or b"")  # a null value is malformed too
            notice = record["payload"]
            op, dep = notice["op"], notice["deployment_id"]
        except (ValueError, KeyError, TypeError):
            self.counts["malformed_notices"] += 1
            return
        if record.get("suffix") != Downlink.OTA_NOTIFY.value:
            return
        if op != "install":
            self.counts["cancel_notices"] += 1
            return
        if (dep, device_id) in self.notices:
            # Sent again (the job saw a reconnect before the device's last report): a device acts once.
            self.counts["repeated_notices"] += 1
            return
        created = record.get("created_at")
        self.notices[(dep, device_id)] = (created if type(created) is int else at, at)
        self.counts["notices"] += 1
        hold = device_id.startswith(self.hold_prefix)
        start = time.monotonic()
        for a in device_answers(notice, self.versions.get(device_id, INITIAL_VERSION), hold=hold,
                                reboot_ms=self.reboot_ms):
            self._schedule(start + a.delay_ms / 1000, device_id, a.suffix, a.payload)
        if not hold:
            self.versions[device_id] = str(notice["firmware"]["version"])

    def _on_event(self, raw: bytes | None) -> None:
        try:
            event = json.loads(raw or b"")
            device_id, dep = event["device_id"], event["deployment_id"]
        except (ValueError, KeyError, TypeError):
            return
        if event.get("type") == "transition" and isinstance(device_id, str) and device_id.startswith(self.prefix) \
                and isinstance(dep, str):
            self.tallies.setdefault(dep, Tally()).add(event)


# -- registry, firmware, deployments -------------------------------------------------------------


def register(settings: Settings, device_ids: list[str], device_type: str, group: str) -> list[Any]:
    """Registry rows for the devices (active, no certificate: they never connect); 16 at a time."""
    from fleet.identity.devices import Device, DeviceStatus, RegistryError
    from fleet.identity.registry import DeviceRegistry
    from fleet.infra.cassandra import CassandraSessions

    registry = DeviceRegistry(CassandraSessions(settings).get())
    done = 0
    lock = threading.Lock()
    step = max(1, len(device_ids) // 10)

    def one(device_id: str) -> Any:
        nonlocal done
        device = Device(device_id, DeviceStatus.active, device_type, groups=frozenset({group}))
        for attempt in range(3):
            try:
                device = registry.create(device)
                break
            except RegistryError:  # an earlier attempt's insert went through after all
                break
            except Exception:  # a Cassandra timeout: try again
                if attempt == 2:
                    raise
                time.sleep(0.5)
        with lock:
            done += 1
            if done % step == 0:
                progress(f"  registered {done:,}/{len(device_ids):,} ({device_type})")
        return device

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, device_ids))


def delete_devices(settings: Settings, devices: list[Any]) -> None:
    from fleet.identity.registry import DeviceRegistry
    from fleet.infra.cassandra import CassandraSessions

    registry = DeviceRegistry(CassandraSessions(settings).get())
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(registry.delete, devices))


def upload_firmware(api: httpx.Client, image: bytes, device_type: str, version: str) -> dict[str, Any]:
    r = api.post("/v1/firmware", content=image, params={"version": version, "device_type": device_type},
                 headers={"Content-Type": "application/octet-stream"}, timeout=300.0)
    if r.status_code not in (200, 201):
        raise SystemExit(f"POST /v1/firmware ({device_type} {version}): HTTP {r.status_code} {r.text[:300]}")
    return r.json()


def target_for(device_ids: list[str], group: str) -> dict[str, Any]:
    """The devices by id (the API lists at most MAX_DEVICE_IDS), else their group (only they are in it)."""
    return {"device_ids": device_ids} if len(device_ids) <= MAX_DEVICE_IDS else {"group": group}


def rollout_plan(waves: list[str | int], rate_per_minute: float, health_window_ms: int) -> dict[str, Any]:
    return {"waves": [{"size": w} for w in waves], "rate_per_minute": rate_per_minute,
            "device": {"health_window_ms": health_window_ms}}


def create_deployment(api: httpx.Client, name: str, firmware: dict[str, Any], target: dict[str, Any],
                      plan: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/ota/deployments", json={"name": name, "firmware_id": firmware["firmware_id"], "target": target,
                                              "plan": plan}, timeout=120.0)
    if r.status_code != 201:
        raise SystemExit(f"POST /v1/ota/deployments ({name}): HTTP {r.status_code} {r.text[:300]}")
    return r.json()


def get_deployment(api: httpx.Client, deployment_id: str) -> dict[str, Any] | None:
    try:
        r = api.get(f"/v1/ota/deployments/{deployment_id}")
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def cancel_deployment(api: httpx.Client, deployment_id: str) -> None:
    try:
        api.post(f"/v1/ota/deployments/{deployment_id}/cancel")
    except httpx.HTTPError:
        pass


def format_counts(counts: Mapping[str, int]) -> str:
    """Non-zero execution counts, back along the path to success, then the others: 'SUCCEEDED 9,000, VERIFYING 40, FAILED 2'."""
    order = {s: i for i, s in enumerate(reversed(SUCCESS_PATH))}
    shown = sorted(((s, n) for s, n in counts.items() if n), key=lambda x: (order.get(x[0], len(order)), x[0]))
    return ", ".join(f"{s} {n:,}" for s, n in shown) or "none yet"


def progress_line(elapsed_s: float, view: Mapping[str, Any], transitions: int, notices: int) -> str:
    waves = view.get("waves") or []
    return (f"  {elapsed_s:5.0f} s: {view.get('state')} wave {int(view.get('wave') or 0) + 1}/{max(len(waves), 1)}, "
            f"released {int(view.get('released') or 0):,}/{int(view.get('target_count') or 0):,}; "
            f"{format_counts(view.get('counts') or {})}; bench read {transitions:,} transitions, {notices:,} notices")


def follow(api: httpx.Client, fleet: KafkaFleet, deployment: dict[str, Any], *, timeout_s: float, poll_s: float,
           report_every_s: float, label: str) -> tuple[dict[str, Any], float]:
    """Poll the deployment until final (or the timeout); (its last view, seconds since the call)."""
    dep_id = deployment["deployment_id"]
    t0 = time.monotonic()
    last = deployment
    next_report = t0 + report_every_s
    while time.monotonic() - t0 < timeout_s:
        fleet.check()
        view = get_deployment(api, dep_id)
        if view is not None:
            last = view
            if view["final"]:
                break
        if report_every_s > 0 and time.monotonic() >= next_report:
            next_report += report_every_s
            transitions, _, notices = fleet.seen(dep_id)
            progress(f"{label}{progress_line(time.monotonic() - t0, last, transitions, notices)}")
        time.sleep(poll_s)
    elapsed = time.monotonic() - t0
    # The bench's reading of ota-events trails the job's count of them by moments.
    want = sum(n for s, n in (last.get("counts") or {}).items() if s in FINAL_EXECUTION)
    deadline = time.monotonic() + 10
    while fleet.seen(dep_id)[1] < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return last, elapsed


# -- figures -------------------------------------------------------------------------------------


def ideal_seconds(wave_sizes: list[int], rate_per_minute: float, health_window_ms: int) -> float:
    """The fastest the plan allows: per wave, its devices after the token bucket's burst (one
    second's worth) at the rate, then one health window before the next wave starts (each wave
    waits for the whole previous one to succeed); pipeline latency counts as zero."""
    per_s = rate_per_minute / 60
    burst = max(1.0, per_s)
    return sum(max(0.0, n - int(burst)) / per_s + health_window_ms / 1000 for n in wave_sizes)


def history_ts(view: Mapping[str, Any], states: Iterable[str], last: bool = True) -> int | None:
    """The ts of the deployment history's last (or first) entry into one of ``states``."""
    wanted = set(states)
    entries = [h for h in view.get("history") or [] if h.get("to") in wanted and isinstance(h.get("ts"), int)]
    if not entries:
        return None
    return entries[-1]["ts"] if last else entries[0]["ts"]


def cpu_deltas(cpu0: Mapping[str, float], cpu1: Mapping[str, float]) -> dict[str, float]:
    return {c: round(cpu1.get(c, 0.0) - cpu0.get(c, 0.0), 3) for c in (*COMPONENTS, "machine")}


def rollout_figures(view: Mapping[str, Any], tally: Tally, notices: Mapping[str, tuple[int, int]], *,
                    health_window_ms: int, rate_per_minute: float, wall_s: float, cpu_s: Mapping[str, float],
                    load_avg: float) -> dict[str, Any]:
    """The rollout's figures from the deployment's last view, the bench's reading of ota-events and
    of the notices (device -> (created_at, read at)), and the CPU seconds of the window."""
    created_at = view.get("created_at")
    final_ts = history_ts(view, FINAL_DEPLOYMENT)
    running_ts = history_ts(view, ("RUNNING",), last=False)
    sizes = [int(w["size"]) for w in view.get("waves") or []]
    ideal = ideal_seconds(sizes, rate_per_minute, health_window_ms)
    finish = (final_ts - created_at) / 1000 if final_ts is not None and isinstance(created_at, int) else None
    to_succeeded = [float(ts - notices[d][0]) for d, ts in tally.succeeded_at.items() if d in notices]
    to_bench = [float(read - created) for created, read in notices.values()]
    n = tally.transitions
    per_transition = {c: round(v / n * 1e6) if n else None for c, v in cpu_s.items()}
    return {
        "deployment_id": view.get("deployment_id"), "state": view.get("state"), "final": bool(view.get("final")),
        "reason": view.get("reason"), "target_count": view.get("target_count"), "released": view.get("released"),
        "counts": {s: c for s, c in (view.get("counts") or {}).items() if c}, "wave_sizes": sizes,
        "rate_per_minute": rate_per_minute, "health_window_ms": health_window_ms,
        "start_s": (running_ts - created_at) / 1000 if running_ts is not None and isinstance(created_at, int) else None,
        "finish_s": finish, "ideal_s": round(ideal, 3), "finish_vs_ideal": baseline.ratio(finish, ideal),
        "transitions": n, "transition_repeats": tally.repeats, "transitions_by_state": dict(tally.by_state),
        "transitions_span_s": tally.span_s, "transitions_per_s": tally.per_s(), "peak_5s_transitions_per_s":
            tally.peak_per_s(5),
        "notices": len(notices), "succeeded_seen": len(tally.succeeded_at),
        "notice_to_succeeded_p50_ms": percentile(to_succeeded, 50),
        "notice_to_succeeded_p99_ms": percentile(to_succeeded, 99),
        "notice_to_succeeded_max_ms": max(to_succeeded) if to_succeeded else None,
        "notice_to_bench_p50_ms": percentile(to_bench, 50), "notice_to_bench_p99_ms": percentile(to_bench, 99),
        "wall_s": round(wall_s, 2), "cpu_s": dict(cpu_s),
        "flink_tm_cores": round(cpu_s.get("flink-tm", 0.0) / wall_s, 2) if wall_s > 0 else None,
        "cpu_us_per_transition": per_transition, "load_avg": round(load_avg, 2),
    }


def download_figures(*, bytes_read: int, requests: int, errors: int, error_examples: list[str], seconds: float,
                     clients: int, range_bytes: int, size: int, sha256_ok: bool | None, cpu_s: Mapping[str, float],
                     store: Mapping[str, Any], load_avg: float) -> dict[str, Any]:
    mb = bytes_read / MB
    return {"clients": clients, "range_bytes": range_bytes, "image_bytes": size, "seconds": round(seconds, 2),
            "bytes": bytes_read, "requests": requests, "errors": errors, "error_examples": error_examples[:3],
            "mb_per_s": mb / seconds if seconds > 0 else None, "sha256_ok": sha256_ok,
            "api_cpu_s": cpu_s.get("api"), "api_cpu_s_per_mb": cpu_s.get("api", 0.0) / mb if mb else None,
            "api_cores": round(cpu_s.get("api", 0.0) / seconds, 2) if seconds > 0 else None,
            "bench_cpu_s_per_mb": cpu_s.get("bench", 0.0) / mb if mb else None,
            "machine_cpu_s_per_mb": cpu_s.get("machine", 0.0) / mb if mb else None,
            "cpu_s": dict(cpu_s), "store_read": dict(store), "load_avg": round(load_avg, 2)}


def run_ratios(res: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures as ratios to the same-run baselines (bench/README.md's table names them)."""
    base = res["baseline"]
    broker, cal = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    out: dict[str, float | None] = {}
    ro = res.get("rollout")
    if ro:
        per = ro["cpu_us_per_transition"]
        out.update(finish_vs_ideal=ro["finish_vs_ideal"],
                   transitions_per_s_vs_raw_broker=baseline.ratio(ro["transitions_per_s"], broker.get("rate")),
                   flink_tm_us_per_transition_vs_calibration=baseline.ratio(per.get("flink-tm"), cal),
                   machine_us_per_transition_vs_calibration=baseline.ratio(per.get("machine"), cal))
    dl = res.get("download")
    if dl:
        store = dl["store_read"]
        api_us_per_mb = dl["api_cpu_s_per_mb"] * 1e6 if dl["api_cpu_s_per_mb"] is not None else None
        out.update(download_mb_per_s_vs_store_read=baseline.ratio(dl["mb_per_s"], store.get("mb_per_s")),
                   api_cpu_per_mb_vs_store_read=baseline.ratio(dl["api_cpu_s_per_mb"], store.get("cpu_s_per_mb")),
                   api_us_per_mb_vs_calibration=baseline.ratio(api_us_per_mb, cal))
    return out


def format_report(res: Mapping[str, Any]) -> str:
    base = res["baseline"]
    broker, cal = base.get("broker") or {}, base["cpu"]["us_per_op_best"]
    lines: list[str] = []
    age = res.get("job_running_for_s")
    lines.append(f"OTA job {res.get('job_id')}: running for {fmt(age)} s (Flink REST start-time) when this run started"
                 + ("; submitted by this run, so cold at first" if res.get("job_submitted") else "") + "\n")
    ro = res.get("rollout")
    if ro:
        waves = ", ".join(f"{n:,}" for n in ro["wave_sizes"])
        lines.append(f"rollout to {ro['target_count']:,} simulated devices (waves {waves}; "
                     f"{ro['rate_per_minute']:,.0f}/min; health window {ro['health_window_ms'] / 1000:g} s): "
                     f"{ro['state']}" + (f" ({ro['reason']})" if ro.get("reason") else "") + "\n")
        lines.append(f"  finished {fmt(ro['finish_s'], '.1f')} s after its creation (job clock; started "
                     f"{fmt(ro['start_s'], '.1f')} s); ideal at the configured rate {ro['ideal_s']:.1f} s: "
                     f"{fmt(ro['finish_vs_ideal'], '.2f')} × ideal; counts {format_counts(ro['counts'])}"
                     + (f"; the create request took {ro['create_request_s']:.1f} s" if "create_request_s" in ro else "")
                     + "\n")
        lines.append(f"  transitions: {ro['transitions']:,} in {fmt(ro['transitions_span_s'], '.1f')} s = "
                     f"{fmt(ro['transitions_per_s'])}/s sustained, {fmt(ro['peak_5s_transitions_per_s'])}/s in the "
                     f"busiest 5 s ({ro['transition_repeats']:,} repeats dropped)\n")
        lines.append(f"  notice -> SUCCEEDED p50 {fmt(ro['notice_to_succeeded_p50_ms'])} ms, p99 "
                     f"{fmt(ro['notice_to_succeeded_p99_ms'])} ms ({ro['succeeded_seen']:,} devices; the "
                     f"{ro['health_window_ms']:,} ms health window included); notice -> read by the bench p50 "
                     f"{fmt(ro['notice_to_bench_p50_ms'])} / p99 {fmt(ro['notice_to_bench_p99_ms'])} ms\n")
        c, per = ro["cpu_s"], ro["cpu_us_per_transition"]
        lines.append(f"  CPU s over {ro['wall_s']:.1f} s: Flink TM {c['flink-tm']:.1f} ({fmt(ro['flink_tm_cores'], '.2f')} "
                     f"cores), API {c['api']:.1f}, Kafka {c['kafka']:.1f}, Cassandra {c['cassandra']:.1f}, "
                     f"bench {c['bench']:.1f}, machine {c['machine']:.1f}; us/transition: Flink TM "
                     f"{fmt(per['flink-tm'])}, machine {fmt(per['machine'])} (load avg {ro['load_avg']})\n")
        lines.append(f"  as ratios: transitions/s {baseline.with_ratio(ro['transitions_per_s'], broker.get('rate'))}; "
                     f"Flink TM {baseline.with_ratio(per['flink-tm'], cal, unit=' us/transition')}; "
                     f"machine {baseline.with_ratio(per['machine'], cal, unit=' us/transition')}\n")
    dl = res.get("download")
    if dl:
        st = dl["store_read"]
        sha = {True: "sha256 ok", False: "sha256 MISMATCH", None: "sha256 not checked (no whole pass)"}[dl["sha256_ok"]]
        lines.append(f"downloads: {dl['clients']} clients, {dl['range_bytes'] // 1024:,} KiB ranges of a "
                     f"{dl['image_bytes'] / MB:.1f} MB image for {dl['seconds']:.1f} s: {fmt(dl['mb_per_s'], ',.1f')} MB/s "
                     f"({dl['requests']:,} requests, {dl['errors']} errors, {sha})\n")
        lines.append(f"  API CPU {fmt(dl['api_cpu_s_per_mb'], '.4f')} s/MB ({fmt(dl['api_cores'], '.2f')} cores); "
                     f"bench {fmt(dl['bench_cpu_s_per_mb'], '.4f')} s/MB; machine {fmt(dl['machine_cpu_s_per_mb'], '.4f')} s/MB "
                     f"(load avg {dl['load_avg']})\n")
        lines.append(f"  the blob store read alone (one thread, this process): {fmt(st.get('mb_per_s'), ',.1f')} MB/s, "
                     f"{fmt(st.get('cpu_s_per_mb'), '.4f')} CPU s/MB\n")
        api_us = dl["api_cpu_s_per_mb"] * 1e6 if dl["api_cpu_s_per_mb"] is not None else None
        api_per_mb = baseline.with_ratio(dl["api_cpu_s_per_mb"], st.get("cpu_s_per_mb"), ".4f", " CPU s/MB")
        lines.append(f"  as ratios: {baseline.with_ratio(dl['mb_per_s'], st.get('mb_per_s'), ',.1f', ' MB/s')} "
                     f"(baseline: the store read); API {api_per_mb} (baseline: the store read); "
                     f"API {baseline.with_ratio(api_us, cal, unit=' us/MB')} (baseline: calibration us/op)\n")
    fleet = res.get("fleet") or {}
    lines.append(f"simulated devices: {fleet.get('notices', 0):,} notices answered, {fleet.get('repeated_notices', 0):,} "
                 f"repeats ignored, {fleet.get('cancel_notices', 0):,} cancels, {fleet.get('produced', 0):,} records "
                 f"produced ({fleet.get('delivery_errors', 0)} delivery errors); registering took "
                 f"{fmt(res.get('register_s'), '.1f')} s\n")
    if res.get("warmup"):
        lines.append(results.warmup_line(res["warmup"]))
    return "".join(lines)


# -- the stages ----------------------------------------------------------------------------------


def rollout_stage(a: argparse.Namespace, api: httpx.Client, fleet: KafkaFleet, pids: dict, firmware: dict[str, Any],
                  device_ids: list[str], group: str, plan: dict[str, Any], name: str, created: list[str], *,
                  health_window_ms: int, timeout_s: float, label: str = "", report: bool = True) -> dict[str, Any]:
    """One deployment followed until final; one not final by ``timeout_s`` is canceled (so it holds no
    device) and reported as it stood."""
    cpu0, load0 = cpu_snapshot(pids), os.getloadavg()[0]
    t0 = time.monotonic()
    d = create_deployment(api, name, firmware, target_for(device_ids, group), plan)
    create_s = time.monotonic() - t0
    created.append(d["deployment_id"])
    view, wall = follow(api, fleet, d, timeout_s=timeout_s, poll_s=a.poll_s,
                        report_every_s=a.report_every_s if report else 0, label=label)
    cpu1 = cpu_snapshot(pids)
    if not view.get("final"):
        progress(f"{label}  {d['deployment_id']} not final after {timeout_s:.0f} s: canceling it")
        cancel_deployment(api, d["deployment_id"])
    tally, notices = fleet.snapshot(d["deployment_id"])
    figures = rollout_figures(view, tally, notices, health_window_ms=health_window_ms,
                              rate_per_minute=plan["rate_per_minute"], wall_s=wall + create_s,
                              cpu_s=cpu_deltas(cpu0, cpu1), load_avg=load0)
    figures["create_request_s"] = round(create_s, 2)  # the API resolving and checking the targets
    return figures


def store_read(settings: Settings, sha256: str, size: int, range_bytes: int, seconds: float) -> dict[str, Any]:
    """The blob store alone: the same ranges read in turn in this thread (page cache warm: just uploaded)."""
    from fleet.ota.store import FilesystemBlobStore

    store = FilesystemBlobStore(settings.firmware_path)
    n, offset = 0, 0
    c0, t0 = time.thread_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        end = min(size, offset + range_bytes)
        for chunk in store.open_range(sha256, offset, end):
            n += len(chunk)
        offset = end if end < size else 0
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return {"bytes": n, "seconds": round(wall, 3), "mb_per_s": n / MB / wall if wall else None,
            "cpu_s_per_mb": cpu / (n / MB) if n else None}


def wait_downloadable(api_url: str, verify: Any, paths: list[str], timeout: float = 60.0) -> None:
    """Until every device's URL is let in (206 for its first byte): the execution rows the gate
    reads are written by the job moments after the transitions the deployment counts."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=30.0, verify=verify) as c:
        for path in paths:
            while True:
                try:
                    r = c.get(path, headers={"Range": "bytes=0-0"})
                    if r.status_code == 206:
                        break
                    why = f"HTTP {r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    why = type(exc).__name__
                if time.monotonic() > deadline:
                    raise SystemExit(f"download {path.split('?')[0]}: not let in within {timeout:.0f} s: {why}")
                time.sleep(0.2)


def run_downloads(api_url: str, verify: Any, paths: list[str], clients: int, range_bytes: int, size: int,
                  seconds: float, sha256: str) -> dict[str, Any]:
    """``clients`` threads, each its own connection, GET ranges in turn through the image; client 0
    starts at 0 and hashes its first whole pass."""
    got = [0] * clients
    reqs = [0] * clients
    errors: list[str] = []
    sha_ok: list[bool | None] = [None]
    ranges = max(1, -(-size // range_bytes))
    start_gate = threading.Barrier(clients + 1, timeout=60)

    def client(i: int) -> None:
        path = paths[i % len(paths)]
        offset = (i * ranges // clients) * range_bytes
        digest = hashlib.sha256() if i == 0 else None
        failures = 0
        with httpx.Client(base_url=api_url, timeout=60.0, verify=verify) as c:
            start_gate.wait()
            end = time.monotonic() + seconds
            while time.monotonic() < end and failures < 20:
                stop = min(size, offset + range_bytes) - 1
                try:
                    with c.stream("GET", path, headers={"Range": f"bytes={offset}-{stop}"}) as r:
                        if r.status_code != 206:
                            r.read()
                            errors.append(f"HTTP {r.status_code} {r.text[:120]}")
                            failures += 1
                            time.sleep(0.1)
                            continue
                        n = 0
                        for chunk in r.iter_raw():
                            n += len(chunk)
                            if digest is not None:
                                digest.update(chunk)
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    failures += 1
                    digest = None  # a broken pass cannot be checked
                    continue
                if n != stop - offset + 1:
                    errors.append(f"short range: {n} of {stop - offset + 1} bytes")
                    digest = None
                got[i] += n
                reqs[i] += 1
                offset = stop + 1 if stop + 1 < size else 0
                if digest is not None and offset == 0:
                    sha_ok[0] = digest.hexdigest() == sha256
                    digest = None

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    return {"bytes": sum(got), "requests": sum(reqs), "errors": len(errors), "error_examples": errors[:3],
            "seconds": time.monotonic() - t0, "sha256_ok": sha_ok[0]}


def download_stage(a: argparse.Namespace, settings: Settings, api: httpx.Client, api_url: str, verify: Any,
                   fleet: KafkaFleet, pids: dict, device_ids: list[str], device_type: str, created: list[str]) -> dict:
    from fleet.ota import download_urls

    size = int(a.download_image_mb * MB)
    progress(f"2. downloads: uploading a {size / MB:.1f} MB image ...")
    firmware = upload_firmware(api, os.urandom(size), device_type, DOWNLOAD_VERSION)
    progress_timeout = min(7 * 86_400_000, int((a.download_seconds + 600) * 1000))
    plan = {"waves": [{"size": "100%"}], "rate_per_minute": 100_000,
            "device": {"health_window_ms": 0, "progress_timeout_ms": progress_timeout,
                       "timeout_ms": max(3_600_000, progress_timeout)}}
    d = create_deployment(api, f"ota-bench downloads {device_type}", firmware, {"device_ids": device_ids}, plan)
    dep_id = d["deployment_id"]
    created.append(dep_id)
    deadline = time.monotonic() + 120
    while True:  # until every device's execution is open at DOWNLOADING (the gate then lets it in)
        fleet.check()
        view = get_deployment(api, dep_id) or d
        if (view.get("counts") or {}).get("DOWNLOADING", 0) >= len(device_ids):
            break
        if time.monotonic() > deadline or view.get("final"):
            raise SystemExit(f"download deployment {dep_id}: devices not all DOWNLOADING within 120 s: "
                             f"{view.get('state')} {format_counts(view.get('counts') or {})}")
        time.sleep(0.5)
    key = download_urls.load_or_create_key(settings.ota_url_key_path)
    paths = [download_urls.download_path(key, dep_id, dev, firmware["firmware_id"], time.time(), settings.ota_url_ttl_s)
             for dev in device_ids]
    wait_downloadable(api_url, verify, paths)
    range_bytes = a.range_kb * 1024
    progress(f"   the blob store read alone for {a.download_baseline_s:.0f} s ...")
    store = store_read(settings, firmware["sha256"], firmware["size"], range_bytes, a.download_baseline_s)
    progress(f"   {a.download_clients} clients for {a.download_seconds:.0f} s ...")
    cpu0, load0 = cpu_snapshot(pids), os.getloadavg()[0]
    raw = run_downloads(api_url, verify, paths, a.download_clients, range_bytes, firmware["size"], a.download_seconds,
                        firmware["sha256"])
    cpu1 = cpu_snapshot(pids)
    cancel_deployment(api, dep_id)  # the held devices are DOWNLOADING: they become CANCELED
    return download_figures(bytes_read=raw["bytes"], requests=raw["requests"], errors=raw["errors"],
                            error_examples=raw["error_examples"], seconds=raw["seconds"], clients=a.download_clients,
                            range_bytes=range_bytes, size=firmware["size"], sha256_ok=raw["sha256_ok"],
                            cpu_s=cpu_deltas(cpu0, cpu1), store=store, load_avg=load0)


def api_client_settings(settings: Settings, api_url: str | None) -> tuple[str, Any]:
    """The API's base URL and the httpx ``verify`` for it (the platform CA when it serves HTTPS)."""
    if api_url is None:
        scheme = "https" if settings.api_tls else "http"
        api_url = f"{scheme}://{settings.api_host}:{settings.api_port}"
    if api_url.startswith("https"):
        from fleet.identity.pki import LocalPKI

        return api_url, str(LocalPKI(settings.pki_dir).ca_chain_path)
    return api_url, True


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    settings = Settings.from_env()
    bench_dir = settings.var_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    from devtools.stack import flink

    was_running = any(j["name"] == "ota" and j["state"] == "RUNNING" for j in flink.list_jobs(settings))
    job_id = ensure_job(settings, "ota")
    age = job_running_for_s(settings, job_id)
    base = baseline.measure(settings, broker=a.baseline_messages > 0, broker_messages=a.baseline_messages)
    api_url, verify = api_client_settings(settings, a.api_url)

    run = uuid.uuid4().hex[:6]
    prefix = f"otab-{run}"
    warm = a.warmup_max_s > 0 and not a.skip_rollout
    main_ids = [] if a.skip_rollout else [f"{prefix}-{i:05d}" for i in range(a.devices)]
    warm_ids = [f"{prefix}-w{i:04d}" for i in range(a.warmup_devices)] if warm else []
    dl_ids = [] if a.skip_download else [f"{prefix}-dl{i:03d}" for i in range(a.download_devices)]
    result: dict[str, Any] = {"at": dt.datetime.now(dt.UTC).isoformat(), "cores": os.cpu_count(), "args": vars(a),
                              "run": run, "baseline": base, "job_id": job_id, "job_running_for_s": age,
                              "job_submitted": not was_running}

    progress(f"registering {len(main_ids) + len(warm_ids) + len(dl_ids):,} devices (run {run}) ...")
    before = time.monotonic()
    registered = register(settings, main_ids, prefix, prefix) if main_ids else []
    registered += register(settings, warm_ids, f"{prefix}-w", f"{prefix}-w") if warm_ids else []
    registered += register(settings, dl_ids, f"{prefix}-dl", f"{prefix}-dl") if dl_ids else []
    result["register_s"] = round(time.monotonic() - before, 1)

    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    _, key = ApiKeyStore(CassandraSessions(settings).get()).create(
        f"ota-bench-{run}", Role.operator, None, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    api = httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=60.0, verify=verify)
    fleet = KafkaFleet(settings, f"{prefix}-", f"{prefix}-dl", a.reboot_ms).start()
    pids = component_pids(settings)
    created: list[str] = []
    try:
        progress(f"announcing {len(registered):,} devices online (device-events) ...")
        fleet.announce(main_ids + warm_ids + dl_ids)
        fleet.drain()
        time.sleep(a.settle_s)  # the OTA job reads them before the first assignment
        if main_ids:
            image = os.urandom(a.image_kb * 1024)
            if warm:
                progress(f"warm-up: rollouts to {len(warm_ids):,} devices at {a.rate_per_minute:,.0f}/min, "
                         f"no health window (<= {a.warmup_max_s:.0f} s):")
                counter = itertools.count(1)

                def window() -> float | None:
                    k = next(counter)
                    fw = upload_firmware(api, image + k.to_bytes(4, "big"), f"{prefix}-w", f"0.{k}.0")
                    plan = rollout_plan(["100%"], a.rate_per_minute, 0)
                    ro = rollout_stage(a, api, fleet, pids, fw, warm_ids, f"{prefix}-w", plan,
                                       f"ota-bench warm-up {k}", created, health_window_ms=0,
                                       timeout_s=min(a.timeout_s, 120.0), report=False)
                    return ro["transitions_per_s"] if ro["state"] == "SUCCEEDED" else None

                result["warmup"] = baseline.warm_up(window, max_seconds=a.warmup_max_s, label="transitions/s")
            firmware = upload_firmware(api, image, prefix, ROLLOUT_VERSION)
            plan = rollout_plan(a.waves, a.rate_per_minute, a.health_window_ms)
            progress(f"1. rollout to {len(main_ids):,} devices, waves {','.join(map(str, a.waves))}, "
                     f"{a.rate_per_minute:,.0f}/min, health window {a.health_window_ms:,} ms ...")
            result["rollout"] = rollout_stage(a, api, fleet, pids, firmware, main_ids, prefix, plan,
                                              f"ota-bench rollout {run}", created,
                                              health_window_ms=a.health_window_ms, timeout_s=a.timeout_s,
                                              label="  rollout:")
            progress(f"   {json.dumps(result['rollout'], default=str)}")
        if dl_ids:
            result["download"] = download_stage(a, settings, api, api_url, verify, fleet, pids, dl_ids,
                                                f"{prefix}-dl", created)
            progress(f"   {json.dumps(result['download'], default=str)}")
    finally:
        for dep_id in created:  # none of the run's deployments stays open (an interrupted run included)
            view = get_deployment(api, dep_id)
            if view is not None and not view["final"]:
                cancel_deployment(api, dep_id)
        result["fleet"] = dict(fleet.counts)
        fleet.stop()
        api.close()
        if registered and not a.keep_devices:
            progress(f"deleting the run's {len(registered):,} devices from the registry ...")
            delete_devices(settings, registered)
    result["ratios"] = run_ratios(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    sys.stdout.write(format_report(result))
    results.save(result, bench_dir, "ota")
    return 0


if __name__ == "__main__":
    sys.exit(main())
