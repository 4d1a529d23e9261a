"""``python -m bridge [--instance N] [--no-downlink]``: one bridge process (settings from FLEET_* env):
the MQTT -> Kafka uplink and, beside it, the Kafka -> MQTT downlink (bridge/downlink.py).

Run instances 0..N-1 to share the load; keep each instance's number across restarts, since its
MQTT session (holding unacknowledged and queued messages) belongs to that client id, and so does
its static membership of the downlink's consumer group.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

from bridge.downlink import DownlinkBridge
from bridge.uplink import UplinkBridge
from fleet.config import Settings
from fleet.logs import configure_logging, log_fields


def start_active_check(settings: Settings, stop: threading.Event) -> Callable[[str], bool]:
    """The registry check (fleet.identity.active_devices): the blocked set re-read every
    ``registry_cache_ttl_s`` on its own thread, per-device lookups refreshed on a worker thread,
    so the MQTT loop waits on the registry only for a device it has never seen."""
    from concurrent.futures import ThreadPoolExecutor

    from fleet.identity.active_devices import ActiveDeviceCheck, BlockedDevices
    from fleet.infra.cassandra import CassandraSessions

    session = CassandraSessions(settings).get()
    refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-refresh")
    check = ActiveDeviceCheck(session, ttl_s=settings.registry_known_ttl_s, background=refresher.submit,
                              blocked=BlockedDevices(session))
    check.refresh_blocked()  # before the first message; an unreachable registry fails the start

    def keep_current() -> None:
        while not stop.wait(settings.registry_cache_ttl_s):
            try:
                check.refresh_blocked()
            except Exception as exc:  # noqa: BLE001 - keep the last set; the broker cuts devices off anyway
                logging.getLogger("bridge").warning("could not re-read the blocked devices",
                                                    extra=log_fields(error=str(exc)))

    threading.Thread(target=keep_current, name="registry-blocked", daemon=True).start()
    return check.is_active


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge", description="MQTT <-> Kafka bridge")
    parser.add_argument("--instance", type=int, default=0,
                        help="instance number, unique among running bridges and stable across restarts")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="override FLEET_BRIDGE_METRICS_PORT (0 = no HTTP endpoint)")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--require-active", action=argparse.BooleanOptionalAction, default=None,
                        help="dead-letter messages of devices the registry (Cassandra) does not list as active "
                             "(default: FLEET_BRIDGE_REQUIRE_ACTIVE, true)")
    parser.add_argument("--no-downlink", dest="downlink", action="store_false",
                        help="run the uplink only (no Kafka -> MQTT downlink in this process)")
    parser.add_argument("--retire", action="store_true",
                        help="take this instance out of service: drain its queued messages, end its session, exit")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.metrics_port is not None:
        settings = settings.replace(bridge_metrics_port=args.metrics_port)
    configure_logging("bridge", settings.log_level)
    log = logging.getLogger("bridge")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    try:
        active_check = None
        if settings.bridge_require_active if args.require_active is None else args.require_active:
            active_check = start_active_check(settings, stop)
        bridge = UplinkBridge(settings, instance=args.instance, retire=args.retire, active_check=active_check)
        downlink = None
        if args.downlink and not args.retire:  # retiring concerns the uplink's MQTT session only
            downlink = DownlinkBridge(settings, instance=args.instance, registry=bridge.metrics.registry)
            bridge.health_parts["downlink"] = downlink.health
        bridge.start()
        if downlink is not None:
            downlink.start()
    except Exception as exc:
        log.error("bridge could not start", extra=log_fields(error=str(exc)))
        return 1
    if args.retire:
        return 0 if bridge.retire_when_idle() else 2
    while not stop.wait(30):
        m = bridge.metrics
        log.info("progress", extra=log_fields(
            received=int(m.value("fleet_bridge_received_total")), acked=int(m.value("fleet_bridge_acked_total")),
            inflight=int(m.value("fleet_bridge_inflight")), errors=int(m.value("fleet_bridge_produce_errors_total"))))
        if downlink is not None:
            d = downlink.metrics
            log.info("downlink progress", extra=log_fields(
                published=int(d.value("fleet_downlink_published_total")),
                acked=int(d.value("fleet_downlink_acked_total")), expired=int(d.value("fleet_downlink_expired_total")),
                outstanding=int(d.value("fleet_downlink_outstanding"))))
    drained = downlink.stop(args.drain_timeout) if downlink is not None else True
    drained = bridge.stop(args.drain_timeout) and drained
    return 0 if drained else 2


if __name__ == "__main__":
    sys.exit(main())
