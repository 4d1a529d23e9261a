"""A cheap load generator for the benchmarks: many devices' MQTT connections in one process.

The benchmarks share the 2-core machine with the platform they measure, so the load generator's
own CPU is taken from the pipeline. One ``mosquitto_pub -l`` per device (bridge_bench.CDriver)
costs about 110 us of CPU per message across 50 processes plus the Python feeding their pipes;
this driver speaks just enough MQTT 3.1.1 (CONNECT, QoS 1 PUBLISH, PUBACK, PINGREQ) over mTLS
from one asyncio loop, and writes each device's due messages as one TLS record per 5 ms tick.

Same interface as CDriver: ``start()``, ``run(rate, seconds) -> {device_id: [first_seq, next_seq]}``
(every message in the range was PUBACKed by the broker before it returns), ``stop()``.
Payloads: the device telemetry contract (docs/device-contract.md), ts = publish time.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from device.identity import DeviceIdentity
from device.seqstore import SeqStore
from fleet.config import Settings

TICK_S = 0.005
MAX_UNACKED = 2000  # per connection: beyond this the driver waits (the broker is behind)
KEEPALIVE_S = 60


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, keepalive_s: int = KEEPALIVE_S) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive_s) + _utf8(client_id)  # 3.1.1, clean
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """QoS 1 PUBLISH; ``topic`` is the length-prefixed topic name."""
    length = len(topic) + 2 + len(payload)
    return b"\x32" + _varint(length) + topic + struct.pack("!H", packet_id) + payload


async def open_connection(settings: Settings, identity: DeviceIdentity,
                          connack_timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An mTLS connection to the broker's device listener, CONNECTed as ``identity`` (clean session).
    Raises TimeoutError, OSError, ConnectionError (CONNACK refused) or asyncio.IncompleteReadError."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca_path))
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    reader, writer = await asyncio.open_connection(settings.mqtt_host, settings.mqtt_device_port, ssl=ctx,
                                                   server_hostname=settings.mqtt_host)
    writer.write(connect_packet(identity.device_id))
    connack = await asyncio.wait_for(reader.readexactly(4), connack_timeout_s)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack.hex()}")
    return reader, writer


async def read_packets(d, reader: asyncio.StreamReader, parse: Callable[[bytes, int], int]) -> None:
    """What the broker sends device ``d`` to ``parse(buf, arrival perf_counter ns)``, which handles
    the whole packets at the start of ``buf`` and returns how many bytes they took; until the
    connection fails or closes (``d.error`` says which)."""
    buf = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                d.error = d.error or "connection closed by the broker"
                return
            at = time.perf_counter_ns()
            buf += chunk
            buf = buf[parse(buf, at):]
    except (OSError, asyncio.IncompleteReadError) as exc:
        d.error = f"{type(exc).__name__}: {exc}"


async def keep_alive(d) -> None:
    """PINGREQ now and then while device ``d`` (its ``writer``, ``error``) is up: between stages a
    device may be silent for longer than its keepalive."""
    while not d.error:
        await asyncio.sleep(KEEPALIVE_S / 2)
        d.writer.write(b"\xc0\x00")


@dataclass
class _Device:
    identity: DeviceIdentity
    seq: SeqStore
    topic: bytes = b""
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task | None = None
    ping_task: asyncio.Task | None = None
    next_id: int = 1
    sent: int = 0
    acked: int = 0
    error: str | None = None
    pending: list[bytes] = field(default_factory=list)


class AsyncDriver:
    def __init__(self, settings: Settings, identities: list[DeviceIdentity]):
        self.settings = settings
        self.devices = [_Device(i, SeqStore(i.directory / "seq"),
                                topic=_utf8(f"devices/{i.device_id}/telemetry")) for i in identities]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mqtt-driver", daemon=True)

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- connections ---------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        self._call(self._connect_all(), timeout=60)

    async def _connect_all(self) -> None:
        await asyncio.gather(*(self._connect(d) for d in self.devices))
        refused = [d for d in self.devices if d.error]
        if refused:
            raise SystemExit(f"{len(refused)} devices could not connect, e.g. {refused[0].identity.device_id}: "
                             f"{refused[0].error}")

    async def _connect(self, d: _Device) -> None:
        try:
            reader, writer = await open_connection(self.settings, d.identity, connack_timeout_s=10)
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            d.error = f"{type(exc).__name__}: {exc}"
            return
        d.writer = writer
        d.reader_task = asyncio.ensure_future(read_packets(d, reader, lambda buf, _at: self._count_acks(d, buf)))
        d.ping_task = asyncio.ensure_future(keep_alive(d))

    @staticmethod
    def _count_acks(d: _Device, buf: bytes) -> int:
        """Count PUBACKs (4 bytes each); anything else the broker sends here is a PINGRESP."""
        i, n = 0, len(buf)
        while n - i >= 2:
            kind, size = buf[i], buf[i + 1]  # PUBACK / PINGRESP: remaining length < 128
            if n - i < 2 + size:
                break
            if kind == 0x40:
                d.acked += 1
            i += 2 + size
        return i

    # -- load ----------------------------------------------------------------------------------

    def run(self, rate: float, seconds: float) -> dict[str, list[int]]:
        return self._call(self._run(rate, seconds))

    async def _run(self, rate: float, seconds: float) -> dict[str, list[int]]:
        ranges = {d.identity.device_id: [d.seq.next_value, d.seq.next_value] for d in self.devices}
        n, sent, rr = len(self.devices), 0, 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * elapsed) - sent
            if due > 0:
                now = time.time_ns() // 1_000_000
                for _ in range(due):
                    d = self.devices[rr % n]
                    rr += 1
                    seq = d.seq.take()
                    payload = (b'{"ts":%d,"seq":%d,"metrics":{"temperature":%.2f,"humidity":%.1f,"battery":3.9,'
                               b'"rssi":-65}}' % (now, seq, 20 + (seq % 100) / 10, 40 + seq % 20))
                    d.pending.append(publish_packet(d.topic, d.next_id, payload))
                    d.next_id = d.next_id % 65535 + 1
                sent += due
                for d in self.devices:
                    if d.pending:
                        while d.sent - d.acked > MAX_UNACKED and not d.error:
                            await asyncio.sleep(TICK_S)
                        d.writer.write(b"".join(d.pending))
                        d.sent += len(d.pending)
                        d.pending.clear()
            await asyncio.sleep(TICK_S)
        deadline = time.monotonic() + 60
        while any(d.acked < d.sent and not d.error for d in self.devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        failed = [d for d in self.devices if d.error or d.acked < d.sent]
        if failed:
            d = failed[0]
            raise RuntimeError(f"{len(failed)} devices not fully acknowledged, e.g. {d.identity.device_id}: "
                               f"{d.acked}/{d.sent} PUBACKs ({d.error or 'timeout'})")
        for d in self.devices:
            ranges[d.identity.device_id][1] = d.seq.next_value
        return ranges

    def stop(self) -> None:
        async def close() -> None:
            for d in self.devices:
                if d.writer is not None:
                    d.writer.write(b"\xe0\x00")  # DISCONNECT
                    d.writer.close()
                for task in (d.reader_task, d.ping_task):
                    if task is not None:
                        task.cancel()

        try:
            self._call(close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            for d in self.devices:
                d.seq.close()
