"""Network buffer flushing for the jobs an operator or a device waits on (shadow, commands).

Flink ships records between operators in network buffers, flushed when full or every
``execution.buffer-timeout.interval`` (100 ms by default). At the rates of shadow updates and
commands a buffer seldom fills, so each keyed exchange added up to 100 ms to a PATCH's verdict
and to every command transition (a command crosses the job twice: request and result). The
telemetry job keeps the default: it is throughput-bound and nobody waits on one of its records.
"""

from __future__ import annotations

from pyflink.datastream import StreamExecutionEnvironment

# Flushing every 5 ms costs a little CPU at low rates; above ~1 record per buffer per 5 ms the
# buffers fill first and nothing changes.
INTERACTIVE_BUFFER_TIMEOUT_MS = 5


def flush_buffers_quickly(env: StreamExecutionEnvironment) -> None:
    env.set_buffer_timeout(INTERACTIVE_BUFFER_TIMEOUT_MS)
