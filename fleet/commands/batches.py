"""Bulk commands, free of FastAPI, Kafka and Cassandra: what a batch targets, its members' command
ids, and its progress from its members' states.

A batch is one command (name, params, timeout, TTL) for every device a target selects: an explicit
list of device ids, or a registry filter (group, type, status, metadata; at least one, so "every
device" is never one typo away). The API resolves the target and submits one ordinary command
per device, each carrying the batch id; the commands job runs them like any other command and
also writes the batch's member row (its state, or REFUSED when it refused the submission). The
progress is counted from those rows.

Every member command has the batch's ``created_at`` (its TTL counts from the batch's creation)
and an id derived from the batch and the device (``member_command_id``), so submitting a member
again is the same command: the job drops the repeat.

Cancelling a batch marks it canceled (``canceled_at``): the fan-out checks the mark between chunks
and submits no more members, and every member not final gets the single command's cancellation
(``cancelable``) until no member can appear any more (``settled``). Final members keep their state.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.commands.domain import FINAL, State

# Stated limits: the explicit list fits a request body, a filter may select a large fleet.
MAX_DEVICE_IDS = 10_000
MAX_DEVICES = 100_000
# A batch still submitting whose heartbeat is older than this lost its API process.
INTERRUPTED_AFTER_MS = 60_000
SKIPPED_SAMPLE = 100  # how many skipped device ids a batch keeps (the count is exact)

SUBMITTING = "submitting"
SUBMITTED = "submitted"
FAILED = "failed"
INTERRUPTED = "interrupted"
CANCELED = "canceled"  # POST /v1/command-batches/{id}/cancel: the fan-out stops, members are canceled
REFUSED = "REFUSED"  # a member the commands job refused (its queue was full)
_FINAL = frozenset(s.value for s in FINAL)
_PENDING = frozenset(s.value for s in State) - _FINAL
MEMBER_STATES = (*(s.value for s in State), REFUSED)


def cancelable(member_state: str) -> bool:
    """A member a batch's cancellation cancels: its command is not final (REFUSED has none)."""
    return member_state in _PENDING


class TargetError(ValueError):
    """A target that selects nothing well-defined (answered 400)."""


@dataclass(frozen=True, slots=True)
class Target:
    device_ids: tuple[str, ...] | None = None
    group: str | None = None
    device_type: str | None = None
    status: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        if self.device_ids is not None:
            return {"device_ids": list(self.device_ids)}
        return {k: v for k, v in (("group", self.group), ("type", self.device_type), ("status", self.status),
                                  ("metadata", dict(self.metadata) or None)) if v is not None}


def target(*, device_ids: Iterable[str] | None = None, group: str | None = None, device_type: str | None = None,
           status: str | None = None, metadata: Mapping[str, str] | None = None) -> Target:
    """The target, or TargetError: either ``device_ids`` (1..MAX_DEVICE_IDS, repeats dropped in
    order) or at least one filter, not both."""
    has_filter = any(v is not None for v in (group, device_type, status)) or bool(metadata)
    if device_ids is not None:
        if has_filter:
            raise TargetError("give either device_ids or a filter (group, type, status, metadata), not both")
        ids = tuple(dict.fromkeys(device_ids))
        if not ids:
            raise TargetError("device_ids is empty")
        if len(ids) > MAX_DEVICE_IDS:
            raise TargetError(f"device_ids lists {len(ids)} devices, more than {MAX_DEVICE_IDS}; use a filter")
        return Target(device_ids=ids)
    if not has_filter:
        raise TargetError("a batch needs device_ids or at least one filter (group, type, status, metadata)")
    return Target(group=group, device_type=device_type, status=status, metadata=dict(metadata or {}))


def member_command_id(batch_id: str, device_id: str) -> str:
    """The command id of the batch's command for ``device_id`` (32 hex digits, stable)."""
    return hashlib.sha256(f"{batch_id}/{device_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Progress:
    state: str  # submitting, submitted, failed, interrupted, canceled
    targeted: int  # devices the target selected so far (all of them once submitted)
    submitted: int  # commands Kafka took
    skipped: int  # listed devices that do not exist or the caller may not see
    counts: dict[str, int]  # member rows per state (MEMBER_STATES), zeros included
    final: int  # members in a final state, REFUSED included
    pending: int  # submitted commands not final yet (including ones the job has not answered)
    done: bool  # the fan-out is over (submitted, or stopped by a cancel), and every member final


def _fan_out_stopped(state: str, heartbeat_at: int | None, now: int) -> bool:
    """The fan-out will submit no more members: it ended, or its API process is gone."""
    return state != SUBMITTING or heartbeat_at is None or now - heartbeat_at > INTERRUPTED_AFTER_MS


def progress(*, state: str, targeted: int, submitted: int, skipped: int, member_states: Iterable[str],
             heartbeat_at: int | None, now: int, canceled_at: int | None = None) -> Progress:
    """``state`` is the fan-out's (the batch row's); a canceled batch reads canceled whatever it is."""
    counted = Counter(member_states)
    counts = {s: counted.get(s, 0) for s in MEMBER_STATES}
    final = sum(n for s, n in counts.items() if s in _FINAL or s == REFUSED)
    stopped = _fan_out_stopped(state, heartbeat_at, now)
    over = state == SUBMITTED or (canceled_at is not None and stopped)
    if canceled_at is not None:
        state = CANCELED
    elif state == SUBMITTING and stopped:
        state = INTERRUPTED
    return Progress(state, targeted, submitted, skipped, counts, final, max(0, submitted - final),
                    over and final >= submitted)


def settled(*, state: str, heartbeat_at: int | None, now: int, submitted: int, members: int) -> bool:
    """No member of the batch can appear any more: the fan-out stopped and the commands job wrote
    the row of every command it submitted (``members`` rows). Until then a cancellation that swept
    the rows may have missed a member."""
    return _fan_out_stopped(state, heartbeat_at, now) and members >= submitted
