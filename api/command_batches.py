"""The fan-out of a bulk command in the API process: resolve its target, submit one command per device.

``POST /v1/command-batches`` writes the batch row and starts ``fan_out`` as a task on the event
loop, answering 202 at once. ``fan_out`` first resolves the whole target to device ids (explicit
ids: read from the registry concurrently, the missing and the invisible ones skipped; a filter:
the registry's pages), so a target over fleet.commands.batches.MAX_DEVICES fails before any
command goes out. Then it submits the commands in chunks of ``CHUNK`` through Kafka (the same
``command-requests`` records as single commands, with the batch id), retrying a chunk's refused
records, and records the progress and a heartbeat after each chunk. The commands job does the
rest, and writes each member's state.

A member's command id is fleet.commands.batches.member_command_id: a record sent twice (a retry
after a lost delivery report) is the same command, and the job drops the repeat. If this process
dies mid-way the heartbeat stops and the batch reads ``interrupted``.

``POST /v1/command-batches/{id}/cancel`` marks the batch canceled and runs ``cancel_members``.
``fan_out`` reads the mark before each chunk and stops there (state ``canceled``): the rest is
never submitted, on whichever API process the fan-out runs. ``cancel_members`` sends the single
command's cancellation (``cancel_record``, the commands job's ``cancel``) for every member row
not final, and sweeps again until no member can appear any more (fleet.commands.batches.settled:
the fan-out stopped, the job wrote every submitted member's row) or ``SETTLE_S`` passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from api.command_requests import CommandRequests, KafkaUnavailable, cancel_record, submit_record
from fleet.commands import batches
from fleet.commands.batch_store import Batch, BatchStore
from fleet.identity.devices import DeviceFilter, DeviceStatus
from fleet.identity.registry import DeviceRegistry
from fleet.logs import log_fields

log = logging.getLogger(__name__)

CHUNK = 500
SUBMIT_ATTEMPTS = 3
_PAGE = 1000
# How long a cancellation waits for a stopping fan-out and the job's member rows, sweeping again.
SETTLE_S = 10.0
SWEEP_PAUSE_S = 0.25


def _now_ms() -> int:
    return int(time.time() * 1000)


class BatchRunner:
    """The fan-out tasks of this process (kept referenced until done; cancelled at shutdown)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _resolve(target: batches.Target, registry: DeviceRegistry,
             visible_groups: frozenset[str] | None) -> tuple[list[str], list[str]]:
    """(device ids to command, listed ids skipped); runs on a worker thread."""
    if target.device_ids is not None:
        found: dict[str, Any] = {}
        ids = list(target.device_ids)
        for start in range(0, len(ids), CHUNK):
            found.update(registry.get_many(ids[start:start + CHUNK]))
        visible = [i for i in ids if i in found
                   and (visible_groups is None or bool(visible_groups & found[i].groups))]
        shown = set(visible)
        return visible, [i for i in ids if i not in shown]
    flt = DeviceFilter(status=DeviceStatus(target.status) if target.status else None, group=target.group,
                       device_type=target.device_type, metadata=target.metadata, visible_groups=visible_groups)
    out: list[str] = []
    after: str | None = None
    while True:
        page, after = registry.list(flt, _PAGE, after)
        out += [d.device_id for d in page]
        if len(out) > batches.MAX_DEVICES:
            raise batches.TargetError(f"the target selects more than {batches.MAX_DEVICES} devices")
        if after is None:
            return out, []


async def _submit(records: list[dict[str, Any]], requests: CommandRequests) -> str | None:
    """Submit every record, retrying the refused ones; None, or the last error if some never went."""
    error: str | None = None
    for attempt in range(SUBMIT_ATTEMPTS):
        results = await requests.send_many(records)
        failed = [(r, e) for r, e in zip(records, results, strict=True) if e is not None]
        if not failed:
            return None
        records, error = [r for r, _ in failed], failed[0][1]
        await asyncio.sleep(0.5 * 2 ** attempt)
    return f"{len(records)} commands were not taken by Kafka: {error}"


async def fan_out(batch: Batch, target: batches.Target, *, registry: DeviceRegistry, store: BatchStore,
                  requests: CommandRequests, visible_groups: frozenset[str] | None) -> None:
    targeted = submitted = 0
    skipped: list[str] = []

    async def record(state: str, error: str | None = None) -> None:
        await asyncio.to_thread(store.progress, batch.batch_id, state=state, error=error, targeted=targeted,
                                submitted=submitted, skipped=len(skipped),
                                skipped_sample=skipped[:batches.SKIPPED_SAMPLE], now=_now_ms())

    try:
        devices, skipped = await asyncio.to_thread(_resolve, target, registry, visible_groups)
        targeted = len(devices)
        await record(batches.SUBMITTING)
        for start in range(0, len(devices), CHUNK):
            if await asyncio.to_thread(store.canceled, batch.batch_id):
                await record(batches.CANCELED)
                log.info("bulk command canceled", extra=log_fields(batch_id=batch.batch_id, submitted=submitted,
                                                                   unsubmitted=targeted - submitted))
                return
            records = [submit_record(command_id=batches.member_command_id(batch.batch_id, device_id),
                                     device_id=device_id, name=batch.name, params=batch.params,
                                     timeout_ms=batch.timeout_ms, ttl_ms=batch.ttl_ms, created_by=batch.created_by,
                                     created_at=batch.created_at, batch_id=batch.batch_id)
                       for device_id in devices[start:start + CHUNK]]
            error = await _submit(records, requests)
            if error is not None:
                await record(batches.FAILED, error)
                log.warning("bulk command failed", extra=log_fields(batch_id=batch.batch_id, error=error,
                                                                    submitted=submitted))
                return
            submitted += len(records)
            await record(batches.SUBMITTING)
        await record(batches.SUBMITTED)
        log.info("bulk command submitted", extra=log_fields(batch_id=batch.batch_id, submitted=submitted,
                                                            skipped=len(skipped)))
    except asyncio.CancelledError:
        raise  # the API is stopping: the heartbeat stops, the batch reads interrupted
    except (batches.TargetError, KafkaUnavailable) as exc:
        await record(batches.FAILED, str(exc))
    except Exception as exc:  # the store went away mid-way: log it; the heartbeat tells the rest
        log.exception("bulk command fan-out failed", extra=log_fields(batch_id=batch.batch_id, error=str(exc)))


async def cancel_members(batch_id: str, *, store: BatchStore, requests: CommandRequests, by: str,
                         settle_s: float = SETTLE_S) -> int:
    """Cancel every member not final (once each); the number of cancellations sent. A member the
    job finished meanwhile is refused by the job (not_cancelable) and keeps its state.
    KafkaUnavailable when some were not taken (the batch stays canceled; cancelling again resumes)."""
    deadline = time.monotonic() + settle_s
    asked: set[str] = set()
    while True:
        members = await asyncio.to_thread(store.member_refs, batch_id)
        todo = [m for m in members if m.command_id not in asked and batches.cancelable(m.state)]
        for start in range(0, len(todo), CHUNK):
            records = [cancel_record(command_id=m.command_id, device_id=m.device_id, by=by, ts=_now_ms())
                       for m in todo[start:start + CHUNK]]
            error = await _submit(records, requests)
            if error is not None:
                raise KafkaUnavailable(error)
            asked.update(r["command_id"] for r in records)
        batch = await asyncio.to_thread(store.get, batch_id)
        if batch is None or time.monotonic() >= deadline or batches.settled(
                state=batch.state, heartbeat_at=batch.heartbeat_at, now=_now_ms(), submitted=batch.submitted,
                members=len(members)):
            return len(asked)
        await asyncio.sleep(SWEEP_PAUSE_S)
