"""The startup check every job runs: exactly-once checkpointing, retained, or the job refuses.

A bare cluster's defaults are checkpointing off; where the cluster config leaves a required key
unset the job sets it itself (fleet.infra.job_config.REQUIRED_DEFAULTS), then checks what is in
effect. Shared by the jobs so the rule is one piece of code.
"""

from __future__ import annotations

import logging

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from fleet.infra.job_config import REQUIRED_DEFAULTS, missing_defaults, problems
from jobs.telemetry.pyflink_internals import effective_config

log = logging.getLogger(__name__)


def exactly_once_problems(env: StreamExecutionEnvironment, lake_path: str | None, lake_enabled: bool) -> list[str]:
    """Set the missing required defaults on ``env``; what is still wrong (empty: may start)."""
    missing = missing_defaults(effective_config(env, REQUIRED_DEFAULTS))
    if missing:
        log.info("cluster config leaves %s unset: the job sets them", sorted(missing))
        conf = Configuration()
        for k, v in missing.items():
            conf.set_string(k, v)
        env.configure(conf)
    cp = env.get_checkpoint_config()
    retention = cp.get_externalized_checkpoint_retention() if cp.is_externalized_checkpoints_enabled() else None
    return problems(cp.get_checkpoint_interval(), cp.get_checkpointing_mode().name,
                    retention.name if retention is not None else None, lake_path, lake_enabled=lake_enabled)
