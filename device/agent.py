"""The reference device agent: mutual TLS, MQTT 5, telemetry at QoS 1, status with a last will.

What a firmware author should copy (see docs for the topic contract):
- connect with the device's own key and certificate (CN = device id) and verify the broker
  against the platform CA chain;
- a last will ``{"online": false, "reason": "connection_lost"}`` on ``devices/{id}/status``
  (retained, QoS 1), and after every connect a retained ``{"online": true, ...}``; a clean
  shutdown publishes ``{"online": false, "reason": "shutdown"}`` before DISCONNECT;
- telemetry ``{ts, seq, metrics, attrs}`` at QoS 1, ``seq`` +1 per message and persisted;
- messages published while offline, and those not acknowledged before a disconnect, stay
  buffered (bounded) and are sent again in order after reconnecting (paho keeps its outgoing
  QoS 1 queue across reconnects and resends unacknowledged ones with DUP set);
- reconnect with exponential backoff and jitter, so a fleet doesn't stampede a restarted broker;
- downlink: subscribe to ``devices/{id}/shadow/#`` (no-local, so our own updates don't come back)
  and ``devices/{id}/commands`` before announcing online; shadow sync (device/shadow_sync.py:
  apply deltas through ``apply_desired``, report what was applied, get when there is no local
  state) and commands (device/commands.py: dedup by command id across restarts, receipt, result;
  ``agent.commands.register(name, fn)``, ``reboot`` and ``set_config`` built in);
- OTA (device/ota.py): ``devices/{id}/ota/notify`` -> resumable ranged download from the API, sha256 +
  Ed25519 check against the keys it ships with, install into the inactive A/B slot, reboot, report
  the new ``firmware_version`` in its status, self-test, commit or fall back to the old slot.

Threading: paho calls run on one MqttLoop thread (shared by many agents in the simulator).
``publish_telemetry`` must be called on that thread; ``send_telemetry`` is the thread-safe form.
Downlink is handled off that thread, on serial lanes per agent (shadow, commands, ota) over a small
shared worker pool, so a slow handler or ``apply_desired`` never delays telemetry; what they
publish goes through the loop (``call_soon``). A firmware download runs on a thread of its own.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device.commands import CommandProcessor, CommandRefused, CommandRegistry, Reply, SerialLane
from device.dedup_store import DedupStore
from device.identity import DeviceIdentity
from device.ota import NOTIFY_SUFFIX, OtaUpdater, options_from
from device.ota_faults import OtaFaults
from device.seqstore import SeqStore
from device.shadow_sync import ApplyDesired, Message, ShadowSync, accept_all, parse_shadow_suffix
from fleet.contract.topics import Downlink, device_topic
from fleet.mqtt.loop import MqttLoop, Timer
from fleet.mqtt.paho_speedups import install as install_paho_speedups

try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class AgentConfig:
    host: str
    port: int
    keepalive: int = 30
    firmware_version: str = "agent-0.1.0"
    # QoS 1 messages on the wire awaiting PUBACK (the broker may allow more; this paces us).
    max_inflight: int = 100
    # Offline buffer: messages kept while disconnected or unacknowledged; beyond it new
    # telemetry is dropped (counted in stats.dropped) rather than exhausting memory.
    max_buffered: int = 10_000
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    # Keep the MQTT session (and queued downlink messages) for this long while offline.
    session_expiry: int = 3600
    # Shadows fetched with shadow/get on connect while the agent holds no state for them ("" = classic).
    shadows: tuple[str, ...] = ("",)
    # The simulated reboot's downtime, unless the command's params say delay_s (also OTA reboots).
    reboot_delay: float = 1.0
    # OTA (device/ota.py): the API the notify's download path is relative to; the Ed25519 public
    # keys (PEM files) the device trusts for firmware, as firmware ships them; injected failures;
    # boots of a new image without a commit before the bootloader falls back to the old slot; the
    # device type an image must be for (None: not checked).
    api_base_url: str = "http://127.0.0.1:8000"
    firmware_keys: tuple[str, ...] = ()
    ota_faults: OtaFaults = OtaFaults()
    ota_max_boots: int = 2
    device_type: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> AgentConfig:
        """The platform's MQTT endpoint, its API and its firmware keys (the platform key's public
        half and the vendor keys), unless overridden."""
        host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
        defaults: dict[str, Any] = {
            "api_base_url": f"{'https' if settings.api_tls else 'http'}://{host}:{settings.api_port}",
            "firmware_keys": (f"{settings.firmware_key_path}.pub", *map(str, settings.firmware_vendor_key_paths)),
        }
        return cls(host=settings.mqtt_host, port=settings.mqtt_device_port, **{**defaults, **overrides})


@dataclass
class AgentStats:
    sent: int = 0          # telemetry messages handed to MQTT (incl. buffered)
    acked: int = 0         # PUBACKs received for telemetry
    dropped: int = 0       # rejected because the offline buffer was full
    too_large: int = 0     # refused locally: larger than the broker's Maximum Packet Size
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    last_acked_seq: int = -1


class PacketTooLarge(ValueError):
    """The message would exceed the broker's Maximum Packet Size (from its CONNACK). The broker
    would disconnect the device for it, and resending would only repeat that: it is refused here,
    before it takes a seq or a buffer slot, and never sent."""


def publish_packet_size(topic: str, payload_len: int) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH without properties: fixed header (1 byte + variable-length
    remaining length), topic (2 + UTF-8 length), packet id (2), properties length (1), payload."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


class DeviceAgent:
    def __init__(self, identity: DeviceIdentity, config: AgentConfig, loop: MqttLoop | None = None, *,
                 on_ack: Callable[[int], None] | None = None, persist_seq: bool = True,
                 apply_desired: ApplyDesired | None = None, executor: Executor | None = None):
        """``persist_seq`` also decides whether shadow state and command results are kept on disk
        (next to the seq file). ``apply_desired(name, delta) -> applied`` decides what of a desired
        change the device takes (default: all of it); ``executor`` runs downlink handling (default:
        a small pool shared by every agent in the process)."""
        self.identity = identity
        self.device_id = identity.device_id
        self.config = config
        self.stats = AgentStats()
        self.on_ack = on_ack
        self._own_loop = loop is None
        self.loop = loop or MqttLoop(name=f"agent-{identity.device_id}")
        self.seq = SeqStore(identity.directory / "seq" if persist_seq else None)
        self._telemetry_topic = device_topic(self.device_id, "telemetry")
        self._status_topic = device_topic(self.device_id, "status")
        self._pending: dict[int, int] = {}    # mid -> seq (-1 for non-telemetry) awaiting PUBACK
        self._backoff = config.backoff_min
        self._stopping = False
        self._connected = threading.Event()
        self._idle = threading.Condition()
        self._reconnect_timer: Timer | None = None
        # The broker's Maximum Packet Size from its last CONNACK (None: not told, no limit known).
        self.max_packet_size: int | None = None
        state_dir = identity.directory if persist_seq else None
        self.shadow = ShadowSync(state_dir / "shadow.json" if state_dir else None, apply_desired or accept_all,
                                 config.shadows)
        self.commands = CommandRegistry()
        self._command_processor = CommandProcessor(
            self.commands, DedupStore(state_dir / "command-results.json" if state_dir else None))
        self._shadow_lane = SerialLane(executor, f"{self.device_id}/shadow")
        self._command_lane = SerialLane(executor, f"{self.device_id}/commands")
        self._downlink_prefix = device_topic(self.device_id, "")
        self._after_ack: dict[int, Callable[[], None]] = {}  # mid -> run once the broker acknowledged it
        self._reboot_delay: float | None = None  # set while a simulated reboot takes the agent down
        self._boot_pending = False  # the next connect attempt boots first (after a reboot or crash)
        self._ota_lane = SerialLane(executor, f"{self.device_id}/ota")
        self.ota = OtaUpdater(state_dir / "ota" if state_dir else None, config.firmware_version, self._send_soon,
                              self._ota_restart, options_from(config), ssl_context=self._https_context,
                              submit=self._ota_lane.submit, name=f"ota-{self.device_id}")
        # What runs now: the bootloader's choice (an updated slot, a trial, a fall back), else the config's.
        self.firmware_version = self.ota.boot()
        self.commands.register("reboot", self._cmd_reboot)
        self.commands.register("set_config", self._cmd_set_config)
        self.client = self._make_client()

    # -- set-up -----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        install_paho_speedups()  # cheaper PUBACK decoding; behaviour unchanged
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(self.identity.ca_path), certfile=str(self.identity.cert_path),
                  keyfile=str(self.identity.key_path), cert_reqs=ssl.CERT_REQUIRED,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(self.config.max_inflight)
        c.max_queued_messages_set(self.config.max_buffered)
        # Set once at connect time, so it carries no ts: the platform stamps ingest_ts.
        c.will_set(self._status_topic, _dumps({"online": False, "reason": "connection_lost"}), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self.loop.attach(c)
        return c

    def start(self) -> DeviceAgent:
        if self._own_loop:
            self.loop.start()
        self.loop.call_soon(self._connect)
        return self

    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            return
        if self._boot_pending:  # the bootloader first (off the loop: it writes its state file)
            self._boot_pending = False
            self._ota_lane.submit(self._boot)
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry
        try:
            if self.stats.connects or self.stats.connect_failures:
                self.client.reconnect()
            else:
                self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive,
                                    clean_start=False, properties=props)
        except (OSError, ssl.SSLError) as exc:
            self.stats.connect_failures += 1
            log.debug("%s: connect failed: %s", self.device_id, exc)
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._stopping or self._reconnect_timer is not None:
            return
        delay = self._backoff * random.uniform(0.5, 1.5)
        self._backoff = min(self._backoff * 2, self.config.backoff_max)
        self._reconnect_timer = self.loop.call_later(delay, self._connect)

    # -- callbacks (loop thread) ------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.stats.connect_failures += 1
            log.warning("%s: broker refused the connection: %s", self.device_id, reason_code)
            return  # paho then reports a disconnect, which schedules the retry
        self.stats.connects += 1
        self._backoff = self.config.backoff_min
        self.max_packet_size = getattr(properties, "MaximumPacketSize", None) if properties else None
        self._connected.set()
        # Subscribed before announcing online: the platform pushes the pending delta on that event.
        client.subscribe([(self._downlink_prefix + "shadow/#", SubscribeOptions(qos=1, noLocal=True)),
                          (self._downlink_prefix + Downlink.COMMANDS.value, SubscribeOptions(qos=1)),
                          (self._downlink_prefix + NOTIFY_SUFFIX, SubscribeOptions(qos=1))])
        self._publish_status(True)
        for msg in self.shadow.on_connect():
            self._send(msg)
        self._ota_lane.submit(self.ota.on_connect)  # BOOTED / ROLLED_BACK after an update's reboot

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self.stats.disconnects += 1
        self._ota_lane.submit(self.ota.on_disconnect)  # no install while a cancel may wait in the session
        if not self._stopping and self._reboot_delay is not None:
            delay, self._reboot_delay = self._reboot_delay, None
            self._boot_pending = True
            self._reconnect_timer = self.loop.call_later(delay, self._connect)
        elif not self._stopping:
            log.debug("%s: disconnected (%s), reconnecting", self.device_id, reason_code)
            self._schedule_reconnect()
        self._notify_idle()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self._pending.pop(mid, None)
        then = self._after_ack.pop(mid, None)
        if then is not None:
            try:
                then()
            except Exception:
                log.exception("%s: post-acknowledgement action failed", self.device_id)
        if seq is not None and seq >= 0:
            self.stats.acked += 1
            self.stats.last_acked_seq = seq
            if self.on_ack is not None:
                self.on_ack(seq)
        if not self._pending:
            self._notify_idle()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    # -- publishing (loop thread) -----------------------------------------------------------
    def check_size(self, topic: str, payload: bytes) -> None:
        """Raise PacketTooLarge if the broker said it takes no packet this large."""
        limit = self.max_packet_size
        if limit is not None and publish_packet_size(topic, len(payload)) > limit:
            self.stats.too_large += 1
            raise PacketTooLarge(f"{len(payload)}-byte payload on {topic} exceeds the broker's maximum packet "
                                 f"size of {limit} bytes")

    def _publish(self, topic: str, payload: bytes, seq: int, retain: bool = False,
                 then: Callable[[], None] | None = None) -> bool:
        self.check_size(topic, payload)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return False
        # MQTT_ERR_NO_CONN is fine: paho keeps the message and sends it after reconnecting.
        self._pending[info.mid] = seq
        if then is not None:
            self._after_ack[info.mid] = then
        return True

    def _publish_status(self, online: bool, reason: str | None = None) -> None:
        status: dict[str, Any] = {"online": online, "ts": now_ms(), "firmware_version": self.firmware_version}
        if reason:
            status["reason"] = reason
        self._publish(self._status_topic, _dumps(status), -1, retain=True)

    def publish_telemetry(self, metrics: Mapping[str, float], attrs: Mapping[str, Any] | None = None,
                          ts: int | None = None) -> int | None:
        """Queue one telemetry message (loop thread); returns its seq, or None if the buffer is full.
        Raises PacketTooLarge (nothing sent, no seq taken) above the broker's packet limit."""
        if len(self._pending) >= self.config.max_buffered:
            self.stats.dropped += 1
            return None
        msg: dict[str, Any] = {"ts": now_ms() if ts is None else ts, "seq": self.seq.next_value, "metrics": metrics}
        if attrs:
            msg["attrs"] = attrs
        payload = _dumps(msg)
        self.check_size(self._telemetry_topic, payload)
        seq = self.seq.take()
        if not self._publish(self._telemetry_topic, payload, seq):
            self.stats.dropped += 1
            return None
        self.stats.sent += 1
        return seq

    def send_telemetry(self, metrics: Mapping[str, float], attrs: Mapping[str, Any] | None = None) -> None:
        """Thread-safe publish_telemetry (the seq is assigned on the loop thread)."""
        self.loop.call_soon(self.publish_telemetry, dict(metrics), dict(attrs) if attrs else None)

    def publish_raw(self, suffix: str, payload: bytes, retain: bool = False) -> None:
        """Thread-safe: any payload on devices/{id}/{suffix} (tests use it for malformed input).
        Raises PacketTooLarge here, in the caller's thread, above the broker's packet limit."""
        topic = device_topic(self.device_id, suffix)
        self.check_size(topic, payload)
        self.loop.call_soon(self._publish, topic, payload, -1, retain)

    # -- downlink: shadow and commands ------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Loop thread: route a downlink message to its lane (a worker does the rest)."""
        if not msg.topic.startswith(self._downlink_prefix):
            return
        suffix, payload = msg.topic[len(self._downlink_prefix):], bytes(msg.payload)
        if suffix == Downlink.COMMANDS.value:
            self._command_lane.submit(self._command_processor.process, payload, self._send_soon)
        elif suffix == NOTIFY_SUFFIX:
            self._ota_lane.submit(self.ota.handle, payload)
        elif (parsed := parse_shadow_suffix(suffix)) is not None:
            self._shadow_lane.submit(self._handle_shadow, parsed[0], parsed[1], payload)

    def _handle_shadow(self, name: str, kind: str, payload: bytes) -> None:
        for out in self.shadow.handle(name, kind, payload):
            self._send_soon(out)

    def _send_soon(self, msg: Message) -> None:
        """Thread-safe: publish a shadow or command message through the loop."""
        self.loop.call_soon(self._send, msg)

    def _send(self, msg: Message) -> None:
        topic = device_topic(self.device_id, msg.suffix)
        try:
            if not self._publish(topic, _dumps(msg.payload), -1, then=msg.after_ack):
                log.warning("%s: offline buffer full, dropped %s", self.device_id, topic)
        except PacketTooLarge as exc:
            log.error("%s: %s", self.device_id, exc)

    def report(self, patch: Mapping[str, Any], name: str = "") -> None:
        """Thread-safe: merge a change into the reported state of a shadow and report it."""
        out = self.shadow.report(name, patch)
        if out is not None:
            self._send_soon(out)

    def wait_downlink_idle(self, timeout: float = 10.0) -> bool:
        """Block until every shadow message and command received so far has been handled."""
        deadline = time.monotonic() + timeout
        return (self._shadow_lane.wait_idle(timeout)
                and self._command_lane.wait_idle(max(0.0, deadline - time.monotonic()))
                and self._ota_lane.wait_idle(max(0.0, deadline - time.monotonic())))

    def _cmd_reboot(self, params: dict[str, Any]) -> Reply:
        """Built-in ``reboot`` (simulated): answer SUCCEEDED, then once that result is acknowledged
        go offline ("reboot"), disconnect, and reconnect after ``delay_s``."""
        delay = params.get("delay_s", self.config.reboot_delay)
        if type(delay) not in (int, float) or not 0 <= delay <= 300:
            raise CommandRefused("delay_s must be a number of seconds from 0 to 300")
        return Reply({"rebooting": True, "delay_s": delay}, after_ack=lambda: self._reboot(float(delay)))

    def _reboot(self, delay: float) -> None:
        if self._stopping or not self.client.is_connected():
            return
        self._reboot_delay = delay
        status = {"online": False, "ts": now_ms(), "firmware_version": self.firmware_version, "reason": "reboot"}
        # Down only once the broker has it: resent after the reconnect, it would follow (and hide) "online".
        self._publish(self._status_topic, _dumps(status), -1, retain=True, then=self._disconnect_now)

    def _disconnect_now(self) -> None:
        self.client.disconnect()

    # -- OTA: reboots and the download's TLS ------------------------------------------------
    def _ota_restart(self, crash: bool) -> None:
        """Thread-safe: the OTA side takes the device down and boots it again (``crash``: abruptly)."""
        self.loop.call_soon(self._restart, crash)

    def _restart(self, crash: bool) -> None:
        if self._stopping:
            return
        if not self.client.is_connected():
            self._boot_pending = True  # down already: the next connect attempt boots first
            return
        if not crash:
            self._reboot(self.config.reboot_delay)
            return
        # A crash says no goodbye: DISCONNECT with reason 0x04 makes the broker publish the last
        # will ("connection_lost"), as it would for a device that just died.
        self._reboot_delay = self.config.reboot_delay
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))

    def _boot(self) -> None:
        """A worker: the bootloader picks the slot, then the device connects (reporting that version)."""
        self.firmware_version = self.ota.boot()
        self.loop.call_soon(self._connect)

    def _https_context(self) -> ssl.SSLContext:
        """The download's TLS: the platform CA for the API's certificate, the device's own as the client's."""
        ctx = ssl.create_default_context(cafile=str(self.identity.ca_path))
        ctx.load_cert_chain(str(self.identity.cert_path), str(self.identity.key_path))
        return ctx

    def _cmd_set_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """Built-in ``set_config``: merge params into ``config`` of the classic shadow's reported
        state (null deletes a key), report the change, answer with the whole config."""
        problem = self.shadow.check_report("", {"config": params})
        if problem is not None:
            raise CommandRefused(problem)
        self.report({"config": params})
        return {"config": self.shadow.reported().get("config", {})}

    # -- state ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def unacked(self) -> int:
        return len(self._pending)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def wait_acked(self, timeout: float = 10.0) -> bool:
        """Block until every message published so far is acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    # -- shutdown ---------------------------------------------------------------------------
    def begin_stop(self) -> None:
        """Loop thread: announce offline (retained) and stop reconnecting."""
        self._stopping = True
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
        if self.client.is_connected():
            self._publish_status(False, "shutdown")

    def finish_stop(self) -> None:
        """Loop thread: clean DISCONNECT (the broker then discards the will)."""
        self.ota.close()
        self.client.disconnect()
        self.seq.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish offline, wait (bounded) for outstanding acks, disconnect cleanly."""
        # Let handlers running now publish their results first (bounded); a download stops and
        # resumes on the next start.
        self.ota.close(min(timeout, 5.0))
        self.wait_downlink_idle(min(timeout, 5.0))
        done = threading.Event()

        def begin() -> None:
            self.begin_stop()
            done.set()

        def finish() -> None:
            self.finish_stop()
            done.set()

        self.loop.call_soon(begin)
        done.wait(timeout)
        if self.connected:
            self.wait_acked(timeout)
        done.clear()
        self.loop.call_soon(finish)
        done.wait(timeout)
        if self._own_loop:
            time.sleep(0.05)  # let the DISCONNECT leave before the loop stops writing
            self.loop.stop()
