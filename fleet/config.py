"""One settings object per process, built from the environment (and an optional TOML file).

The environment is passed in, never read at import time, so tests build their own settings and
Flink functions can be pickled with the settings they were given (no module-level singleton).
``Settings()`` is the defaults (plus keyword arguments) and reads nothing; ``Settings.from_env(env)``
reads ``env`` (the process environment when none is given), which is how every process, a Flink
TaskManager running a job included, builds its settings from the ``FLEET_*`` variables it was given.

Precedence: explicit environment variable > TOML file (``FLEET_CONFIG_FILE``) > default.
Every field is read from ``FLEET_<FIELD_NAME_UPPER>``.

Sections are how the file and the docs group settings; flat names are what environment variables
and code use. In the file ``[kafka] bootstrap = "..."`` sets ``kafka_bootstrap`` (a key inside a
section is the field's name without the section's prefix, see ``SECTIONS``), and the flat form
``kafka_bootstrap = "..."`` at the top of the file works too. ``deploy/fleet.example.toml`` shows
every section with its defaults. Unknown keys, and values of the wrong type or out of range, are
refused with an error that names the setting.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FLEET_"


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _empty_is_false(value: Any) -> Any:
    # FLEET_X= (set but empty) has always meant false.
    return False if isinstance(value, str) and value.strip() == "" else value


Flag = Annotated[bool, BeforeValidator(_empty_is_false)]
Port = Annotated[int, Field(ge=1, le=65535)]
# 0 turns the endpoint off.
OptionalPort = Annotated[int, Field(ge=0, le=65535)]


class SettingsError(ValueError):
    """A configuration that cannot be used; the message names the setting and the value given."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid",
                                      coerce_numbers_to_str=True)

    # Top of the file (no section). Where the local stack keeps data, logs, pids, jars and the
    # development PKI.
    var_dir: Path = Field(default_factory=lambda: _project_root() / "var")
    log_level: str = "INFO"

    # [kafka]
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: Port = 9093
    topic_prefix: str = "fleet."
    topic_partitions: PositiveInt = 4
    kafka_heap: str = "768m"

    # [cassandra]
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: Port = 9042
    cassandra_storage_port: Port = 7000
    cassandra_keyspace: str = "fleet"
    cassandra_replication_factor: PositiveInt = 1
    cassandra_heap: str = "1G"

    # [mqtt] The broker: devices connect on the device port, platform services on the service port.
    mqtt_host: str = "127.0.0.1"
    mqtt_device_port: Port = 8883
    mqtt_service_port: Port = 8884
    # Claim certificates (zero-touch provisioning) connect only here.
    mqtt_provisioning_port: Port = 8885
    mqtt_max_inflight: PositiveInt = 1000
    # Per persistent session, above the in-flight ones; Mosquitto drops what exceeds it after it
    # has PUBACKed the device. For the bridge's session this is the buffer that covers a bridge
    # outage or overload: 1M is ~2 min at 8,000 msg/s and up to ~0.5 GB of broker memory (measured ~490 B each).
    mqtt_max_queued: PositiveInt = 1_000_000

    # [security] Certificate lifetimes, rotation grace, broker cut-off, revocation.
    cert_validity_days: PositiveInt = 365
    # After a rotation the old certificate keeps working this long, then goes on the CRL.
    cert_rotation_grace_s: NonNegativeInt = 3600
    # The CN of the API's own services-CA identity (takes over sessions, runs provisioning).
    api_service_identity: str = "fleet-api"
    # Shell command that makes the broker reload its CRLs; empty = SIGHUP via the local pid file.
    broker_reload_command: str = ""
    cutoff_timeout_s: NonNegativeInt = 4
    # How often the API revokes rotated certificates whose grace period is over (0 = never).
    revocation_interval_s: NonNegativeInt = 5

    # [provisioning] Zero-touch provisioning with claim certificates.
    claim_cert_validity_days: PositiveInt = 730
    # The API answers claim and rotation requests over MQTT (shared subscription) when true.
    provisioning_service: Flag = True
    provisioning_share_group: str = "provisioning"
    provisioning_webhook_timeout_s: PositiveInt = 5

    # [flink]
    flink_rest_port: Port = 8081
    # Prometheus metrics of the JobManager and TaskManagers: each takes the first free port of
    # flink_metrics_port .. flink_metrics_port + 9 (the JobManager, started first, the first).
    flink_metrics_port: Annotated[int, Field(ge=1, le=65535 - 9)] = 9249
    flink_parallelism: PositiveInt = 2

    # [bridge] MQTT -> Kafka.
    bridge_client_id: str = "fleet-bridge"
    bridge_share_group: str = "bridge"
    bridge_metrics_port: OptionalPort = 9108
    max_payload_bytes: PositiveInt = 16384
    # Dead-letter messages of devices the registry does not list as active.
    bridge_require_active: Flag = True
    # How often the bridge re-reads the devices that are not active (a status change reaches it
    # within this), and how long it trusts that the registry lists a device (catches deletions;
    # the broker has cut a deleted device off already). See fleet/identity/active_devices.py.
    registry_cache_ttl_s: PositiveInt = 2
    registry_known_ttl_s: NonNegativeInt = 300
    # The bridge producer's batching delay: 25 ms of latency buys Kafka batches a few times larger,
    # which is what the broker's CPU per message depends on.
    kafka_linger_ms: NonNegativeInt = 25
    kafka_batch_size: NonNegativeInt = 65536

    # [api]
    api_host: str = "127.0.0.1"
    api_port: Port = 8000
    # Serve HTTPS with a certificate from the platform CA (pki_dir/servers/fleet-api-server.*).
    api_tls: Flag = False
    api_token_ttl_s: PositiveInt = 3600
    api_token_max_ttl_s: PositiveInt = 86400
    # Largest request body the API reads; a bigger one is a 413 before any parsing.
    api_max_body_bytes: PositiveInt = 1 << 20
    # How long PATCH /v1/devices/{id}/shadow waits for the shadow job's verdict before it answers
    # 202 with a request id to poll.
    shadow_verdict_timeout_s: PositiveFloat = 3.0

    # [lake] The Parquet lake; unset = var_dir/lake.
    lake_dir: Path | None = None

    # [firmware] The firmware store (fleet/ota): images by SHA-256 under firmware_dir (unset =
    # var_dir/firmware), at most firmware_max_image_bytes each (an upload's own body limit, above
    # api_max_body_bytes); the platform's Ed25519 signing key (unset = pki_dir/firmware-signing.key,
    # made on first use, 0600); vendors' Ed25519 public keys (PEM files, comma-separated) whose
    # signatures an upload may carry instead (a list, so keys can rotate). Devices download with a
    # signed URL (fleet/ota/download_urls.py): its HMAC key file (unset = pki_dir/ota-url.key, made
    # on first use, 0600; the API and the OTA job must read the same one) and lifetime.
    firmware_dir: Path | None = None
    firmware_max_image_bytes: PositiveInt = 1 << 30
    firmware_key_file: Path | None = None
    firmware_vendor_keys: str = ""
    ota_url_key_file: Path | None = None
    ota_url_ttl_s: PositiveInt = 3600

    # [telemetry] Retention in Cassandra (the lake keeps everything): the telemetry job writes its
    # rows with these TTLs and the API reads older days from the lake.
    telemetry_raw_ttl_days: PositiveInt = 30
    telemetry_rollup_ttl_days: PositiveInt = 400

    @field_validator("var_dir", "lake_dir", "firmware_dir", "firmware_key_file", "ota_url_key_file", mode="before")
    @classmethod
    def _resolve_given_path(cls, value: Any, info: ValidationInfo) -> Any:
        # Text (environment, file) is resolved against the working directory; an empty one is unset.
        # Path objects from code are kept as they are.
        if isinstance(value, str):
            if value == "" and info.field_name == "var_dir":
                raise ValueError("must not be empty")
            return Path(value).expanduser().resolve() if value != "" else None
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first. Outside from_env (Settings(), replace) nothing but the arguments:
        # the process environment is never read behind the caller's back.
        env = _given_env.get()
        if env is None:
            return (init_settings,)
        return init_settings, _EnvironmentSource(settings_cls, env), _ConfigFileSource(settings_cls, env)

    @property
    def pki_dir(self) -> Path:
        return self.var_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def data_dir(self) -> Path:
        return self.var_dir / "data"

    @property
    def jar_dir(self) -> Path:
        return self.var_dir / "jars"

    @property
    def lake_path(self) -> Path:
        return self.lake_dir if self.lake_dir is not None else self.var_dir / "lake"

    @property
    def firmware_path(self) -> Path:
        return self.firmware_dir if self.firmware_dir is not None else self.var_dir / "firmware"

    @property
    def firmware_key_path(self) -> Path:
        return self.firmware_key_file if self.firmware_key_file is not None else self.pki_dir / "firmware-signing.key"

    @property
    def ota_url_key_path(self) -> Path:
        return self.ota_url_key_file if self.ota_url_key_file is not None else self.pki_dir / "ota-url.key"

    @property
    def firmware_vendor_key_paths(self) -> list[Path]:
        return [Path(p.strip()).expanduser() for p in self.firmware_vendor_keys.split(",") if p.strip()]

    @property
    def cassandra_contact_points(self) -> list[str]:
        return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]

    def topic(self, name: str) -> str:
        """Full Kafka topic name for a logical topic (see fleet.contract.topics.KafkaTopics)."""
        return f"{self.topic_prefix}{name}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, validated like any other settings."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        with _explained():
            return type(self)(**{**values, **changes})

    def to_env(self) -> dict[str, str]:
        """FLEET_* variables that make ``from_env`` rebuild these settings in a child process."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            env[ENV_PREFIX + name.upper()] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``FLEET_*`` variables of ``env`` (default: the process environment) over
        the TOML file that ``FLEET_CONFIG_FILE`` names, over the defaults."""
        token = _given_env.set(os.environ if env is None else env)
        try:
            with _explained():
                return cls()
        finally:
            _given_env.reset(token)


# The TOML file's tables and the fields each holds. Inside a table a key is the field's name
# without the table's prefix: [kafka] bootstrap = kafka_bootstrap, [kafka] topic_prefix = topic_prefix.
# Fields in no table (var_dir, log_level) sit at the top of the file.
SECTIONS: dict[str, tuple[str, ...]] = {
    "kafka": ("kafka_bootstrap", "kafka_controller_port", "topic_prefix", "topic_partitions", "kafka_heap"),
    "cassandra": ("cassandra_hosts", "cassandra_port", "cassandra_storage_port", "cassandra_keyspace",
                  "cassandra_replication_factor", "cassandra_heap"),
    "mqtt": ("mqtt_host", "mqtt_device_port", "mqtt_service_port", "mqtt_provisioning_port", "mqtt_max_inflight",
             "mqtt_max_queued"),
    "security": ("cert_validity_days", "cert_rotation_grace_s", "api_service_identity", "broker_reload_command",
                 "cutoff_timeout_s", "revocation_interval_s"),
    "provisioning": ("claim_cert_validity_days", "provisioning_service", "provisioning_share_group",
                     "provisioning_webhook_timeout_s"),
    "flink": ("flink_rest_port", "flink_metrics_port", "flink_parallelism"),
    "bridge": ("bridge_client_id", "bridge_share_group", "bridge_metrics_port", "max_payload_bytes",
               "bridge_require_active", "registry_cache_ttl_s", "registry_known_ttl_s", "kafka_linger_ms",
               "kafka_batch_size"),
    "api": ("api_host", "api_port", "api_tls", "api_token_ttl_s", "api_token_max_ttl_s", "api_max_body_bytes",
            "shadow_verdict_timeout_s"),
    "lake": ("lake_dir",),
    "firmware": ("firmware_dir", "firmware_max_image_bytes", "firmware_key_file", "firmware_vendor_keys",
                 "ota_url_key_file", "ota_url_ttl_s"),
    "telemetry": ("telemetry_raw_ttl_days", "telemetry_rollup_ttl_days"),
}


def section_key(section: str, field_name: str) -> str:
    """The key of ``field_name`` inside the file's ``[section]`` table."""
    return field_name.removeprefix(section + "_")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings a TOML file gives, by flat field name, as the file has them (not yet validated).
    Unknown keys and a setting given twice (flat and in its table) are refused."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    unknown: list[str] = []
    twice: list[str] = []

    def put(name: str, value: Any, where: str) -> None:
        if name not in fields:
            unknown.append(where)
        elif name in values:
            twice.append(name)
        else:
            values[name] = value

    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            by_key = {section_key(key, name): name for name in SECTIONS[key]}
            for inner, inner_value in value.items():
                put(by_key.get(inner, f"{key}.{inner}"), inner_value, f"{key}.{inner}")
        else:
            put(key, value, key)
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))} (in {path})")
    if twice:
        raise SettingsError(f"settings given twice: {', '.join(sorted(twice))} (in {path})")
    return values


# The mapping from_env reads while it builds one Settings (None outside from_env).
_given_env: ContextVar[Mapping[str, str] | None] = ContextVar("fleet_settings_env", default=None)


class _EnvironmentSource(PydanticBaseSettingsSource):
    """``FLEET_<NAME>`` variables of the mapping given to from_env; other variables are ignored."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.env.get(ENV_PREFIX + field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, field in self.settings_cls.model_fields.items()
                if (value := self.get_field_value(field, name)[0]) is not None}


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The TOML file that ``FLEET_CONFIG_FILE`` names, if any."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        path = env.get(ENV_PREFIX + "CONFIG_FILE")
        self.values = read_config_file(path) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


_MUST_BE = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}


@contextmanager
def _explained() -> Iterator[None]:
    """Turns pydantic's validation report into one short line per setting."""
    try:
        yield
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {name}")
                continue
            ctx = err.get("ctx", {})
            what = _MUST_BE.get(err["type"]) or (
                str(ctx["error"]) if err["type"] == "value_error" else
                f"must be at least {ctx['ge']}" if "ge" in ctx else
                f"must be at most {ctx['le']}" if "le" in ctx else
                f"must be greater than {ctx['gt']}" if "gt" in ctx else
                err["msg"][:1].lower() + err["msg"][1:])
            problems.append(f"setting {name} {what}, got {err['input']!r}")
        raise SettingsError("; ".join(problems)) from None
