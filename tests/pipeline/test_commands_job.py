"""The commands job's build() on in-memory records in a local Flink (thread mode, RocksDB).

The records pass a pacing step first: ``PAUSE`` markers sleep there (so the job runs on while no
record arrives and its processing-time timers fire on their own), and submits get ``created_at``
set to the wall clock as they pass (the job measures deadlines and TTLs from it). The story, per
device (one Kafka partition each):

d-1  a command (timeout 1 s) submitted while offline is QUEUED, sent when the device connects, never
     answered: TIMED_OUT by the timer during the pause; the result after it is kept as late_result.
d-2  online: sent at once, acknowledged (IN_PROGRESS), SUCCEEDED with its result.
d-3  offline: one with a 2 s TTL EXPIRES during the pause and is never sent; one is canceled; one
     waits and is sent when the device connects after the pause.
d-4  two commands queued while offline go out in submission order on connect.
d-5  online, one device's part of a bulk command (batch_id b-1): its batch member row follows its state.
Plus a record that is not JSON and a result for a command nobody sent: dead letters.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

PAUSE = "PAUSE"


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))


def submit(device: str, command_id: str, *, timeout_ms: int = 30_000, ttl_ms: int = 60_000,
           batch_id: str | None = None) -> str:
    record = {"op": "submit", "command_id": command_id, "device_id": device, "name": "reboot",
              "params": {"n": command_id}, "timeout_ms": timeout_ms, "ttl_ms": ttl_ms, "created_by": "alice",
              "created_at": 0}
    if batch_id is not None:
        record["batch_id"] = batch_id
    return dumps(record)


def cancel(device: str, command_id: str) -> str:
    return dumps({"op": "cancel", "command_id": command_id, "device_id": device, "by": "bob", "ts": 0})


def status(device: str, online: bool) -> str:
    return dumps({"device_id": device, "type": "status", "ts": 0, "ingest_ts": 0,
                  "mqtt_topic": f"devices/{device}/status", "payload": {"online": online}})


def result(device: str, command_id: str, state: str, **payload) -> str:
    return dumps({"device_id": device, "type": "command_result", "ts": 0, "ingest_ts": 0,
                  "mqtt_topic": f"devices/{device}/commands/{command_id}/result", "command_id": command_id,
                  "payload": {"status": state, **payload}})


RECORDS = [
    submit("d-1", "c1", timeout_ms=1_000),
    status("d-1", True),
    status("d-2", True),
    submit("d-2", "c2"),
    result("d-2", "c2", "IN_PROGRESS"),
    result("d-2", "c2", "SUCCEEDED", result={"v": 1}),
    status("d-5", True),
    submit("d-5", "c8", batch_id="b-1"),
    result("d-5", "c8", "SUCCEEDED", result={"v": 8}),
    submit("d-3", "c3", ttl_ms=2_000),
    submit("d-3", "c4"),
    submit("d-3", "c5"),
    cancel("d-3", "c4"),
    submit("d-4", "c6"),
    submit("d-4", "c7"),
    status("d-4", True),
    "{oops",
    result("d-2", "ghost", "SUCCEEDED"),
    PAUSE,  # 3.5 s without a record: c1 times out, c3 expires (margins for a loaded machine)
    result("d-1", "c1", "SUCCEEDED", result={"late": True}),
    status("d-3", True),
]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from pyflink.common import Types
    from pyflink.datastream import FlatMapFunction

    from fleet.config import Settings
    from jobs.commands.pipeline import build, from_json
    from tests.pipeline.collect import Collector
    from tests.pipeline.flink_env import local_env

    collector = Collector(tmp_path_factory.mktemp("commands"))

    class Sinks:
        def __getattr__(self, name):
            return lambda stream: collector.sink(stream, name)

    class Pace(FlatMapFunction):
        def flat_map(self, value):
            import json as j
            import time as t

            if value == PAUSE:
                t.sleep(3.5)
                return
            if value.startswith("{\"op\":\"submit\""):
                record = j.loads(value)
                record["created_at"] = t.time_ns() // 1_000_000
                value = j.dumps(record, separators=(",", ":"))
            yield value

    env = local_env()
    raw = env.from_collection(RECORDS, type_info=Types.STRING()).name("records").set_parallelism(1)
    paced = raw.flat_map(Pace(), output_type=Types.STRING()).name("pace").set_parallelism(1)
    settings = Settings.from_env({"FLEET_VAR_DIR": str(collector.directory)})
    build(env, settings, from_json(paced), Sinks())
    env.execute("commands-test")
    return collector


def kafka(out, name: str) -> list[dict]:
    return [json.loads(r["value"]) for r in out.read(name)]


def moves(out, device: str) -> list[tuple]:
    return [(e["command_id"], e["from"], e["to"]) for e in kafka(out, "events")
            if e["device_id"] == device and e["type"] == "transition"]


def rows(out, command_id: str) -> list[dict]:
    return [r for r in out.read("commands") if r["command_id"] == command_id]


def test_a_command_nobody_answers_times_out_by_the_timer_and_keeps_the_late_result(out):
    assert moves(out, "d-1") == [("c1", None, "QUEUED"), ("c1", "QUEUED", "SENT"), ("c1", "SENT", "TIMED_OUT")]
    timed_out = next(e for e in kafka(out, "events") if e["to"] == "TIMED_OUT")
    sent = next(e for e in kafka(out, "events") if e["command_id"] == "c1" and e["to"] == "SENT")
    # Fired by the clock (no record arrived between), at the deadline or just after it.
    assert 1_000 <= timed_out["ts"] - sent["ts"] < 2_400
    last = max(rows(out, "c1"), key=lambda r: r["write_ts"])
    command = json.loads(last["command"])
    assert last["state"] == "TIMED_OUT" and command["late_result"]["result"] == {"late": True}


def test_an_online_device_round_trip(out):
    assert moves(out, "d-2") == [("c2", None, "QUEUED"), ("c2", "QUEUED", "SENT"), ("c2", "SENT", "IN_PROGRESS"),
                                 ("c2", "IN_PROGRESS", "SUCCEEDED")]
    final = next(e for e in kafka(out, "events") if e["command_id"] == "c2" and e["to"] == "SUCCEEDED")
    assert final["result"] == {"v": 1} and final["command"]["state"] == "SUCCEEDED"
    [down] = [d for d in kafka(out, "downlink") if d["device_id"] == "d-2"]
    assert (down["suffix"], down["payload"]["command_id"], down["payload"]["params"]) == ("commands", "c2", {"n": "c2"})
    assert [r["state"] for r in sorted(rows(out, "c2"), key=lambda r: r["write_ts"])] == [
        "SENT", "IN_PROGRESS", "SUCCEEDED"]


def test_expired_is_never_sent_canceled_neither_the_rest_goes_on_connect(out):
    assert moves(out, "d-3") == [("c3", None, "QUEUED"), ("c4", None, "QUEUED"), ("c5", None, "QUEUED"),
                                 ("c4", "QUEUED", "CANCELED"), ("c3", "QUEUED", "EXPIRED"), ("c5", "QUEUED", "SENT")]
    assert [d["payload"]["command_id"] for d in kafka(out, "downlink") if d["device_id"] == "d-3"] == ["c5"]


def test_an_offline_queue_goes_out_in_order(out):
    assert [d["payload"]["command_id"] for d in kafka(out, "downlink") if d["device_id"] == "d-4"] == ["c6", "c7"]


def test_malformed_and_unknown_are_dead_lettered(out):
    letters = sorted((d["reason"], d["device_id"] or "", d["detail"].split(":")[0]) for d in kafka(out, "dead_letters"))
    assert letters == [("invalid_json", "", "not JSON"), ("schema_violation", "d-2", "unknown_command")]


def test_outputs_match_their_schemas(out):
    from fleet.contract.validation import kafka_schema

    for name, schema in (("events", "command-event"), ("downlink", "downlink"), ("dead_letters", "dead-letter")):
        for record in kafka(out, name):
            assert kafka_schema(schema).is_valid(record), (name, record)


def test_a_bulk_commands_member_row_follows_its_state(out):
    members = [r for r in out.read("batch_members") if r["batch_id"] == "b-1"]
    assert [(r["device_id"], r["command_id"], r["state"]) for r in members] == [
        ("d-5", "c8", "SENT"), ("d-5", "c8", "SUCCEEDED")]  # one row per step: created and sent in one
    assert [r["write_ts"] for r in members] == sorted(r["write_ts"] for r in members)
    assert rows(out, "c8")[-1]["state"] == "SUCCEEDED"
    assert json.loads(rows(out, "c8")[-1]["command"])["batch_id"] == "b-1"
    assert not [r for r in out.read("batch_members") if r["batch_id"] != "b-1"]  # commands without a batch: none


def test_production_graph_builds(tmp_path):
    """The job as submitted (Kafka source, Table API Kafka sinks, Cassandra sinks) plans without a cluster."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    from fleet.config import Settings
    from jobs.commands.job import ensure_exactly_once, parse_args
    from jobs.commands.pipeline import build, kafka_source
    from jobs.commands.sinks import ProductionSinks

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    options = parse_args([])
    assert options.parallelism == 1
    assert ensure_exactly_once(env) == []
    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(env, settings, options), options)
    plan = json.loads(env.get_execution_plan())
    names = " ".join(node["contents"] for node in plan["nodes"])
    for part in ("kafka-command-inputs", "commands-core", "cassandra-commands", "cassandra-commands-by-device",
                 "cassandra-command-batch-members",
                 "downlink", "command_events", "dead_letter"):
        assert part in names, (part, names)
