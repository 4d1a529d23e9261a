from pathlib import Path

import pytest

from fleet.config import Settings


def test_defaults_need_no_environment():
    s = Settings.from_env({})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic("telemetry") == "fleet.telemetry"
    assert s.pki_dir == s.var_dir / "pki"


def test_environment_overrides_and_types(tmp_path):
    s = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path), "FLEET_KAFKA_BOOTSTRAP": "k:1",
                           "FLEET_TOPIC_PREFIX": "t1.", "FLEET_MQTT_DEVICE_PORT": "18883"})
    assert s.var_dir == tmp_path and isinstance(s.var_dir, Path)
    assert s.mqtt_device_port == 18883
    assert s.topic("telemetry") == "t1.telemetry"


def test_file_then_environment_precedence(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('api_port = 9000\ntopic_prefix = "file."\n')
    s = Settings.from_env({"FLEET_CONFIG_FILE": str(cfg), "FLEET_TOPIC_PREFIX": "env."})
    assert s.api_port == 9000
    assert s.topic_prefix == "env."


@pytest.mark.parametrize("env, message", [
    ({"FLEET_API_PORT": "eighty"}, "api_port must be an integer"),
])
def test_bad_values_are_reported_by_name(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_unknown_keys_in_file_are_refused(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text("kafak_bootstrap = 'typo'\n")
    with pytest.raises(ValueError, match="unknown settings: kafak_bootstrap"):
        Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})


def test_to_env_round_trips_every_field(tmp_path):
    s = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path), "FLEET_API_PORT": "9001", "FLEET_LAKE_DIR": str(tmp_path / "l"),
                           "FLEET_BRIDGE_REQUIRE_ACTIVE": "false"})
    assert Settings.from_env(s.to_env()) == s
