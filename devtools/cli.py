"""The developer tooling's commands, added to ``fleet`` through the ``fleet.cli`` entry point:

    fleet stack up [NAME ...]        start the local stack (default: infrastructure only)
    fleet stack down [--wipe]        stop everything the launcher started
    fleet stack status               what runs, where it listens, where it logs
    fleet stack logs [NAME] [-n N]   tail the logs
    fleet demo                       whole stack + jobs + bridge + API + a simulated fleet
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from devtools import demo
from devtools.stack import flink, launcher
from devtools.stack.process import tail
from fleet.config import Settings


def _stack_up(settings: Settings, args) -> int:
    names = args.names or list(launcher.INFRA)
    components = launcher.up(settings, names)
    print("\nThe local stack is up:")
    launcher.print_endpoints(components)
    return 0


def _stack_down(settings: Settings, args) -> int:
    launcher.down(settings, args.names or None, wipe=args.wipe)
    return 0


def _stack_status(settings: Settings, args) -> int:
    rows = launcher.status(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<10} {row['state']}")
            for label, where in row["endpoints"].items():
                print(f"{'':<10} {label:<18} {where}")
            for job, state in row.get("jobs", {}).items():
                hint = "" if state == "RUNNING" else f"   (start it: fleet jobs submit {job})"
                print(f"{'':<10} {'job ' + job:<18} {state}{hint}")
    return 0 if all(r["state"] in ("healthy", "stopped") for r in rows) else 1


def _stack_logs(settings: Settings, args) -> int:
    files = launcher.log_files(settings, args.name)
    if not files:
        print("no logs yet", file=sys.stderr)
        return 1
    for path in files:
        print(f"--- {path} ---")
        print(tail(path, args.lines))
    return 0


def _demo(settings: Settings, args) -> int:
    return demo.run(settings, devices=args.devices, rate=args.rate, duration=args.duration,
                    bridges=args.bridges, keep_running=not args.stop)


def register(sub, hooks: dict[str, Callable[..., Any]]) -> None:
    """Entry point of the ``fleet.cli`` group (pyproject.toml)."""
    hooks["local_submit"] = flink.submit_job
    stack = sub.add_parser("stack", help="manage the local stack").add_subparsers(dest="action", required=True)
    p = stack.add_parser("up", help="start components (default: mosquitto kafka cassandra flink)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=_stack_up)
    p = stack.add_parser("down", help="stop components (default: all)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--wipe", action="store_true", help="also delete data, logs and the lake (keeps jars and PKI)")
    p.set_defaults(func=_stack_down)
    p = stack.add_parser("status", help="show what runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_stack_status)
    p = stack.add_parser("logs", help="tail logs")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.set_defaults(func=_stack_logs)

    p = sub.add_parser("demo", help="run a simulated fleet through the whole pipeline")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--rate", type=float, default=2.0, help="messages per second per device")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of publishing (raised when too short for the OTA round, to 95 s from 45 s up)")
    p.add_argument("--bridges", type=int, default=1, help="bridge processes sharing the subscription")
    p.add_argument("--stop", action="store_true", help="stop the stack afterwards")
    p.set_defaults(func=_demo)
