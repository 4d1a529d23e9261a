"""MqttLoop scheduling (no broker): cross-thread calls, timers, error isolation."""

from __future__ import annotations

import threading
import time

from fleet.mqtt.loop import MqttLoop


def run_loop():
    loop = MqttLoop(name="test-loop", misc_interval=0.05)
    loop.start()
    return loop


def test_call_soon_runs_on_the_loop_thread_in_order():
    loop = run_loop()
    seen, done = [], threading.Event()
    for i in range(100):
        loop.call_soon(lambda i=i: seen.append((i, loop.in_loop_thread())))
    loop.call_soon(done.set)
    assert done.wait(2)
    loop.stop()
    assert seen == [(i, True) for i in range(100)]


def test_timers_fire_in_time_order_and_can_be_cancelled():
    loop = run_loop()
    seen, done = [], threading.Event()

    def schedule():
        loop.call_later(0.06, seen.append, "late")
        loop.call_later(0.02, seen.append, "early")
        loop.call_later(0.04, seen.append, "cancelled").cancel()
        loop.call_later(0.08, done.set)

    loop.call_soon(schedule)
    assert done.wait(2)
    loop.stop()
    assert seen == ["early", "late"]


def test_a_failing_callback_does_not_stop_the_loop():
    loop = run_loop()
    done = threading.Event()
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(done.set)
    assert done.wait(2)
    loop.stop()


def test_call_soon_from_many_threads():
    loop = run_loop()
    count, done = [0], threading.Event()

    def bump():
        count[0] += 1
        if count[0] == 4000:
            done.set()

    threads = [threading.Thread(target=lambda: [loop.call_soon(bump) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done.wait(5), count
    loop.stop()


def test_stop_is_prompt():
    loop = run_loop()
    t0 = time.monotonic()
    loop.stop()
    assert time.monotonic() - t0 < 1


def test_a_call_soon_racing_the_wake_up_drain_still_wakes_the_loop_at_once():
    """A call_soon from another thread while the loop drains its wake-up socket: the loop must
    stay wakeable (it used to clear the flag before draining, so the racing call's byte was
    drained, the flag stayed set and every later call_soon waited for the loop's timeout)."""
    loop = MqttLoop(misc_interval=5.0)
    real = loop._wake_r
    raced = threading.Event()

    class RacingSocket:
        def recv(self, n):
            if not raced.is_set():
                raced.set()
                loop.call_soon(lambda: None)  # what another thread can do at this very moment
            return real.recv(n)

        def __getattr__(self, name):
            return getattr(real, name)

    loop._wake_r = RacingSocket()
    loop.start()
    try:
        loop.call_soon(lambda: None)
        assert raced.wait(2)
        time.sleep(0.1)
        ran = threading.Event()
        t0 = time.monotonic()
        loop.call_soon(ran.set)
        assert ran.wait(2)
        assert time.monotonic() - t0 < 0.5  # not the 5 s misc interval
    finally:
        loop._wake_r = real
        loop.stop()
