"""Schema checks: each schema is valid 2020-12, and the fast engine agrees with the reference."""

from __future__ import annotations

import json

import jsonschema
import pytest

from fleet.contract.topics import Uplink
from fleet.contract.validation import (
    DEFAULT_SCHEMA_DIR,
    SchemaViolation,
    UplinkValidators,
    compile_schema,
    fastjsonschema,
    load_schema,
)
from tests.support import require

TS = 1_700_000_000_000

# (kind, payload, valid?)
CASES = [
    (Uplink.TELEMETRY, {"ts": TS, "seq": 0, "metrics": {"temp": 21.5}}, True),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 7, "metrics": {"a": 1, "b.c": -2.5e3, "x:y-z_1": 0},
                        "attrs": {"fw": "1.0", "n": [1]}}, True),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 7, "metrics": {}}, True),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1.0, "metrics": {}}, True),  # 2020-12: integral floats are integers
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1.5, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": -1, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": True, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": "now", "seq": 1, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": 12, "seq": 1, "metrics": {}}, False),  # seconds, not ms
    (Uplink.TELEMETRY, {"seq": 1, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "metrics": {}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {"t": "hot"}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {"t": None}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {"t": True}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {"bad name": 1}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {f"m{i}": i for i in range(257)}}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {}, "extra": 1}, False),
    (Uplink.TELEMETRY, {"ts": TS, "seq": 1, "metrics": {}, "attrs": "x"}, False),
    (Uplink.TELEMETRY, [1, 2], False),
    (Uplink.TELEMETRY, "text", False),
    (Uplink.SHADOW_UPDATE, {"state": {"reported": {"led": "on", "gone": None}}, "version": 3, "client_token": "t1"}, True),
    (Uplink.SHADOW_UPDATE, {"state": {"reported": {}}}, True),
    (Uplink.SHADOW_UPDATE, {"state": {"desired": {"led": "on"}}}, False),
    (Uplink.SHADOW_UPDATE, {"state": {"reported": {}, "desired": {}}}, False),
    (Uplink.SHADOW_UPDATE, {"state": {"reported": {}}, "version": -1}, False),
    (Uplink.SHADOW_UPDATE, {"reported": {}}, False),
    (Uplink.SHADOW_GET, {}, True),
    (Uplink.SHADOW_GET, {"client_token": "abc"}, True),
    (Uplink.SHADOW_GET, {"client_token": ""}, False),
    (Uplink.SHADOW_GET, {"name": "x"}, False),
    (Uplink.COMMAND_RESULT, {"status": "SUCCEEDED", "result": {"rebooted": True}}, True),
    (Uplink.COMMAND_RESULT, {"status": "FAILED", "error": "disk full"}, True),
    (Uplink.COMMAND_RESULT, {"status": "DONE"}, False),
    (Uplink.COMMAND_RESULT, {"result": {}}, False),
    (Uplink.OTA_STATUS, {"deployment_id": "dep-1", "state": "DOWNLOADING", "progress": 42.5}, True),
    (Uplink.OTA_STATUS, {"deployment_id": "dep-1", "state": "FAILED", "error": "bad signature"}, True),
    (Uplink.OTA_STATUS, {"deployment_id": "dep-1", "state": "DOWNLOADING", "progress": 101}, False),
    (Uplink.OTA_STATUS, {"deployment_id": "dep-1", "state": "NAPPING"}, False),
    (Uplink.OTA_STATUS, {"state": "FAILED"}, False),
    (Uplink.STATUS, {"online": True, "ts": TS, "firmware_version": "1.0.0"}, True),
    (Uplink.STATUS, {"online": False, "reason": "connection_lost"}, True),
    (Uplink.STATUS, {"online": "yes"}, False),
    (Uplink.STATUS, {"firmware_version": "1.0.0"}, False),
]


@pytest.mark.parametrize("kind", list(Uplink))
def test_every_uplink_kind_has_a_valid_2020_12_schema(kind):
    schema = load_schema(DEFAULT_SCHEMA_DIR / "mqtt" / f"{kind.schema_name}.schema.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema.get("additionalProperties") is False


@pytest.mark.parametrize("name", ["envelope", "dead-letter"])
def test_kafka_schemas_are_valid_2020_12(name):
    load_schema(DEFAULT_SCHEMA_DIR / "kafka" / f"{name}.schema.json")


@pytest.fixture(scope="module")
def reference():
    return UplinkValidators(engine="reference")


@pytest.fixture(scope="module")
def fast():
    if fastjsonschema is None:
        require.missing("fastjsonschema is not installed")
    return UplinkValidators(engine="fast")


@pytest.mark.parametrize("kind,payload,valid", CASES, ids=[f"{k.schema_name}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_reference_engine(reference, kind, payload, valid):
    assert reference[kind].is_valid(payload) is valid


@pytest.mark.parametrize("kind,payload,valid", CASES, ids=[f"{k.schema_name}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_fast_engine_agrees_with_reference(fast, kind, payload, valid):
    assert fast[kind].is_valid(payload) is valid


def test_check_explains_with_json_path(reference):
    with pytest.raises(SchemaViolation) as err:
        reference[Uplink.TELEMETRY].check({"ts": TS, "seq": 1, "metrics": {"t": "hot"}})
    assert str(err.value) == "$.metrics.t: 'hot' is not of type 'number'"


def test_every_schema_file_is_documented_in_a_title():
    for path in sorted((DEFAULT_SCHEMA_DIR / "mqtt").glob("*.schema.json")):
        schema = json.loads(path.read_text())
        assert schema["title"], path
        jsonschema.Draft202012Validator.check_schema(schema)


def test_compile_schema_reference_fallback():
    compiled = compile_schema("x", {"type": "object", "required": ["a"]}, engine="reference")
    assert compiled.is_valid({"a": 1}) and not compiled.is_valid({})
