"""One thread that drives many paho clients, timers and cross-thread calls.

paho's ``loop_start()`` costs a thread per client and reads one MQTT packet per ``select()``;
a fleet simulator with hundreds of devices, or a bridge reading thousands of messages a second,
needs neither. This loop uses paho's external-loop API (``on_socket_*`` callbacks,
``loop_read``/``loop_write``/``loop_misc``) with one selector for all clients.

Rule: every paho call for an attached client happens on the loop thread. Other threads hand work
over with ``call_soon`` (thread-safe, coalesces wake-ups), which is how the bridge acknowledges a
message from the Kafka producer's callback thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

if TYPE_CHECKING:  # paho defines its socket protocol for type checkers only
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_RW = selectors.EVENT_READ | selectors.EVENT_WRITE
# Upper bound of MQTT packets read per readiness event, so one busy client can't starve others.
_MAX_READS_PER_EVENT = 4096


class Timer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class MqttLoop:
    def __init__(self, name: str = "mqtt-loop", misc_interval: float = 1.0):
        self.name = name
        self.misc_interval = misc_interval
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._calls: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._wake_pending = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._clients: dict[mqtt.Client, SocketLike | None] = {}
        self._write_registered: set[mqtt.Client] = set()
        self._dirty: set[mqtt.Client] = set()
        self._hooks: list[Callable[[], float | None]] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None

    # -- clients ----------------------------------------------------------------------------
    def attach(self, client: mqtt.Client) -> None:
        """Let this loop drive ``client``; call before its connect()."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._clients[client] = None

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._drop_socket(client)
        self._clients[client] = sock
        self._selector.register(sock, _READ, client)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._drop_socket(client)

    def _drop_socket(self, client: mqtt.Client) -> None:
        sock = self._clients.get(client)
        if sock is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            self._clients[client] = None
        self._write_registered.discard(client)
        self._dirty.discard(client)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        # Don't wait for the selector: try the write at the end of this loop iteration and
        # only ask for writability if the socket buffer is full.
        self._dirty.add(client)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        if client in self._write_registered:
            self._write_registered.discard(client)
            current = self._clients.get(client)
            if current is not None:
                self._selector.modify(current, _READ, client)

    # -- scheduling -------------------------------------------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread as soon as possible; safe from any thread."""
        self._calls.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` on the loop thread after ``delay`` seconds (loop thread only)."""
        timer = Timer(time.monotonic() + max(0.0, delay), fn, args)
        heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
        return timer

    def add_hook(self, hook: Callable[[], float | None]) -> None:
        """Run ``hook()`` on every loop iteration; it returns the longest it may wait (s) or None.

        How the bridge serves Kafka delivery reports on this thread (no cross-thread acks).
        """
        self._hooks.append(hook)

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    # -- running ----------------------------------------------------------------------------
    def start(self) -> MqttLoop:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._running = False
        self.call_soon(lambda: None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        """Release the selector and the wake-up sockets once the loop has stopped (a no-op before)."""
        if self._running or (self._thread is not None and self._thread.is_alive()):
            return
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        """Drive the clients until ``stop()``: on the thread ``start()`` makes, or on the caller's."""
        self._running = True
        self._thread_id = threading.get_ident()
        next_misc = time.monotonic() + self.misc_interval
        while self._running:
            limit = self._run_hooks()  # may queue writes (e.g. PUBACKs): before the timeout is set
            now = time.monotonic()
            timeout = min(next_misc - now, self._timers[0][0] - now if self._timers else self.misc_interval, limit)
            if self._calls or self._dirty:
                timeout = 0.0
            for key, mask in self._selector.select(max(0.0, timeout)):
                client = key.data
                if client is None:
                    self._drain_wake()
                    continue
                self._guard(self._service, client, mask)
            self._run_calls()
            now = self._run_timers()
            if now >= next_misc:
                for client, sock in list(self._clients.items()):
                    if sock is not None:
                        self._guard(client.loop_misc)
                next_misc = now + self.misc_interval
            self._flush_writes()
        self._thread_id = None

    def _run_hooks(self) -> float:
        limit = self.misc_interval
        for hook in self._hooks:
            try:
                wanted = hook()
            except Exception:
                log.exception("error in MQTT loop hook %s", getattr(hook, "__qualname__", hook))
                continue
            if wanted is not None and wanted < limit:
                limit = wanted
        return limit

    def _service(self, client: mqtt.Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            # TLS can hold already-decrypted bytes the selector cannot see: keep reading while
            # the SSL object has some (paho reads one packet per loop_read call here).
            client.loop_read()
            for _ in range(_MAX_READS_PER_EVENT):
                sock = client.socket()
                if sock is None or not getattr(sock, "pending", lambda: 0)():
                    break
                client.loop_read()
        if mask & selectors.EVENT_WRITE:
            client.loop_write()

    def _drain_wake(self) -> None:
        # Drain first, then clear the flag: cleared first, a call_soon racing the drain would
        # send its byte, see it drained here and leave the flag set with no byte pending, and
        # every later call_soon would then wait for the next timeout (up to misc_interval).
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._wake_pending = False

    def _run_calls(self) -> None:
        calls = self._calls
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            self._guard(fn, *args)

    def _run_timers(self) -> float:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                self._guard(timer.fn, *timer.args)
        return now

    def _flush_writes(self) -> None:
        while self._dirty:
            client = self._dirty.pop()
            sock = self._clients.get(client)
            if sock is None:
                continue
            self._guard(client.loop_write)
            if client.want_write() and client not in self._write_registered and self._clients.get(client) is sock:
                self._write_registered.add(client)
                self._selector.modify(sock, _RW, client)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one client's bug must not stop the loop driving all the others
            log.exception("error in MQTT loop callback %s", getattr(fn, "__qualname__", fn))
