"""Startup checks for the telemetry job: what it must not run without (plain Python, no Flink).

A job accepted by any cluster with the cluster's defaults (checkpointing off, at-least-once,
nothing retained) or a relative lake path (resolved inside the extracted Python archive) runs
and loses data silently, so the job refuses to start instead.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath

# What the job sets itself when the cluster config leaves it unset (flink-conf/config.yaml values).
REQUIRED_DEFAULTS = {
    "execution.checkpointing.interval": "5s",
    "execution.checkpointing.mode": "EXACTLY_ONCE",
    "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
}

# Flink reports "checkpointing off" as an interval of Long.MAX_VALUE ms.
_DISABLED_INTERVAL_MS = 2 ** 63 - 1


class JobConfigError(ValueError):
    pass


def configured_lake_path(environ: Mapping[str, str]) -> str | None:
    """The lake path as the submitter gave it, before Settings resolves it against the working
    directory (on a TaskManager that is the extracted archive, and an unset one defaults to the
    archive's var/): FLEET_LAKE_DIR, else FLEET_VAR_DIR/lake, each from the environment or else the
    TOML file named by FLEET_CONFIG_FILE (the environment wins, as in Settings), else None."""
    given: dict[str, str] = {}
    if environ.get("FLEET_CONFIG_FILE"):
        from fleet.config import read_config_file  # flat names, whether the file uses [lake] or not

        given = {k: str(v) for k, v in read_config_file(environ["FLEET_CONFIG_FILE"]).items()
                 if k in ("lake_dir", "var_dir") and v}
    lake = environ.get("FLEET_LAKE_DIR") or given.get("lake_dir")
    if lake:
        return lake
    var = environ.get("FLEET_VAR_DIR") or given.get("var_dir")
    return str(PurePath(var) / "lake") if var else None


def missing_defaults(conf: Mapping[str, str | None]) -> dict[str, str]:
    """The REQUIRED_DEFAULTS keys the effective config does not set."""
    return {k: v for k, v in REQUIRED_DEFAULTS.items() if not conf.get(k)}


def problems(interval_ms: int | None, mode: str | None, retention: str | None,
             lake_path: str | None, lake_enabled: bool = True) -> list[str]:
    """Everything wrong with the effective configuration; empty when the job may start."""
    out = []
    if interval_ms is None or interval_ms <= 0 or interval_ms >= _DISABLED_INTERVAL_MS:
        out.append(f"checkpointing is off (interval {interval_ms}); set execution.checkpointing.interval")
    if (mode or "").upper() != "EXACTLY_ONCE":
        out.append(f"checkpointing mode is {mode!r}, not EXACTLY_ONCE")
    if (retention or "").upper() not in ("RETAIN_ON_CANCELLATION", "RETAIN_ON_CANCEL"):
        out.append(f"externalized checkpoints are not retained ({retention!r}); "
                   "set execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION")
    if lake_enabled and (not lake_path or not PurePath(lake_path).is_absolute()):
        out.append(f"lake path {lake_path!r} is not absolute (a relative one resolves inside the job's "
                   "extracted archive); set FLEET_LAKE_DIR to an absolute path")
    return out


def check(interval_ms: int | None, mode: str | None, retention: str | None,
          lake_path: str | None, lake_enabled: bool = True) -> None:
    found = problems(interval_ms, mode, retention, lake_path, lake_enabled)
    if found:
        raise JobConfigError("telemetry job refuses to start: " + "; ".join(found))
