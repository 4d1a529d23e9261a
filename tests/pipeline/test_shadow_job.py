"""The shadow job's build() on in-memory records in a local Flink (thread mode, RocksDB).

The story (records in this order, as from one Kafka partition per device):

d-1  two operator changes carrying the same If-Match version 0 (two concurrent PATCHes): the
     first wins (200, version 1, a delta for the device), the second gets 409 with version 1.
d-2  goes offline; an operator sets desired twice while it is away (versions 1 and 2); it comes
     back online and receives the delta of version 2 without asking; history holds both.
d-3  reports its state (accepted v1 echoing its client token, history by the device), asks for
     its document, writes a named shadow "cfg" (its own topics), then sends a report that writes
     desired (forbidden: rejected + dead letter).
Plus a record that is not JSON, one of an unknown type and an operator change writing reported:
dead letters (the last also answered 400), and the job carries on. Every accepted version also
lands in the Parquet lake (the production sink, committed on checkpoints), exactly once.

Every test runs on both cores (``--core java`` and ``python``) with the same expectations, and
both must emit the same records, field for field and in the same key order, but for the job's
wall-clock times (test_both_cores_emit_the_same_records).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

T0 = 1_704_067_200_000


def dumps(record: dict) -> str:
    # Compact, as the bridge and the API write it (the test source keys records from the JSON text).
    return json.dumps(record, separators=(",", ":"))


def envelope(device: str, kind: str, payload: dict, shadow: str | None = None, at: int = 0) -> str:
    suffix = {"shadow_update": "shadow/update", "shadow_get": "shadow/get", "status": "status"}[kind]
    record = {"device_id": device, "type": kind, "ts": T0 + at, "ingest_ts": T0 + at,
              "mqtt_topic": f"devices/{device}/{suffix}", "payload": payload}
    if shadow is not None:
        record["shadow"] = shadow
    return dumps(record)


def desired(device: str, request_id: str, state: dict, version: int | None) -> str:
    return dumps({"request_id": request_id, "device_id": device, "shadow": "", "state": {"desired": state},
                       "version": version, "actor": "ops-key", "ts": T0})


RECORDS = [
    desired("d-1", "r1", {"led": "on"}, 0),
    desired("d-1", "r2", {"led": "off"}, 0),
    envelope("d-2", "status", {"online": False, "reason": "connection_lost"}, at=1),
    desired("d-2", "r3", {"fw": "1.0"}, None),
    desired("d-2", "r4", {"fw": "2.0"}, None),
    envelope("d-2", "status", {"online": True, "firmware_version": "0.9"}, at=2),
    envelope("d-3", "shadow_update", {"state": {"reported": {"temp": 21}}, "client_token": "t1"}),
    envelope("d-3", "shadow_get", {"client_token": "g1"}),
    envelope("d-3", "shadow_update", {"state": {"reported": {"mode": "eco"}}}, shadow="cfg"),
    envelope("d-3", "shadow_update", {"state": {"desired": {"temp": 30}}, "client_token": "t2"}),
    "{oops",
    dumps({"device_id": "d-3", "type": "telemetry", "ts": T0, "ingest_ts": T0, "mqtt_topic": "x", "payload": {}}),
    dumps({"request_id": "r9", "device_id": "d-1", "shadow": "", "state": {"reported": {}}, "version": None,
           "actor": "ops-key", "ts": T0}),
]


CORES = ("java", "python")
STREAMS = ("downlink", "verdicts", "dead_letters", "shadows", "history", "connectivity")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each core's run on RECORDS: (collector, first and last wall-clock ms the run could stamp)."""
    import time

    from pyflink.common import Types

    from fleet.config import Settings
    from jobs.shadow.options import JobOptions
    from jobs.shadow.pipeline import build, from_json
    from jobs.shadow.sinks import ProductionSinks
    from tests.pipeline.collect import Collector
    from tests.pipeline.flink_env import local_env

    def run(core: str):
        collector = Collector(tmp_path_factory.mktemp(f"shadow-{core}"))
        options = JobOptions(core=core)

        class Sinks:
            def __getattr__(self, name):
                return lambda stream: collector.sink(stream, name)

            def shadow_changes(self, stream):
                ProductionSinks(env, settings, options).shadow_changes(stream)

        env = local_env()
        env.enable_checkpointing(500)  # the lake's files commit on checkpoints (and at the end of input)
        raw = env.from_collection(RECORDS, type_info=Types.STRING()).name("records")
        settings = Settings.from_env({"FLEET_VAR_DIR": str(collector.directory)})
        build(env, settings, from_json(raw), Sinks(), options)
        started = int(time.time() * 1000)
        env.execute(f"shadow-test-{core}")
        return collector, (started, int(time.time() * 1000))

    return {core: run(core) for core in CORES}


@pytest.fixture(scope="module", params=CORES)
def out(request, runs):
    return runs[request.param][0]


def kafka(out, name: str) -> list[dict]:
    return [json.loads(r["value"]) for r in out.read(name)]


def test_concurrent_if_match_exactly_one_wins(out):
    verdicts = {v["request_id"]: v for v in kafka(out, "verdicts")}
    assert (verdicts["r1"]["status"], verdicts["r1"]["version"]) == (200, 1)
    assert verdicts["r1"]["document"]["state"]["desired"] == {"led": "on"}
    assert (verdicts["r2"]["status"], verdicts["r2"]["code"], verdicts["r2"]["version"]) == (409, "version_conflict", 1)
    assert (verdicts["r9"]["status"], verdicts["r9"]["code"]) == (400, "invalid_request")
    rows = [r for r in out.read("shadows") if r["device_id"] == "d-1"]
    assert [(r["version"], json.loads(r["desired"])) for r in rows] == [(1, {"led": "on"})]
    assert rows[0]["write_ts"] // 1_000_000 == 1


def test_desired_while_offline_reaches_the_device_on_reconnect(out):
    downlink = [d for d in kafka(out, "downlink") if d["device_id"] == "d-2"]
    # A delta per change (published whatever the connectivity), then the one pushed on connect.
    assert [(d["suffix"], d["payload"]["version"], d["payload"]["state"]) for d in downlink] == [
        ("shadow/delta", 1, {"fw": "1.0"}), ("shadow/delta", 2, {"fw": "2.0"}), ("shadow/delta", 2, {"fw": "2.0"})]
    history = sorted((r["version"], r["source_kind"], r["actor"]) for r in out.read("history") if r["device_id"] == "d-2")
    assert history == [(1, "operator", "ops-key"), (2, "operator", "ops-key")]
    conn = [r for r in out.read("connectivity") if r["device_id"] == "d-2"]
    assert [(c["connected"], c["disconnect_reason"], c["firmware_version"]) for c in conn] == [
        (False, "connection_lost", None), (True, "connection_lost", "0.9")]
    assert conn[1]["connected_since"] == T0 + 2 and conn[1]["write_ts"] > conn[0]["write_ts"]


def test_device_report_get_and_named_shadow(out):
    downlink = [d for d in kafka(out, "downlink") if d["device_id"] == "d-3"]
    got = [(d["suffix"], d["payload"].get("version"), d["payload"].get("client_token")) for d in downlink]
    assert got == [("shadow/accepted", 1, "t1"), ("shadow/document", 1, "g1"), ("shadow/name/cfg/accepted", 1, None),
                   ("shadow/rejected", None, "t2")]
    assert downlink[0]["payload"]["state"] == {"reported": {"temp": 21}}
    assert downlink[3]["payload"]["code"] == "forbidden_section"
    history = sorted((r["name"], r["version"], r["source_kind"], r["actor"], r["client_token"])
                     for r in out.read("history") if r["device_id"] == "d-3")
    assert history == [("", 1, "device", "d-3", "t1"), ("cfg", 1, "device", "d-3", None)]


def test_malformed_records_are_dead_lettered(out):
    letters = sorted((d["reason"], d["device_id"] or "", d["detail"].split(":")[0]) for d in kafka(out, "dead_letters"))
    assert letters == [("invalid_envelope", "d-3", "unknown record type 'telemetry'"),
                       ("invalid_json", "", "not JSON"),
                       ("schema_violation", "d-1", "operator change"),
                       ("schema_violation", "d-3", "forbidden_section")]


def test_accepted_changes_land_in_the_lake_exactly_once(out):
    import duckdb
    import pyarrow as pa

    from fleet.lake.dataset import SHADOW_CHANGES_SCHEMA, shadow_changes_dataset

    base = out.directory / "lake" / "shadow_changes"
    # The change ts is the job's wall clock: whatever hours the run spanned, and only committed files.
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in base.rglob("*") if p.is_file())
    table = shadow_changes_dataset(base).to_table()
    assert table.schema.remove_metadata() == SHADOW_CHANGES_SCHEMA.remove_metadata()
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    lake = sorted(table.to_pylist(), key=lambda r: (r["device_id"], r["shadow_name"], r["version"]))
    # One row per accepted version (d-1 v1, d-2 v1 and v2, d-3 v1 and cfg v1): as many as Cassandra's history.
    assert [(r["device_id"], r["shadow_name"], r["version"], r["source_kind"], r["actor"], r["client_token"])
            for r in lake] == [("d-1", "", 1, "operator", "ops-key", None), ("d-2", "", 1, "operator", "ops-key", None),
                               ("d-2", "", 2, "operator", "ops-key", None), ("d-3", "", 1, "device", "d-3", "t1"),
                               ("d-3", "cfg", 1, "device", "d-3", None)]
    history = {(h["device_id"], h["name"], h["version"]): h for h in out.read("history")}
    for r in lake:
        h = history[(r["device_id"], r["shadow_name"], r["version"])]
        assert (int(r["ts"].timestamp() * 1000), r["patch"], r["desired"], r["reported"]) == (
            h["ts"], h["patch"], h["desired"], h["reported"])
        assert (r["date"], r["hour"]) == (r["ts"].strftime("%Y-%m-%d"), r["ts"].hour)
    assert json.loads(lake[2]["patch"]) == {"desired": {"fw": "2.0"}}
    # The README's DuckDB example.
    rows = duckdb.sql(f"""
        SELECT ts, version, source_kind, actor, json_extract(patch, '$.desired') AS desired_patch
        FROM read_parquet('{base}/*/*/*.parquet', hive_partitioning = true)
        WHERE device_id = 'd-2' AND shadow_name = ''
        ORDER BY version""").fetchall()
    assert [(v, kind, actor, json.loads(p)) for _, v, kind, actor, p in rows] == [
        (1, "operator", "ops-key", {"fw": "1.0"}), (2, "operator", "ops-key", {"fw": "2.0"})]


def _normalized(value, clock: tuple[int, int]):
    """A record with the job's wall-clock times (and the write timestamps made of them) replaced,
    keeping key order; JSON text fields are parsed the same way."""
    lo, hi = clock
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return ("json", _normalized(json.loads(value, object_pairs_hook=lambda pairs: pairs), clock))
        except ValueError:
            return value
    if isinstance(value, list):
        if all(isinstance(p, tuple) and len(p) == 2 for p in value) and value:
            return [(k, _normalized(v, clock)) for k, v in value]
        return [_normalized(v, clock) for v in value]
    if isinstance(value, tuple):
        return [_normalized(v, clock) for v in value]
    if isinstance(value, dict):
        return {k: _normalized(v, clock) for k, v in value.items()}
    if type(value) is int and lo <= value <= hi:
        return "now"
    if type(value) is int and lo * 1000 <= value <= hi * 1000 + 999:
        return "now-us"
    return value


def _records(collector, name: str, clock: tuple[int, int]) -> dict[str, list]:
    per_device: dict[str, list] = {}
    for row in collector.read(name):
        if name == "dead_letters":
            letter = json.loads(row["value"])
            if letter["reason"] == "invalid_json":  # the parsers' own wording
                letter["detail"] = letter["detail"].split(":")[0]
                row = {**row, "value": json.dumps(letter)}
        if name in ("shadows", "history"):  # version * 10^6 + the job's clock's last 6 digits
            row = {**row, "write_ts": ("version", row["write_ts"] // 1_000_000)}
        per_device.setdefault(row.get("device_id") or "", []).append(_normalized(row, clock))
    return per_device


@pytest.mark.parametrize("name", STREAMS)
def test_both_cores_emit_the_same_records(runs, name):
    java, python = (_records(runs[core][0], name, runs[core][1]) for core in CORES)
    assert java == python
    assert java


def test_production_graph_builds(tmp_path, monkeypatch):
    """The job as submitted (Kafka source, Table API Kafka sinks, Cassandra sinks) plans without a
    cluster: the connector options and types are checked here rather than at `fleet stack up`."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    from fleet.config import Settings
    from jobs.shadow.job import ensure_exactly_once
    from jobs.shadow.options import JobOptions
    from jobs.shadow.pipeline import build, kafka_source
    from jobs.shadow.sinks import ProductionSinks

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    options = JobOptions()
    for name in ("FLEET_LAKE_DIR", "FLEET_VAR_DIR", "FLEET_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert [p for p in ensure_exactly_once(env, options) if "lake path" in p]
    assert ensure_exactly_once(env, JobOptions(lake=False)) == []
    monkeypatch.setenv("FLEET_LAKE_DIR", str(tmp_path / "lake"))
    assert ensure_exactly_once(env, options) == []
    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})
    build(env, settings, kafka_source(env, settings, options), ProductionSinks(env, settings, options), options)
    plan = json.loads(env.get_execution_plan())
    names = " ".join(node["contents"] for node in plan["nodes"])
    for part in ("kafka-shadow-inputs", "shadow-core", "cassandra-shadows", "cassandra-shadow-history",
                 "cassandra-device-connectivity", "parquet-lake-shadow-changes", "downlink", "shadow_verdicts",
                 "dead_letter"):
        assert part in names, (part, names)
