"""A record whose Kafka key is not its own device id is dead-lettered (key_mismatch), by both cores.

Per-device state lives under the record's key, so a record filed under another device's key
would corrupt that device's dedup and gap tracking; only a producer other than the bridge can
make one.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

T0 = 1_704_067_200_000


def envelope(device: str, seq: int) -> str:
    ts = T0 + seq * 1000
    return json.dumps({"device_id": device, "type": "telemetry", "ts": ts, "ingest_ts": ts,
                       "mqtt_topic": f"devices/{device}/telemetry",
                       "payload": {"ts": ts, "seq": seq, "metrics": {"v": seq}}}, separators=(",", ":"))


@pytest.mark.parametrize("core", ["java", "python"])
def test_a_record_keyed_under_another_device_is_dead_lettered(tmp_path, core):
    from pyflink.common import Row
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from fleet.config import Settings
    from jobs.telemetry.options import JobOptions
    from jobs.telemetry.pipeline import build
    from jobs.telemetry.records import ENVELOPE_TYPE
    from tests.pipeline.collect import CollectingSinks, Collector
    from tests.pipeline.flink_env import local_env

    collector = Collector(tmp_path)
    env = local_env(1, rocksdb=False)
    options = JobOptions(core=core)
    keyed = [Row("d-1", envelope("d-1", 0)), Row("d-2", envelope("d-1", 1)), Row("d-1", envelope("d-1", 2))]
    rows = env.from_collection(keyed, type_info=ENVELOPE_TYPE)
    j = get_gateway().jvm.fleet.flink.telemetry.Envelopes
    timed = DataStream(rows._j_data_stream.assignTimestampsAndWatermarks(
        j.payloadTimeWatermarks(options.out_of_orderness_ms, options.idleness_ms)))

    build(env, Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)}), timed, CollectingSinks(collector), options)
    env.execute(f"telemetry-keys-{core}")

    points = [json.loads(p) for p in collector.read("points")]
    assert [p["payload"]["seq"] for p in points] == [0, 2]
    dead = [json.loads(d) for d in collector.read("dead_letters")]
    assert [(d["reason"], d["device_id"]) for d in dead] == [("key_mismatch", "d-1")]
    assert "record key is 'd-2'" in dead[0]["detail"]
    gaps = [json.loads(g) for g in collector.read("gaps")]
    # d-1's seq 1 never reached its state: reported missing (open at the end of input); d-2 got nothing.
    assert [(g["device_id"], g["first_seq"], g["last_seq"], g["status"]) for g in gaps] == [("d-1", 1, 1, "open")]
