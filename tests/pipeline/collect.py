"""A collecting sink of our own for pipeline tests: records -> JSON lines, one file per parallel instance.

Python functions run inside Flink's JVM (thread mode), not in the test's interpreter, so a list
in the test process cannot see them; files in a temporary directory can. Rows are written as
dicts (their field names), in the order each subtask emitted them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, MapFunction, RuntimeContext
from pyflink.datastream.connectors.base import Sink
from pyflink.java_gateway import get_gateway


def _plain(value: Any) -> Any:
    if isinstance(value, Row):
        return {k: _plain(v) for k, v in value.as_dict().items()} if value._fields else [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _AppendJsonLines(MapFunction):
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.fh = None

    def open(self, ctx: RuntimeContext) -> None:
        # One file per parallel instance (get_index_of_this_subtask() is broken in thread mode on
        # Flink 2.x: it calls a RuntimeContext method that moved to TaskInfo).
        self.fh = open(f"{self.prefix}-{uuid.uuid4().hex}.jsonl", "a", encoding="utf-8")

    def map(self, value: Any) -> str:
        self.fh.write(json.dumps(_plain(value), sort_keys=True) + "\n")
        self.fh.flush()
        return ""

    def close(self) -> None:
        if self.fh:
            self.fh.close()


class Collector:
    """``collector.sink(stream, "points")`` in the pipeline; ``collector.read("points")`` after."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def sink(self, stream: DataStream, name: str) -> None:
        discard = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
        (stream.map(_AppendJsonLines(str(self.directory / name)), output_type=Types.STRING())
         .name(f"collect-{name}")
         .sink_to(Sink(discard)).name(f"discard-{name}"))

    def read(self, name: str) -> list[Any]:
        """Every record of every subtask; within a subtask (so per key), in emission order."""
        records = []
        for path in sorted(self.directory.glob(f"{name}-*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line]
        return records


class CollectingSinks:
    """The telemetry job's sinks (jobs.telemetry.pipeline.TelemetrySinks), each stream collected under
    its own name: "points", "rollups", "gaps", "stats", "dead_letters"."""

    def __init__(self, collector: Collector):
        self.collector = collector

    def points(self, stream: DataStream) -> None:
        self.collector.sink(stream, "points")

    def rollups(self, stream: DataStream) -> None:
        self.collector.sink(stream, "rollups")

    def gaps(self, stream: DataStream) -> None:
        self.collector.sink(stream, "gaps")

    def stats(self, stream: DataStream) -> None:
        self.collector.sink(stream, "stats")

    def dead_letters(self, stream: DataStream) -> None:
        self.collector.sink(stream, "dead_letters")
