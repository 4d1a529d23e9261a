"""Crashes mid-stream: ``kill -9`` of the Flink TaskManager and of the bridge while a fleet
publishes; afterwards every (device, seq) the devices sent is in the lake exactly once and in
Cassandra exactly once. Then the job is stopped with a savepoint and resumed from it, and what
is sent meanwhile still arrives once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from devtools.simulator import GENERATORS, run_worker
from devtools.stack import flink
from devtools.stack.apps import BridgeComponent
from fleet.lake.dataset import telemetry_dataset

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def publish(settings, identities, rate: float, seconds: float) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run_worker(
        0, settings, identities, rate, seconds, list(GENERATORS)[:2], 1.0, 120.0, report=lambda r: None)))
    thread.start()
    return thread, result


def expected_keys(report) -> set[tuple[str, int]]:
    assert report.unacked == 0 and report.dropped == 0, report
    return {(dev, seq) for dev, (first, nxt) in report.seq_ranges.items() for seq in range(first, nxt)}


def lake_keys(settings, devices: set[str]) -> list[tuple[str, int]]:
    root = settings.lake_path / "telemetry"
    if not root.exists():
        return []
    table = telemetry_dataset(root) \
        .to_table(columns=["device_id", "seq"], filter=ds.field("device_id").isin(sorted(devices)))
    return list(zip(table.column("device_id").to_pylist(), table.column("seq").to_pylist(), strict=True))


def cassandra_keys(session, devices: set[str]) -> list[tuple[str, int]]:
    import datetime as dt

    days = [dt.date.today() - dt.timedelta(days=1), dt.date.today()]
    stmt = session.prepare("SELECT device_id, seq FROM telemetry WHERE device_id = ? AND day = ?")
    return [(r.device_id, r.seq) for d in sorted(devices) for day in days for r in session.execute(stmt, (d, day))]


def wait_exactly_once(what: str, read, expected: set, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        counts = Counter(got)
        dupes = [k for k, n in counts.items() if n > 1]
        assert not dupes, f"{what}: {len(dupes)} duplicated, e.g. {dupes[:5]}"
        missing = expected - set(counts)
        if not missing:
            assert set(counts) == expected, f"{what}: unexpected records {sorted(set(counts) - expected)[:5]}"
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {len(missing)} of {len(expected)} missing, e.g. {sorted(missing)[:5]}")
        time.sleep(3)


@pytest.fixture
def cassandra(stack):
    from fleet.infra.cassandra import CassandraSessions

    sessions = CassandraSessions(stack)
    yield sessions.get()
    sessions.shutdown()


def test_kill_9_of_taskmanager_and_bridge_loses_and_duplicates_nothing(stack, enrollment, telemetry_job,
                                                                        cassandra, tmp_path):
    tag = uuid.uuid4().hex[:6]
    identities = [enrollment.enroll(f"fault-{tag}-{i:02d}", tmp_path / str(i)) for i in range(10)]
    devices = {i.device_id for i in identities}
    thread, result = publish(stack, identities, rate=20.0, seconds=30.0)  # 10 x 20/s = 200 msg/s
    time.sleep(8)
    job_id = telemetry_job.id
    killed_at = int(time.time() * 1000)
    flink.kill_taskmanager(stack)  # kill -9, then a fresh TaskManager registers
    flink.wait_for_restore(stack, job_id, killed_at, timeout=180)
    bridge = BridgeComponent(stack)
    bridge.process.kill()  # kill -9 mid-stream: unacknowledged messages stay with the broker
    time.sleep(2)
    bridge.start()
    from devtools.stack.process import wait_until

    wait_until(bridge.healthy, what="bridge restart", timeout=60, process=bridge.process)
    thread.join(180)
    expected = expected_keys(result["report"])
    assert len(expected) > 3000
    wait_exactly_once("lake", lambda: lake_keys(stack, devices), expected)
    wait_exactly_once("Cassandra", lambda: cassandra_keys(cassandra, devices), expected)


def test_stop_with_savepoint_and_resume(stack, enrollment, telemetry_job, cassandra, tmp_path):
    tag = uuid.uuid4().hex[:6]
    identities = [enrollment.enroll(f"savepoint-{tag}-{i}", tmp_path / str(i)) for i in range(5)]
    devices = {i.device_id for i in identities}
    thread, result = publish(stack, identities, rate=10.0, seconds=20.0)
    time.sleep(5)
    savepoint = flink.stop_with_savepoint(stack, telemetry_job.id)
    assert Path(savepoint.removeprefix("file:")).exists()
    time.sleep(3)  # the job is down: the bridge keeps writing to Kafka meanwhile
    job_id = flink.submit_job(stack, PROJECT_ROOT / "jobs" / "telemetry" / "job.py", savepoint=savepoint)
    flink.wait_for_job_state(stack, job_id, ["RUNNING"], timeout=240, all_tasks_running=True)
    thread.join(120)
    expected = expected_keys(result["report"])
    wait_exactly_once("lake", lambda: lake_keys(stack, devices), expected)
    wait_exactly_once("Cassandra", lambda: cassandra_keys(cassandra, devices), expected)
