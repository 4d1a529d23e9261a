"""The OTA job's build() on in-memory records in a local Flink (thread mode, RocksDB).

Both operators run on their own in-memory source (the Kafka loop between them is the
end-to-end test's: tests/integration/test_ota_e2e.py). ``PAUSE`` markers sleep in a pacing step,
so the job runs on while no record arrives and its processing-time timers fire on their own.

Rollout: deployment dep1 of three targets in two waves, fast rate: wave 1 (one device) is
released at once; its device's SUCCEEDED transition releases wave 2; a cancel stops it.
Devices: d-1 online goes through the whole update and passes its 1 s health window during the
pause (SUCCEEDED by the timer); d-2 online never answers: TIMED_OUT by its 1 s progress timeout
during the pause; d-3 is offline: QUEUED, notified when it connects after the pause.
Plus a record that is not JSON and a status for a deployment nobody assigned: dead letters.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

PAUSE = "PAUSE"
FW = {"firmware_id": "f1", "device_type": "sensor", "version": "2.0.0", "sha256": "ab" * 32, "size": 10,
      "signature": "c2ln", "signer": "platform"}
POLICY = {"health_window_ms": 1_000, "progress_timeout_ms": 1_000, "timeout_ms": 60_000, "max_boots": 2}


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))


def rollout(record: dict) -> tuple[str, str]:
    return record["deployment_id"], dumps(record)


def device(record: dict) -> tuple[str, str]:
    return record["device_id"], dumps(record)


def online(d: str, up: bool = True, version: str = "1.0.0") -> tuple[str, str]:
    return device({"device_id": d, "type": "status", "mqtt_topic": f"devices/{d}/status",
                   "payload": {"online": up, "firmware_version": version}})


def status(d: str, state: str, **extra) -> tuple[str, str]:
    return device({"device_id": d, "type": "ota_status", "mqtt_topic": f"devices/{d}/ota/status",
                   "payload": {"deployment_id": "dep1", "state": state, **extra}})


def assign(d: str) -> tuple[str, str]:
    return device({"op": "assign", "deployment_id": "dep1", "device_id": d, "wave": 0, "firmware": FW,
                   "device": POLICY, "ts": 0})


ROLLOUT = [
    rollout({"op": "create", "deployment_id": "dep1", "created_at": 0, "created_by": "op", "name": "r",
             "firmware": FW, "plan": {"rate_per_minute": 6000, "device": POLICY,
                                      "waves": [{"size": 1}, {"size": "100%"}]},
             "target_count": 3, "chunks": 1, "rollback_of": None}),
    rollout({"op": "targets", "deployment_id": "dep1", "chunk": 0, "devices": ["d-1", "d-2", "d-3"]}),
    rollout({"type": "transition", "deployment_id": "dep1", "device_id": "d-1", "wave": 0, "from": "VERIFYING",
             "to": "SUCCEEDED", "ts": 0, "reason": "", "attempt": 1, "seq": 8}),
    rollout({"op": "cancel", "deployment_id": "dep1", "by": "alice", "ts": 0, "request_id": "r1"}),
    ("dep1", "{oops"),
]

DEVICES = [
    online("d-1"), online("d-2"), assign("d-1"), assign("d-2"), assign("d-3"),
    status("d-1", "RECEIVED"), status("d-1", "DOWNLOADING", progress=50), status("d-1", "DOWNLOADED"),
    status("d-1", "INSTALLING"), status("d-1", "REBOOTING"), online("d-1", False), online("d-1", True, "2.0.0"),
    status("d-1", "BOOTED", firmware_version="2.0.0", boot=1),
    device({"device_id": "d-2", "type": "ota_status", "payload": {"deployment_id": "ghost", "state": "DOWNLOADING"}}),
    ("d-2", "{oops"),
    (PAUSE, PAUSE),  # 3 s: d-1's health window passes, d-2's progress timeout fires
    online("d-3"),
]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from pyflink.common import Row, Types
    from pyflink.datastream import FlatMapFunction

    from fleet.config import Settings
    from jobs.ota.pipeline import build
    from tests.pipeline.collect import Collector
    from tests.pipeline.flink_env import local_env

    collector = Collector(tmp_path_factory.mktemp("ota"))

    class Sinks:
        def __getattr__(self, name):
            return lambda stream: collector.sink(stream, name)

    class Pace(FlatMapFunction):
        def flat_map(self, value):
            import time as t

            if value[0] == PAUSE:
                t.sleep(3)
                return
            yield Row(value[0], value[1])

    env = local_env()
    row = Types.ROW([Types.STRING(), Types.STRING()])

    def source(records, name):
        raw = env.from_collection([Row(k, v) for k, v in records], type_info=row).name(name).set_parallelism(1)
        return raw.flat_map(Pace(), output_type=row).name(f"pace-{name}").set_parallelism(1)

    settings = Settings.from_env({"FLEET_VAR_DIR": str(collector.directory)})
    from jobs.ota.options import JobOptions

    # No restore grace: the story's timers fire within its first seconds.
    build(env, settings, source(ROLLOUT, "rollout"), source(DEVICES, "devices"), Sinks(),
          JobOptions(restore_grace_ms=0))
    env.execute("ota-test")
    return collector


def kafka(out, name: str) -> list[dict]:
    return [json.loads(r["value"]) for r in out.read(name)]


def moves(out, d: str) -> list[str]:
    return [e["to"] for e in kafka(out, "events") if e["device_id"] == d]


def test_waves_release_on_success_and_cancel_stops_the_rest(out):
    assigned = [(a["op"], a["device_id"], a.get("wave")) for a in kafka(out, "assignments")]
    assert assigned == [("assign", "d-1", 0), ("assign", "d-2", 1), ("assign", "d-3", 1),
                        ("cancel", "d-2", None), ("cancel", "d-3", None)]
    rows = sorted(out.read("deployments"), key=lambda r: r["write_ts"])
    assert [r["state"] for r in rows][-1] == "CANCELED"
    assert {r["deployment_id"] for r in rows} == {"dep1"}
    summary = json.loads(rows[-1]["summary"])
    assert summary["released"] == 3 and summary["waves"][0]["met"]


def test_success_only_after_the_health_window_fired_by_the_timer(out):
    assert moves(out, "d-1") == ["QUEUED", "NOTIFIED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING",
                                 "VERIFYING", "SUCCEEDED"]
    events = {e["to"]: e for e in kafka(out, "events") if e["device_id"] == "d-1"}
    # No record arrived during the pause: the timer ended the window, at 1 s or just after.
    assert 1_000 <= events["SUCCEEDED"]["ts"] - events["VERIFYING"]["ts"] < 2_500
    [notice] = [d for d in kafka(out, "downlink") if d["device_id"] == "d-1"]
    assert notice["suffix"] == "ota/notify" and notice["payload"]["op"] == "install"
    assert notice["payload"]["firmware"]["url"].startswith("/v1/ota/download/dep1?device=d-1&exp=")
    last = max((r for r in out.read("executions") if r["device_id"] == "d-1"), key=lambda r: r["write_ts"])
    assert last["state"] == "SUCCEEDED" and json.loads(last["execution"])["history"][-1]["to"] == "SUCCEEDED"


def test_a_silent_device_times_out_and_an_offline_one_waits(out):
    assert moves(out, "d-2") == ["QUEUED", "NOTIFIED", "TIMED_OUT"]
    assert moves(out, "d-3") == ["QUEUED", "NOTIFIED"]  # notified when it came online after the pause
    assert [d["payload"]["op"] for d in kafka(out, "downlink") if d["device_id"] == "d-2"] == ["install", "cancel"]


def test_malformed_and_unknown_are_dead_lettered(out):
    letters = sorted((d["reason"], d["detail"].split(":")[0]) for d in kafka(out, "dead_letters"))
    assert letters == [("invalid_json", "not JSON"), ("invalid_json", "not JSON"),
                       ("schema_violation", "unknown_deployment")]


def test_outputs_match_their_schemas(out):
    from fleet.contract.validation import kafka_schema

    for name, schema in (("downlink", "downlink"), ("dead_letters", "dead-letter")):
        for record in kafka(out, name):
            assert kafka_schema(schema).is_valid(record), (name, record)


def test_production_graph_builds(tmp_path):
    """The job as submitted (Kafka sources, Table API Kafka sinks, Cassandra sinks) plans without a cluster."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    from fleet.config import Settings
    from jobs.checkpointing import exactly_once_problems
    from jobs.ota.job import parse_args
    from jobs.ota.pipeline import DEVICE_TOPICS, ROLLOUT_TOPICS, build, kafka_source
    from jobs.ota.sinks import ProductionSinks

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    options = parse_args([])
    assert exactly_once_problems(env, None, lake_enabled=False) == []
    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})
    build(env, settings, kafka_source(env, settings, options, ROLLOUT_TOPICS, "kafka-ota-rollout-inputs"),
          kafka_source(env, settings, options, DEVICE_TOPICS, "kafka-ota-device-inputs"),
          ProductionSinks(env, settings, options), options)
    plan = json.loads(env.get_execution_plan())
    names = " ".join(node["contents"] for node in plan["nodes"])
    for part in ("kafka-ota-rollout-inputs", "kafka-ota-device-inputs", "ota-rollout", "ota-device",
                 "cassandra-ota-deployments", "cassandra-ota-new-deployments", "cassandra-ota-executions",
                 "cassandra-ota-executions-by-device", "ota_requests",
                 "ota_assignments", "ota_events", "downlink", "dead_letter"):
        assert part in names, (part, names)
