"""``fleet``: the operator's and developer's command line.

    fleet init                       on an existing cluster: PKI (if none), topics, migrations
    fleet admin bootstrap            create the first admin API key (printed once)
    fleet admin sync-crl             rebuild the CRLs from the registry and reload the broker
    fleet lake compact [--table T] [--dry-run]
                                     merge the lake's small Parquet files, per finished hour, in
                                     every table (telemetry, shadow_changes) or only table T
    fleet jobs submit [JOB] [--from-savepoint PATH] [--cluster URL] [--parallelism N]
                                     submit a Flink job, check it runs with exactly-once checkpoints
    fleet jobs stop [JOB|JOB_ID] [--savepoint-dir DIR] [--cluster URL]
                                     stop a job with a savepoint and print its path
    fleet jobs list [--cluster URL]  jobs, states, checkpointing and last completed checkpoint

Plugins add commands through the ``fleet.cli`` entry-point group: the developer tooling
(devtools/cli.py) adds ``fleet stack ...`` and ``fleet demo``. Production code never imports it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from fleet.config import Settings
from fleet.infra.cassandra import StoreUnavailable
from fleet.infra.errors import InfraError


def _init(settings: Settings, args) -> int:
    """Prepare external Kafka/Cassandra (compose, a real cluster): everything is idempotent."""
    from fleet.contract.topics import Kafka
    from fleet.identity.ca import pki_from_settings
    from fleet.infra.kafka import create_topics
    from fleet.infra.migrations import apply_migrations

    pki = pki_from_settings(settings)
    pki.ensure(hostnames=("localhost", *args.broker_host))
    pki.service_identity(settings.bridge_client_id)
    print(f"PKI ready in {settings.pki_dir}")
    created = create_topics(settings, Kafka.ALL)
    print(f"Kafka topics ready ({len(created)} created) on {settings.kafka_bootstrap}")
    apply_migrations(settings)
    print(f"Cassandra keyspace {settings.cassandra_keyspace} migrated on {settings.cassandra_hosts}")
    return 0


def _admin_bootstrap(settings: Settings, args) -> int:
    """The first admin key: there is no default password, so this is how an installation starts."""
    from fleet.access.apikeys import ApiKeyStore
    from fleet.access.auth import Role
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(settings)
    try:
        keys = ApiKeyStore(sessions.get())
        if keys.count_active_admins() and not args.force:
            print("an active admin key exists already; use it to create more keys (POST /v1/keys), "
                  "or pass --force to add another admin key", file=sys.stderr)
            return 1
        key, secret = keys.create(args.name, Role.admin, created_by="fleet admin bootstrap")
    finally:
        sessions.shutdown()
    print(f"admin key {key.id} ({key.name}) created; it is shown only once:", file=sys.stderr)
    print(secret)
    return 0


def _admin_sync_crl(settings: Settings, args) -> int:
    from fleet.identity.onboarding import Onboarding
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(settings)
    try:
        changed = Onboarding(settings, sessions.get()).sync_crl()
    finally:
        sessions.shutdown()
    print("CRLs match the registry: " + ", ".join(f"{n} {what}" for what, n in changed.items()))
    return 0


def _lake_compact(settings: Settings, args) -> int:
    """Hourly from cron / a CronJob: see fleet/lake/compaction.py for the guarantees."""
    from fleet.lake import compaction as lake_compaction
    from fleet.logs import configure_logging

    configure_logging("lake-compaction", settings.log_level)
    return lake_compaction.run(settings.lake_path, tables=args.tables, min_age=args.min_age,
                               target_bytes=int(args.target_mb * 1024 * 1024), dry_run=args.dry_run)


# Filled by plugins (see load_plugins): e.g. "local_submit", the local stack's job submission.
HOOKS: dict[str, Callable[..., Any]] = {}


def load_plugins(sub) -> None:
    """Let installed plugins (entry-point group ``fleet.cli``) add subcommands and hooks."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="fleet.cli"):
        try:
            register = entry.load()
        except ModuleNotFoundError:
            continue  # a production install without the dev tooling: its commands are simply absent
        register(sub, HOOKS)


def _cluster(settings: Settings, args):
    from fleet.infra.flink_jobs import Cluster

    return Cluster.parse(args.cluster) if args.cluster else Cluster.local(settings.flink_rest_port)


def _jobs_submit(settings: Settings, args) -> int:
    from fleet.infra import flink_jobs as deploy

    cluster = _cluster(settings, args)
    deploy.refuse_second_copy(deploy.list_jobs(cluster), args.job)
    local_submit = HOOKS.get("local_submit")
    if local_submit and cluster == deploy.Cluster.local(settings.flink_rest_port) and not args.worker_python:
        # A plugin that knows the local stack (its conf, stale jars, a TaskManager's stale Python).
        job_id = local_submit(settings, deploy.job_script(args.job), args.job_args, savepoint=args.from_savepoint,
                              allow_non_restored=args.allow_non_restored_state, parallelism=args.parallelism)
    else:
        job_id = deploy.submit_to(settings, cluster, args.job, savepoint=args.from_savepoint,
                                  parallelism=args.parallelism, worker_python=args.worker_python,
                                  allow_non_restored=args.allow_non_restored_state, job_args=args.job_args)
    print(job_id, flush=True)
    config = deploy.verify_exactly_once(cluster, job_id, timeout=args.timeout)
    restored = deploy.restored_from(cluster, job_id) if args.from_savepoint else None
    print(f"job {args.job} {job_id} RUNNING on {cluster.url}: checkpointing {config['mode']} every "
          f"{config['interval'] / 1000:g}s, retained on cancellation"
          + (f"; restored from {restored}" if restored else ""), file=sys.stderr)
    return 0


def _jobs_stop(settings: Settings, args) -> int:
    from fleet.infra import flink_jobs as deploy

    cluster = _cluster(settings, args)
    job_id = deploy.resolve_job(deploy.list_jobs(cluster), args.job)
    target = deploy.savepoint_target(args.savepoint_dir)
    if target is None and not args.cluster:
        target = (settings.data_dir / "flink" / "savepoints").resolve().as_uri()
    print(f"stopping job {job_id} with a savepoint ...", file=sys.stderr, flush=True)
    path = deploy.stop_with_savepoint(cluster, job_id, target, timeout=args.timeout)
    state = deploy.wait_ended(cluster, job_id)
    print(f"job {job_id} {state}; savepoint:", file=sys.stderr)
    print(path)
    return 0


def _jobs_list(settings: Settings, args) -> int:
    from fleet.infra import flink_jobs as deploy

    lines = deploy.job_lines(_cluster(settings, args))
    print("\n".join(lines) if lines else "no jobs on the cluster")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _duration(text: str):
    from fleet.lake.compaction_plan import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    load_plugins(sub)

    admin = sub.add_parser("admin", help="administration").add_subparsers(dest="action", required=True)
    p = admin.add_parser("bootstrap", help="create the first admin API key and print it once")
    p.add_argument("--name", default="bootstrap-admin")
    p.add_argument("--force", action="store_true", help="create one even if an admin key exists")
    p.set_defaults(func=_admin_bootstrap)
    p = admin.add_parser("sync-crl", help="rebuild the CRLs from the registry (the source of truth)")
    p.set_defaults(func=_admin_sync_crl)

    from fleet.lake.compaction import TABLES

    lake = sub.add_parser("lake", help="the Parquet lake").add_subparsers(dest="action", required=True)
    p = lake.add_parser("compact", help="merge each finished hour partition's small files into one file, "
                                        f"in every lake table ({', '.join(TABLES)})")
    p.add_argument("--table", dest="tables", action="append", choices=list(TABLES), metavar="TABLE",
                   help=f"only this table ({', '.join(TABLES)}); repeatable; default: all of them")
    p.add_argument("--min-age", type=_duration, default="2h",
                   help="only hours that ended at least this long ago (2h, 90m, 1d; bare number = hours; "
                        "default 2h)")
    p.add_argument("--target-mb", type=_positive_mb, default=256.0,
                   help="largest output file, in MiB of source files (default 256)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=_lake_compact)

    jobs = sub.add_parser("jobs", help="the Flink jobs on any cluster (see docs/deploy.md)") \
        .add_subparsers(dest="action", required=True)
    cluster_help = "Flink REST URL (default: the local stack's, http://127.0.0.1:FLEET_FLINK_REST_PORT)"
    p = jobs.add_parser("submit", help="submit a job (jobs/<JOB>/job.py), then check it runs exactly-once")
    p.add_argument("job", nargs="?", default="telemetry", metavar="JOB", help="job name (default: telemetry)")
    p.add_argument("--from-savepoint", metavar="PATH", help="resume from this savepoint (or retained checkpoint)")
    p.add_argument("--allow-non-restored-state", action="store_true",
                   help="with --from-savepoint: skip savepoint state no operator claims")
    p.add_argument("--cluster", metavar="URL", help=cluster_help)
    p.add_argument("--parallelism", type=_positive_int, metavar="N", help="default: the cluster's parallelism.default")
    p.add_argument("--worker-python", metavar="PATH",
                   help="the Python the cluster's TaskManagers run (default: this one, sys.executable)")
    p.add_argument("--job-args", type=shlex.split, default=[], metavar="'ARGS'",
                   help="the job's own options, quoted as one argument, e.g. --job-args '--lake-part-mb 64' "
                        "(python -m jobs.telemetry.job --help lists them)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for RUNNING (default 240)")
    p.set_defaults(func=_jobs_submit)
    p = jobs.add_parser("stop", help="stop a job with a savepoint and print the savepoint's path")
    p.add_argument("job", nargs="?", default="telemetry", metavar="JOB|JOB_ID",
                   help="the one RUNNING job of this name, or a job id (default: telemetry)")
    p.add_argument("--savepoint-dir", metavar="DIR",
                   help="where to write it: a path or URI (default: the local stack's var/data/flink/savepoints; "
                        "with --cluster, the cluster's execution.checkpointing.savepoint-dir)")
    p.add_argument("--cluster", metavar="URL", help=cluster_help)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the savepoint (default 300)")
    p.set_defaults(func=_jobs_stop)
    p = jobs.add_parser("list", help="jobs with state, checkpointing mode and last completed checkpoint")
    p.add_argument("--cluster", metavar="URL", help=cluster_help)
    p.set_defaults(func=_jobs_list)

    p = sub.add_parser("init", help="PKI, Kafka topics and Cassandra migrations on an existing cluster")
    p.add_argument("--broker-host", action="append", default=[],
                   help="extra DNS name for the broker certificate (repeatable)")
    p.set_defaults(func=_init)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    started = time.monotonic()
    try:
        return args.func(settings, args)
    except InfraError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"\nerror: {exc} (is the stack up? 'fleet stack up cassandra')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - started:.0f}s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
