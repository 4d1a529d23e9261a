"""Many simulated devices in one asyncio process that subscribe, receive and answer over MQTT.

bench/mqtt_driver.py only publishes (telemetry); a bench of the downlink needs devices that read
what the platform sends them and answer it. Each :class:`Device` here is a real mTLS MQTT 3.1.1
connection (CONNECT, SUBSCRIBE at QoS 0, QoS 1 PUBLISH with PUBACK counting, PINGREQ), with a
callback per incoming PUBLISH that runs on the driver's loop and may publish in turn. Cheap on
purpose: the bench shares 2 cores with the platform it measures. Used by bench/commands_bench.py
and bench/shadow_bench.py (its devices a subclass of Device with their own counters).
"""

from __future__ import annotations

import asyncio
import resource
import struct
import sys
import threading
import time
from collections.abc import Callable

from mqtt_driver import _utf8, _varint, keep_alive, open_connection, publish_packet, read_packets

from device.identity import DeviceIdentity
from fleet.config import Settings

OnPublish = Callable[["Device", str, bytes, int], None]  # device, topic, payload, arrival (perf_counter ns)


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft RLIMIT_NOFILE towards ``wanted`` (one socket per device); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


class Device:
    def __init__(self, identity: DeviceIdentity):
        self.identity = identity
        self.id = identity.device_id
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 1
        self.published = self.acked = 0
        self.subscribed = asyncio.Event()
        self.error: str | None = None
        self.tasks: list[asyncio.Task] = []

    def packet(self, topic: bytes, payload: bytes, *, retain: bool = False) -> bytes:
        """A QoS 1 PUBLISH to write now or with others (on the driver's loop), counted as published;
        ``topic`` length-prefixed (mqtt_driver._utf8), so a device may build it once."""
        packet = publish_packet(topic, self.next_id, payload)
        if retain:
            packet = bytes([packet[0] | 0x01]) + packet[1:]
        self.next_id = self.next_id % 65535 + 1
        self.published += 1
        return packet

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 PUBLISH (on the driver's loop)."""
        assert self.writer is not None
        self.writer.write(self.packet(_utf8(topic), payload, retain=retain))


class DeviceFleet:
    """Connects ``identities`` (as ``device_class``, Device or a subclass), subscribes each to its
    ``subscriptions`` (``{id}`` is replaced) and calls ``on_publish`` for everything that arrives."""

    def __init__(self, settings: Settings, identities: list[DeviceIdentity], subscriptions: list[str],
                 on_publish: OnPublish, *, online_status: bool = True, connect_concurrency: int = 32,
                 device_class: type[Device] = Device):
        self.settings = settings
        self.devices = [device_class(i) for i in identities]
        self.subscriptions = subscriptions
        self.on_publish = on_publish
        self.online_status = online_status
        self.connect_concurrency = connect_concurrency
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="device-fleet", daemon=True)

    def call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def start(self, progress: Callable[[str], None] = lambda _m: None, timeout: float = 900) -> float:
        """Connects every device; returns the seconds it took."""
        raise_open_files_limit(len(self.devices) + 1024)
        self.thread.start()
        t0 = time.monotonic()
        self.call(self._connect_all(progress), timeout=timeout)
        return time.monotonic() - t0

    async def _connect_all(self, progress: Callable[[str], None]) -> None:
        sem = asyncio.Semaphore(self.connect_concurrency)
        done = 0
        step = max(1, len(self.devices) // 10)

        async def one(d: Device) -> None:
            nonlocal done
            async with sem:
                await self._connect(d)
            done += 1
            if done % step == 0:
                progress(f"  connected {done:,}/{len(self.devices):,}")

        await asyncio.gather(*(one(d) for d in self.devices))
        bad = [d for d in self.devices if d.error]
        if bad:
            raise SystemExit(f"{len(bad)} devices could not connect/subscribe, e.g. {bad[0].id}: {bad[0].error}")

    async def _connect(self, d: Device) -> None:
        try:
            reader, writer = await open_connection(self.settings, d.identity, connack_timeout_s=30)
            d.writer = writer
            d.tasks.append(asyncio.ensure_future(read_packets(d, reader, lambda buf, at: self._handle(d, buf, at))))
            body = struct.pack("!H", 1) + b"".join(_utf8(t.replace("{id}", d.id)) + b"\x00" for t in self.subscriptions)
            writer.write(b"\x82" + _varint(len(body)) + body)
            await asyncio.wait_for(d.subscribed.wait(), 30)
            if self.online_status:  # what the commands job reads as "online" (docs/device-contract.md)
                d.publish(f"devices/{d.id}/status", b'{"online":true}', retain=True)
            d.tasks.append(asyncio.ensure_future(keep_alive(d)))
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            d.error = f"{type(exc).__name__}: {exc}"

    def _handle(self, d: Device, buf: bytes, at: int) -> int:
        """The whole packets at the start of ``buf``; returns how many bytes they took."""
        i, n = 0, len(buf)
        while n - i >= 2:
            kind = buf[i]
            length, mult, j = 0, 1, i + 1
            while j < n:
                b = buf[j]
                length += (b & 0x7F) * mult
                mult <<= 7
                j += 1
                if not b & 0x80:
                    break
            else:
                break
            if n - j < length:
                break
            body = buf[j:j + length]
            i = j + length
            t = kind & 0xF0
            if t == 0x40:
                d.acked += 1
            elif t == 0x90:
                d.subscribed.set()
            elif t == 0x30:  # QoS 0: we subscribed at 0, so no PUBACK to send
                tl = struct.unpack("!H", body[:2])[0]
                try:
                    self.on_publish(d, body[2:2 + tl].decode(), body[2 + tl:], at)
                except Exception as exc:  # a bench bug must show, not kill the reader silently
                    print(f"on_publish failed for {d.id}: {exc!r}", file=sys.stderr)
        return i

    def stop(self) -> None:
        async def close() -> None:
            for d in self.devices:
                if d.writer is not None:
                    if self.online_status and not d.error:  # what the will would say (we set none)
                        d.publish(f"devices/{d.id}/status", b'{"online":false,"reason":"bench_done"}', retain=True)
                    d.writer.write(b"\xe0\x00")
                    d.writer.close()
                for t in d.tasks:
                    t.cancel()
            await asyncio.sleep(0.2)

        try:
            self.call(close(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
