"""The shadow core: a KeyedProcessFunction (per device) around jobs.shadow.logic.

State per device (keyed by device id), all strings so savepoints survive refactoring:

- ``documents``: MapState shadow name -> fleet.shadow.domain.encode(document);
- ``buckets``: MapState shadow name -> "milli_tokens,updated_at" (the device's request rate);
- ``connectivity``: ValueState, JSON of the connectivity row and its last write timestamp.

RocksDB (the cluster's state backend) checkpoints them; a restore replays Kafka from the
checkpointed offsets onto them, and the sinks' write timestamps make the replayed writes harmless.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from fleet.shadow import domain as dom
from jobs.shadow import logic
from jobs.shadow.logic import CONNECTIVITY_FIELDS, HISTORY_FIELDS, SHADOW_FIELDS
from jobs.shadow.options import JobOptions
from jobs.shadow.records import CONNECTIVITY, DEAD_LETTERS, HISTORY, SHADOWS, VERDICTS


class _FlinkState:
    """logic.DeviceState over the function's keyed state (the current key is the device)."""

    def __init__(self, documents: Any, buckets: Any, connectivity: Any):
        self._documents, self._buckets, self._connectivity = documents, buckets, connectivity

    def document(self, name: str) -> str | None:
        return self._documents.get(name)

    def put_document(self, name: str, encoded: str) -> None:
        self._documents.put(name, encoded)

    def documents(self) -> Iterable[tuple[str, str]]:
        return list(self._documents.items())

    def bucket(self, name: str) -> str | None:
        return self._buckets.get(name)

    def put_bucket(self, name: str, encoded: str) -> None:
        self._buckets.put(name, encoded)

    def connectivity(self) -> str | None:
        value: str | None = self._connectivity.value()
        return value

    def put_connectivity(self, encoded: str) -> None:
        self._connectivity.update(encoded)


def _row(fields: list[str], value: dict[str, Any]) -> Row:
    return Row(*(value[f] for f in fields))


_KAFKA_TAGS = {logic.VERDICT: VERDICTS, logic.DEAD_LETTER: DEAD_LETTERS}
_ROW_TAGS = {logic.SHADOW: (SHADOWS, SHADOW_FIELDS), logic.HISTORY: (HISTORY, HISTORY_FIELDS),
             logic.CONNECTIVITY: (CONNECTIVITY, CONNECTIVITY_FIELDS)}


class ShadowCore(KeyedProcessFunction):
    """Main output: downlink Row(device_id, JSON); side outputs: records.SIDE_OUTPUTS."""

    def __init__(self, options: JobOptions):
        self.rules = options.rules

    def open(self, ctx: RuntimeContext) -> None:
        documents = ctx.get_map_state(MapStateDescriptor("documents", Types.STRING(), Types.STRING()))
        buckets = ctx.get_map_state(MapStateDescriptor("buckets", Types.STRING(), Types.STRING()))
        connectivity = ctx.get_state(ValueStateDescriptor("connectivity", Types.STRING()))
        self.state = _FlinkState(documents, buckets, connectivity)
        group = ctx.get_metrics_group().add_group("shadow")
        self.counters = {kind: group.counter(kind) for kind in ("records", "deadLetters")}

    def process_element(self, raw: str, ctx: KeyedProcessFunction.Context) -> Iterable:
        # The keyed stream hands over the raw JSON; the key (device id) is the context's.
        key = ctx.get_current_key()
        now = int(time.time() * 1000)
        try:
            outputs = logic.handle(key, raw, now, self.state, self.rules)
        except Exception as e:  # a bug must dead-letter the record, not stop every device's shadows
            outputs = [logic.dead_letter("invalid_envelope", f"shadow job error: {type(e).__name__}: {e}",
                                         raw if isinstance(raw, str) else "", key, "", now)]
        self.counters["records"].inc()
        for out in outputs:
            if out.kind == logic.DOWNLINK:
                yield Row(out.key, dom.dumps(out.value))
            elif out.kind in _KAFKA_TAGS:
                if out.kind == logic.DEAD_LETTER:
                    self.counters["deadLetters"].inc()
                yield _KAFKA_TAGS[out.kind], Row(out.key, dom.dumps(out.value))
            else:
                tag, fields = _ROW_TAGS[out.kind]
                yield tag, _row(fields, out.value)
