"""OTA deployments in Cassandra (schemas/cql/009_ota.cql), as the API reads and writes them.

The API writes a deployment's row (PENDING), its target chunks and the per-device index
``ota_targets_by_device``; the OTA job writes the row's state, summary and updated_at, and the
execution tables. The PENDING row is written ``USING TIMESTAMP`` of its creation millisecond's
start, so any write of the job (fleet/ota/rollout.py via jobs/ota: the upper half of its
millisecond) supersedes it. Reads and writes of many devices go out concurrently, ``_WINDOW`` at a
time (a 10,000-device deployment: about 10,000 index reads and 10,000 index writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.infra.cql_values import epoch_ms, from_epoch_ms
from fleet.ota.deployments import Holder, blocks, pending_summary

if TYPE_CHECKING:  # the driver ships no type hints
    from cassandra.cluster import Session

_WINDOW = 256
_COLUMNS = ("deployment_id, name, firmware_id, device_type, version, state, created_at, created_by, updated_at, plan, "
            "target_count, rollback_of, summary")
_EXEC_COLUMNS = "deployment_id, device_id, state, wave, attempt, updated_at, execution"


@dataclass(frozen=True, slots=True)
class Deployment:
    deployment_id: str
    name: str
    firmware_id: str
    device_type: str
    version: str
    state: str
    created_at: int  # epoch ms
    created_by: str
    updated_at: int
    plan: dict[str, Any]
    target_count: int
    rollback_of: str | None = None
    summary: dict[str, Any] | None = None  # the job's (fleet/ota/deployments.py); None until it wrote one


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    deployment_id: str
    device_id: str
    state: str
    wave: int
    attempt: int
    updated_at: int
    execution: dict[str, Any] | None  # fleet/ota/execution.py execution_json, history included


def _json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _deployment(row: Any) -> Deployment:
    return Deployment(row.deployment_id, row.name or "", row.firmware_id or "", row.device_type or "",
                      row.version or "", row.state or "PENDING", epoch_ms(row.created_at) or 0, row.created_by or "",
                      epoch_ms(row.updated_at) or 0, _json(row.plan) or {}, row.target_count or 0, row.rollback_of,
                      _json(row.summary))


def _execution(row: Any) -> ExecutionRow:
    return ExecutionRow(row.deployment_id, row.device_id, row.state or "", row.wave or 0, row.attempt or 0,
                        epoch_ms(row.updated_at) or 0, _json(row.execution))


class DeploymentStore:
    """Prepared statements over one Cassandra session (prepared on construction)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._create = session.prepare(
            f"INSERT INTO ota_deployments ({_COLUMNS.removesuffix(', summary')}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
        self._chunk = session.prepare(
            "INSERT INTO ota_deployment_targets (deployment_id, chunk, devices) VALUES (?, ?, ?)")
        self._claim = session.prepare(
            "INSERT INTO ota_targets_by_device (device_id, deployment_id, created_at) VALUES (?, ?, ?)")
        self._abandon = session.prepare(
            "UPDATE ota_deployments USING TIMESTAMP ? SET state = ?, summary = ?, updated_at = ? "
            "WHERE deployment_id = ?")
        self._get = session.prepare(f"SELECT {_COLUMNS} FROM ota_deployments WHERE deployment_id = ?")
        self._first = session.prepare(f"SELECT {_COLUMNS} FROM ota_deployments LIMIT ?")
        self._next = session.prepare(
            f"SELECT {_COLUMNS} FROM ota_deployments WHERE token(deployment_id) > token(?) LIMIT ?")
        self._claims = session.prepare("SELECT deployment_id FROM ota_targets_by_device WHERE device_id = ?")
        self._head = session.prepare("SELECT deployment_id, name, state FROM ota_deployments WHERE deployment_id = ?")
        self._exec_state = session.prepare(
            "SELECT state FROM ota_executions_by_device WHERE device_id = ? AND deployment_id = ?")
        self._executions = session.prepare(
            f"SELECT {_EXEC_COLUMNS} FROM ota_executions WHERE deployment_id = ? AND device_id > ? LIMIT ?")
        # Filtering within one partition (a deployment's executions) reads that partition only.
        self._executions_in = session.prepare(
            f"SELECT {_EXEC_COLUMNS} FROM ota_executions WHERE deployment_id = ? AND device_id > ? AND state = ? "
            "LIMIT ? ALLOW FILTERING")
        self._of_device = session.prepare(
            f"SELECT {_EXEC_COLUMNS} FROM ota_executions_by_device WHERE device_id = ? AND deployment_id > ? LIMIT ?")

    def _concurrently(self, statement: Any, params: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
        """Every execution's rows, in the order of ``params``; at most _WINDOW in flight."""
        out: list[list[Any]] = []
        window: list[Any] = []
        for p in params:
            window.append(self.session.execute_async(statement, p))
            if len(window) == _WINDOW:
                out += [list(f.result()) for f in window]
                window = []
        return out + [list(f.result()) for f in window]

    def create(self, d: Deployment, chunks: Sequence[Sequence[str]]) -> None:
        """The PENDING row, then the target chunks, then each target's index row."""
        created = from_epoch_ms(d.created_at)
        self.session.execute(self._create, (
            d.deployment_id, d.name, d.firmware_id, d.device_type, d.version, d.state, created, d.created_by,
            from_epoch_ms(d.updated_at), json.dumps(d.plan, separators=(",", ":")), d.target_count, d.rollback_of,
            d.created_at * 1000))
        self._concurrently(self._chunk, ((d.deployment_id, i, list(c)) for i, c in enumerate(chunks)))
        self._concurrently(self._claim, ((device_id, d.deployment_id, created) for c in chunks for device_id in c))

    def abandon(self, d: Deployment, reason: str, now: int) -> None:
        """CANCELED with ``reason``: the records never all reached the job, so it holds no device."""
        summary = {**pending_summary(d.plan, d.target_count, "CANCELED"), "reason": reason}
        self.session.execute(self._abandon, (now * 1000, "CANCELED", json.dumps(summary, separators=(",", ":")),
                                             from_epoch_ms(now), d.deployment_id))

    def get(self, deployment_id: str) -> Deployment | None:
        row = self.session.execute(self._get, (deployment_id,)).one()
        return _deployment(row) if row is not None else None

    def holders(self, device_ids: Sequence[str]) -> list[Holder]:
        """The devices another deployment still holds (fleet.ota.deployments.blocks), in target order."""
        claims = [(device_id, r.deployment_id) for device_id, rows in
                  zip(device_ids, self._concurrently(self._claims, ((i,) for i in device_ids)), strict=True)
                  for r in rows]
        ids = sorted({dep for _, dep in claims})
        heads = {rows[0].deployment_id: rows[0] for rows in self._concurrently(self._head, ((i,) for i in ids)) if rows}
        open_claims = [(device_id, dep) for device_id, dep in claims if dep in heads]
        states = self._concurrently(self._exec_state, open_claims)
        return [Holder(device_id, dep, heads[dep].name or "", heads[dep].state)
                for (device_id, dep), rows in zip(open_claims, states, strict=True)
                if blocks(heads[dep].state, rows[0].state if rows else None)]

    def executions(self, deployment_id: str, *, limit: int, after: str | None = None,
                   state: str | None = None) -> list[ExecutionRow]:
        """Up to ``limit`` of the deployment's executions in device-id order after ``after``."""
        if state is None:
            rows = self.session.execute(self._executions, (deployment_id, after or "", limit))
        else:
            rows = self.session.execute(self._executions_in, (deployment_id, after or "", state, limit))
        return [_execution(r) for r in rows]

    def device_executions(self, device_id: str, *, limit: int, after: str | None = None) -> list[ExecutionRow]:
        """Up to ``limit`` of the device's executions in deployment-id order after ``after``."""
        return [_execution(r) for r in self.session.execute(self._of_device, (device_id, after or "", limit))]

    # Last: in the class body below it, ``list`` would be this method, not the builtin.
    def list(self, *, limit: int, after: str | None = None) -> tuple[list[Deployment], str | None]:
        """A page in storage (token) order, and the id to continue after (None: the last page)."""
        rows = self.session.execute(self._first, (limit,)) if after is None else \
            self.session.execute(self._next, (after, limit))
        page = [_deployment(r) for r in rows]
        return page, page[-1].deployment_id if len(page) == limit else None
