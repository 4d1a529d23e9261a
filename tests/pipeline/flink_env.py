"""The local Flink environment the pipeline tests run a job's build() in."""

from __future__ import annotations

from pyflink.common import Configuration
from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment


def local_env(parallelism: int = 2, *, rocksdb: bool = True) -> StreamExecutionEnvironment:
    """Streaming, in thread mode (the job's Python runs inside the JVM: see collect.py), with no
    restarts (fail the test, not retry for ever). RocksDB as on the cluster: it serialises state on
    every update, the heap backend does not (a wrong state type only shows up with RocksDB)."""
    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    if rocksdb:
        config.set_string("state.backend.type", "rocksdb")
    config.set_string("restart-strategy.type", "none")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_runtime_mode(RuntimeExecutionMode.STREAMING)
    env.set_parallelism(parallelism)
    return env
