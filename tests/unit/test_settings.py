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


# --- pydantic-settings: sections, validation, precedence --------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"
TOP_LEVEL = {"var_dir", "log_level"}


def test_settings_reads_nothing_but_its_arguments(monkeypatch):
    monkeypatch.setenv("FLEET_API_PORT", "1234")
    assert Settings().api_port == 8000
    assert Settings(api_port=9).api_port == 9
    assert Settings.from_env().api_port == 1234  # the process environment, only when none is given
    assert Settings.from_env({}).api_port == 8000


def test_sections_set_the_flat_fields(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('log_level = "DEBUG"\n[kafka]\nbootstrap = "k1:9092"\ntopic_prefix = "p."\n'
                   '[cassandra]\nhosts = "c1,c2"\n[api]\nport = 9001\ntls = true\n'
                   f'[lake]\ndir = "{tmp_path / "lake"}"\n[telemetry]\nraw_ttl_days = 7\n'
                   '[provisioning]\nservice = false\n[bridge]\nrequire_active = false\nkafka_linger_ms = 5\n')
    s = Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})
    assert (s.log_level, s.kafka_bootstrap, s.topic_prefix) == ("DEBUG", "k1:9092", "p.")
    assert s.cassandra_contact_points == ["c1", "c2"]
    assert (s.api_port, s.api_tls) == (9001, True)
    assert s.lake_path == tmp_path / "lake"
    assert (s.telemetry_raw_ttl_days, s.telemetry_rollup_ttl_days) == (7, 400)
    assert (s.provisioning_service, s.bridge_require_active, s.kafka_linger_ms) == (False, False, 5)


def test_environment_over_file_over_default(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[api]\nport = 9000\nhost = "0.0.0.0"\n[telemetry]\nrollup_ttl_days = 100\n')
    s = Settings.from_env({"FLEET_CONFIG_FILE": str(cfg), "FLEET_API_PORT": "9100",
                           "FLEET_TELEMETRY_RAW_TTL_DAYS": "3", "FLEET_NOT_A_SETTING": "ignored"})
    assert s.api_port == 9100  # environment
    assert s.api_host == "0.0.0.0" and s.telemetry_rollup_ttl_days == 100  # file
    assert s.telemetry_raw_ttl_days == 3  # environment, no file value
    assert s.kafka_bootstrap == "127.0.0.1:9092"  # default


def test_removed_environment_setting_is_ignored_in_the_environment():
    assert not hasattr(Settings(), "environment")
    assert Settings.from_env({"FLEET_ENVIRONMENT": "compose"}) == Settings()


@pytest.mark.parametrize("text, message", [
    ("[kafka]\nbootstrapp = 'x'\n", r"unknown settings: kafka.bootstrapp"),
    ("[kafka]\nport = 1\n", r"unknown settings: kafka.port"),  # cassandra has a port, kafka has none
    ("[kafak]\nbootstrap = 'x'\n", r"unknown settings: kafak"),
    ("environment = 'prod'\n", r"unknown settings: environment"),
    ("kafka_bootstrap = 'a'\n[kafka]\nbootstrap = 'b'\n", r"settings given twice: kafka_bootstrap"),
])
def test_file_mistakes_are_refused_by_name(tmp_path, text, message):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Settings.from_env({"FLEET_CONFIG_FILE": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize("env, message", [
    ({"FLEET_API_TLS": "maybe"}, "api_tls must be true or false, got 'maybe'"),
    ({"FLEET_BRIDGE_REQUIRE_ACTIVE": "2"}, "bridge_require_active must be true or false"),
    ({"FLEET_API_PORT": "0"}, "api_port must be at least 1"),
    ({"FLEET_MQTT_DEVICE_PORT": "70000"}, "mqtt_device_port must be at most 65535"),
    ({"FLEET_TOPIC_PARTITIONS": "0"}, "topic_partitions must be greater than 0"),
    ({"FLEET_TELEMETRY_RAW_TTL_DAYS": "-1"}, "telemetry_raw_ttl_days must be greater than 0"),
    ({"FLEET_REVOCATION_INTERVAL_S": "-1"}, "revocation_interval_s must be at least 0"),
    ({"FLEET_VAR_DIR": ""}, "var_dir must not be empty"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ValueError, match="api_port must be an integer.*; setting api_tls must be true or false"):
        Settings.from_env({"FLEET_API_PORT": "x", "FLEET_API_TLS": "x"})


def test_bad_values_in_the_file_name_the_setting(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[api]\nport = "eighty"\n')
    with pytest.raises(ValueError, match="api_port must be an integer"):
        Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})


def test_values_that_mean_off_are_accepted():
    s = Settings.from_env({"FLEET_BRIDGE_METRICS_PORT": "0", "FLEET_REVOCATION_INTERVAL_S": "0",
                           "FLEET_API_TLS": "", "FLEET_PROVISIONING_SERVICE": "off", "FLEET_LAKE_DIR": ""})
    assert (s.bridge_metrics_port, s.revocation_interval_s, s.api_tls, s.provisioning_service) == (0, 0, False, False)
    assert s.lake_dir is None


def test_file_numbers_for_text_settings_are_text(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text("[kafka]\nheap = 768\n")
    assert Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)}).kafka_heap == "768"


def test_to_env_round_trips_a_sectioned_file(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'var_dir = "{tmp_path}"\n[api]\ntls = true\n[bridge]\nrequire_active = false\n'
                   '[telemetry]\nrollup_ttl_days = 90\n')
    s = Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})
    env = s.to_env()
    assert env["FLEET_API_TLS"] == "true" and env["FLEET_BRIDGE_REQUIRE_ACTIVE"] == "false"
    assert env["FLEET_TELEMETRY_ROLLUP_TTL_DAYS"] == "90" and "FLEET_LAKE_DIR" not in env
    assert Settings.from_env(env) == s  # a child process (a TaskManager too) rebuilds the same settings


def test_replace_copies_validates_and_keeps_the_original(tmp_path):
    s = Settings(var_dir=tmp_path)
    r = s.replace(api_port=9001, lake_dir=tmp_path / "l")
    assert (r.api_port, r.lake_path, r.var_dir) == (9001, tmp_path / "l", tmp_path)
    assert (s.api_port, s.lake_dir) == (8000, None)
    assert s.replace() == s
    with pytest.raises(ValueError, match="api_port must be at most 65535"):
        s.replace(api_port=70000)
    with pytest.raises(ValueError, match="unknown setting kafak_bootstrap"):
        s.replace(kafak_bootstrap="x")


def test_settings_are_frozen_hashable_and_picklable():
    import pickle

    s = Settings.from_env({"FLEET_API_PORT": "9001"})
    with pytest.raises(ValueError):
        s.api_port = 1  # type: ignore[misc]
    assert hash(s) == hash(Settings(api_port=9001))
    assert pickle.loads(pickle.dumps(s)) == s  # Flink functions are pickled with their settings


def test_every_field_is_in_exactly_one_section():
    from fleet.config import SECTIONS

    placed = [name for names in SECTIONS.values() for name in names]
    assert len(placed) == len(set(placed))
    assert set(placed) | TOP_LEVEL == set(Settings.model_fields)
    assert not set(placed) & TOP_LEVEL


def test_example_file_loads_and_equals_the_defaults():
    assert Settings.from_env({"FLEET_CONFIG_FILE": str(EXAMPLE)}) == Settings()


def test_example_file_shows_every_setting():
    from fleet.config import SECTIONS, read_config_file, section_key

    given = set(read_config_file(EXAMPLE))
    # Their defaults depend on the checkout.
    commented = {"var_dir", "lake_dir", "firmware_dir", "firmware_key_file", "ota_url_key_file"}
    assert given | commented == set(Settings.model_fields)
    text = EXAMPLE.read_text()
    assert "# var_dir = " in text and "# " + section_key("lake", "lake_dir") + " = " in text
    assert all(f"[{section}]" in text for section in SECTIONS)


def test_job_lake_path_reads_the_lake_section(tmp_path):
    from fleet.infra.job_config import configured_lake_path

    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[lake]\ndir = "/data/lake"\n')
    assert configured_lake_path({"FLEET_CONFIG_FILE": str(cfg)}) == "/data/lake"
    cfg.write_text('var_dir = "/srv/fleet"\n[lake]\n')
    assert configured_lake_path({"FLEET_CONFIG_FILE": str(cfg)}) == "/srv/fleet/lake"
