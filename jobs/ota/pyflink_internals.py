"""Every reach of the OTA job into PyFlink's private API and the Java side: the shadow job's
(jobs.shadow.pyflink_internals), which are generic, re-exported so the job's other modules import
only this one."""

from __future__ import annotations

from jobs.shadow.pyflink_internals import (
    cassandra_sink,
    discard,
    key_by_device,
    set_keyed_deserializer,
    side_output,
)

__all__ = ["cassandra_sink", "discard", "key_by_device", "side_output", "set_keyed_deserializer"]
