"""Which Kafka offsets the downlink may commit: the contiguous prefix the broker acknowledged.

The downlink reads a partition in order but the broker PUBACKs publishes for different devices
in any order, so offset N+1 may be acknowledged before N. Committing N+1 then would lose N on a
crash. Per partition this tracks the offsets handed out and acknowledged and yields the next
offset to commit: one past the longest run of acknowledged offsets from the start. Anything not
yet acknowledged is read again after a crash or rebalance (at least once; devices deduplicate by
message id).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class _Partition:
    # Offsets handed out and not yet acknowledged, as a min-heap, plus a set for O(1) lookups.
    pending: list[int] = field(default_factory=list)
    pending_set: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    # One past the highest offset handed out; the commit point when nothing is pending.
    high: int | None = None
    committed: int | None = None


class CommitFrontier:
    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}

    def track(self, partition: int, offset: int) -> None:
        """A record at ``offset`` was handed to the broker and waits for its acknowledgement."""
        p = self._parts.setdefault(partition, _Partition())
        if offset in p.pending_set or (p.committed is not None and offset < p.committed):
            return  # redelivered after a seek: already tracked or already committed
        heapq.heappush(p.pending, offset)
        p.pending_set.add(offset)
        p.high = offset + 1 if p.high is None else max(p.high, offset + 1)

    def done(self, partition: int, offset: int) -> None:
        """The broker acknowledged the record at ``offset`` (or it needs no publish)."""
        p = self._parts.get(partition)
        if p is None or offset not in p.pending_set:
            return  # from before a rebalance reset this partition
        p.acked.add(offset)
        while p.pending and p.pending[0] in p.acked:
            first = heapq.heappop(p.pending)
            p.pending_set.discard(first)
            p.acked.discard(first)

    def commit_point(self, partition: int) -> int | None:
        """The offset to commit for ``partition`` (Kafka's "next to read"), or None if nothing is."""
        p = self._parts.get(partition)
        if p is None or p.high is None:
            return None
        return p.pending[0] if p.pending else p.high

    def commit_points(self) -> dict[int, int]:
        """Every partition's commit point, moved or not (a final commit after failed async ones)."""
        return {partition: point for partition in self._parts if (point := self.commit_point(partition)) is not None}

    def to_commit(self) -> dict[int, int]:
        """Commit points that moved since the last call (mark them committed)."""
        out = {}
        for partition, p in self._parts.items():
            point = self.commit_point(partition)
            if point is not None and point != p.committed:
                out[partition] = point
                p.committed = point
        return out

    def reset(self, partition: int) -> None:
        """The partition was revoked: its pending records will be re-read by its next owner."""
        self._parts.pop(partition, None)

    @property
    def outstanding(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())
