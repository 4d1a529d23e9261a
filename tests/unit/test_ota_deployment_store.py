"""fleet/ota/deployment_store.py on a fake Cassandra session: the statements it prepares on dicts
(the tables of 009_ota.cql), with write timestamps as Cassandra orders them. The API route tests
use the same fake (tests/unit/test_api_ota.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from fleet.infra.cql_values import from_epoch_ms
from fleet.infra.migrations import MIGRATIONS_DIR, load_migration
from fleet.ota import deployment_store as ds
from fleet.ota import deployments as dep
from fleet.ota.deployment_store import Deployment, DeploymentStore

T0 = 1_717_156_800_000
_DEP = [c.strip() for c in ds._COLUMNS.split(",")]
_EXEC = [c.strip() for c in ds._EXEC_COLUMNS.split(",")]


class _Result(list):
    def one(self) -> Any:
        return self[0] if self else None

    def result(self) -> _Result:  # execute_async's future
        return self


class FakeOtaSession:
    """ota_* tables on dicts; a cell keeps its value with the timestamp it was written with."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, tuple[int, Any]]] = {}
        self.targets: dict[tuple[str, int], list[str]] = {}
        self.by_device: dict[tuple[str, str], Any] = {}
        self.executions: dict[tuple[str, str], dict[str, Any]] = {}  # (deployment, device) -> row
        self.statements: list[str] = []

    def prepare(self, query: str) -> SimpleNamespace:
        return SimpleNamespace(query=query, fetch_size=None)

    def execute_async(self, stmt: SimpleNamespace, params: tuple[Any, ...]) -> _Result:
        return self.execute(stmt, params)

    # -- what the job writes (jobs/ota sinks) ----------------------------------------------------
    def job_writes_deployment(self, deployment_id: str, state: str, summary: dict[str, Any] | None, now: int,
                              write_ts: int | None = None) -> None:
        ts = write_ts if write_ts is not None else now * 1000 + 500
        self._put(deployment_id, ts, state=state, summary=json.dumps(summary) if summary is not None else None,
                  updated_at=from_epoch_ms(now))

    def job_writes_execution(self, deployment_id: str, device_id: str, state: str, wave: int = 0, attempt: int = 1,
                             now: int = T0, execution: dict[str, Any] | None = None) -> None:
        self.executions[(deployment_id, device_id)] = {
            "deployment_id": deployment_id, "device_id": device_id, "state": state, "wave": wave, "attempt": attempt,
            "updated_at": from_epoch_ms(now), "execution": json.dumps(execution or {"state": state})}

    # -- the statements ----------------------------------------------------------------------------
    def _put(self, key: str, ts: int, /, **cells: Any) -> None:
        row = self.deployments.setdefault(key, {})
        for name, value in cells.items():
            if name not in row or row[name][0] <= ts:
                row[name] = (ts, value)

    def _dep_row(self, deployment_id: str) -> SimpleNamespace:
        cells = self.deployments[deployment_id]
        return SimpleNamespace(**{c: cells[c][1] if c in cells else None for c in _DEP})

    @staticmethod
    def _exec_row(row: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(**{c: row[c] for c in _EXEC})

    def execute(self, stmt: SimpleNamespace, params: tuple[Any, ...]) -> _Result:
        q = stmt.query
        self.statements.append(q)
        if q.startswith("INSERT INTO ota_deployments"):
            names = [c.strip() for c in q[q.index("(") + 1:q.index(")")].split(",")]
            self._put(params[0], params[-1], **dict(zip(names, params[:-1], strict=True)))
            return _Result()
        if q.startswith("UPDATE ota_deployments USING TIMESTAMP"):
            ts, state, summary, updated_at, deployment_id = params
            self._put(deployment_id, ts, state=state, summary=summary, updated_at=updated_at)
            return _Result()
        if q.startswith("INSERT INTO ota_deployment_targets"):
            self.targets[(params[0], params[1])] = list(params[2])
            return _Result()
        if q.startswith("INSERT INTO ota_targets_by_device"):
            self.by_device[(params[0], params[1])] = params[2]
            return _Result()
        if "FROM ota_deployments WHERE deployment_id = ?" in q:
            if params[0] not in self.deployments:
                return _Result()
            row = self._dep_row(params[0])
            return _Result([SimpleNamespace(deployment_id=row.deployment_id, name=row.name, state=row.state)
                            if q.startswith("SELECT deployment_id, name, state") else row])
        if "FROM ota_deployments" in q:  # token order: id order will do
            after, limit = (params[0], params[1]) if "token" in q else ("", params[0])
            return _Result([self._dep_row(i) for i in sorted(self.deployments) if i > after][:limit])
        if "FROM ota_targets_by_device WHERE device_id = ?" in q:
            return _Result([SimpleNamespace(deployment_id=d) for (dev, d) in sorted(self.by_device) if dev == params[0]])
        if "FROM ota_executions_by_device WHERE device_id = ? AND deployment_id = ?" in q:
            row = self.executions.get((params[1], params[0]))
            return _Result([SimpleNamespace(state=row["state"])] if row else [])
        if "FROM ota_executions_by_device" in q:
            device_id, after, limit = params
            return _Result([self._exec_row(r) for (d, dev), r in sorted(self.executions.items())
                            if dev == device_id and d > after][:limit])
        if "FROM ota_executions WHERE" in q:
            deployment_id, after, *rest = params
            state, limit = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
            rows = [r for (d, dev), r in sorted(self.executions.items(), key=lambda kv: kv[0][1])
                    if d == deployment_id and dev > after and (state is None or r["state"] == state)]
            return _Result([self._exec_row(r) for r in rows[:limit]])
        raise AssertionError(f"unexpected statement {q}")


def deployment(deployment_id: str = "dep1", state: str = "PENDING", n: int = 3, **kw: Any) -> Deployment:
    values: dict[str, Any] = dict(name="spring", firmware_id="fw1", device_type="thermo", version="2.0.0", state=state,
                                  created_at=T0, created_by="alice", updated_at=T0, plan=dep.validate_plan(None),
                                  target_count=n)
    return Deployment(deployment_id, **{**values, **kw})


def test_the_migration_has_the_contracts_tables_and_ttls() -> None:
    m = load_migration(MIGRATIONS_DIR / "009_ota.cql")
    tables = {s.split("(")[0].split()[-1]: s for s in m.statements}
    assert list(tables) == ["ota_deployments", "ota_deployment_targets", "ota_targets_by_device", "ota_executions",
                            "ota_executions_by_device"]
    assert "default_time_to_live" not in tables["ota_deployments"]
    for name in list(tables)[1:]:
        assert "default_time_to_live = 7776000" in tables[name]
    assert all("IF NOT EXISTS" in s for s in m.statements)
    for column in _DEP:
        assert f"    {column} " in tables["ota_deployments"], column


def test_create_writes_the_row_the_chunks_and_the_index_then_reads_back() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    d = deployment(n=3)
    store.create(d, [["a", "b"], ["c"]])
    assert session.targets == {("dep1", 0): ["a", "b"], ("dep1", 1): ["c"]}
    assert sorted(session.by_device) == [("a", "dep1"), ("b", "dep1"), ("c", "dep1")]
    assert store.get("dep1") == d and store.get("nope") is None
    assert session.deployments["dep1"]["state"][0] == T0 * 1000  # the start of its millisecond


def test_the_jobs_writes_supersede_the_pending_row_even_in_the_same_millisecond() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    store.create(deployment(), [["a"]])
    session.job_writes_deployment("dep1", "RUNNING", {"state": "RUNNING", "released": 1}, T0)
    got = store.get("dep1")
    assert got is not None and got.state == "RUNNING" and got.summary == {"state": "RUNNING", "released": 1}
    assert got.updated_at == T0


def test_abandon_cancels_with_the_reason() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    d = deployment(n=2)
    store.create(d, [["a", "b"]])
    store.abandon(d, "not started: Kafka down", T0 + 5)
    got = store.get("dep1")
    assert got is not None and got.state == "CANCELED" and got.updated_at == T0 + 5
    assert got.summary is not None and got.summary["reason"] == "not started: Kafka down"
    assert dep.progress(state=got.state, summary=got.summary, plan=got.plan, target_count=2)["final"] is True


def test_list_pages_in_storage_order() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    for i in range(5):
        store.create(deployment(f"dep{i}"), [["a"]])
    page, after = store.list(limit=2)
    assert [d.deployment_id for d in page] == ["dep0", "dep1"] and after == "dep1"
    page, after = store.list(limit=3, after=after)
    assert [d.deployment_id for d in page] == ["dep2", "dep3", "dep4"] and after == "dep4"
    assert store.list(limit=3, after=after) == ([], None)


def test_holders_follow_the_conflict_rule() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    store.create(deployment("running", "PENDING", name="one"), [["a", "b", "c", "d"]])
    session.job_writes_deployment("running", "RUNNING", None, T0)
    session.job_writes_execution("running", "b", "SUCCEEDED")  # finished there: free
    session.job_writes_execution("running", "c", "INSTALLING")  # still at it: held
    store.create(deployment("done", "PENDING"), [["e"]])
    session.job_writes_deployment("done", "SUCCEEDED", None, T0)
    store.create(deployment("waiting", "PENDING", name="two"), [["f"]])  # not started: its devices are held
    held = store.holders(["a", "b", "c", "d", "e", "f", "g"])
    assert [(h.device_id, h.deployment_id, h.name, h.state) for h in held] == [
        ("a", "running", "one", "RUNNING"), ("c", "running", "one", "RUNNING"), ("d", "running", "one", "RUNNING"),
        ("f", "waiting", "two", "PENDING")]


def test_holders_of_many_devices_go_out_in_windows() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    ids = [f"d{i}" for i in range(1000)]
    assert store.holders(ids) == []
    assert sum("ota_targets_by_device" in q for q in session.statements) == 1000


def test_executions_page_and_filter_by_state() -> None:
    session = FakeOtaSession()
    store = DeploymentStore(session)
    for i, state in enumerate(["QUEUED", "SUCCEEDED", "QUEUED", "FAILED", "QUEUED"]):
        session.job_writes_execution("dep1", f"d{i}", state, wave=i // 2, execution={"history": [{"to": state}]})
    session.job_writes_execution("dep2", "d0", "SUCCEEDED")
    page = store.executions("dep1", limit=2)
    assert [(e.device_id, e.state, e.wave) for e in page] == [("d0", "QUEUED", 0), ("d1", "SUCCEEDED", 0)]
    assert page[0].execution == {"history": [{"to": "QUEUED"}]} and page[0].updated_at == T0
    assert [e.device_id for e in store.executions("dep1", limit=2, after="d1")] == ["d2", "d3"]
    assert [e.device_id for e in store.executions("dep1", limit=10, state="QUEUED")] == ["d0", "d2", "d4"]
    assert [e.deployment_id for e in store.device_executions("d0", limit=10)] == ["dep1", "dep2"]
    assert [e.deployment_id for e in store.device_executions("d0", limit=10, after="dep1")] == ["dep2"]


def test_a_row_with_unreadable_json_reads_as_none() -> None:
    session = FakeOtaSession()
    session.executions[("dep1", "d0")] = {"deployment_id": "dep1", "device_id": "d0", "state": "QUEUED", "wave": None,
                                          "attempt": None, "updated_at": from_epoch_ms(T0).replace(tzinfo=None),
                                          "execution": "{oops"}
    (e,) = DeploymentStore(session).executions("dep1", limit=5)
    assert (e.execution, e.wave, e.attempt, e.updated_at) == (None, 0, 0, T0)
