"""One settings object per process, built from the environment (and an optional TOML file).

The environment is passed in, never read at import time, so tests build their own settings and
Flink functions can be pickled with the settings they were given (no module-level singleton).

Precedence: explicit environment variable > TOML file (``FLEET_CONFIG_FILE``) > default.
Every field is read from ``FLEET_<FIELD_NAME_UPPER>``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "FLEET_"


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    # Where the local stack keeps data, logs, pids, jars and the development PKI.
    var_dir: Path = field(default_factory=lambda: _project_root() / "var")
    # Deployment environment: "local" allows development defaults; anything else refuses them.
    environment: str = "local"
    log_level: str = "INFO"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    topic_prefix: str = "fleet."
    topic_partitions: int = 4
    kafka_heap: str = "768m"

    # Cassandra
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: int = 9042
    cassandra_storage_port: int = 7000
    cassandra_keyspace: str = "fleet"
    cassandra_replication_factor: int = 1
    cassandra_heap: str = "1G"

    # MQTT broker: devices connect on the device port, platform services on the service port.
    mqtt_host: str = "127.0.0.1"
    mqtt_device_port: int = 8883
    mqtt_service_port: int = 8884
    # Claim certificates (zero-touch provisioning) connect only here.
    mqtt_provisioning_port: int = 8885
    mqtt_max_inflight: int = 1000
    # Per persistent session, above the in-flight ones; Mosquitto drops what exceeds it after it
    # has PUBACKed the device. For the bridge's session this is the buffer that covers a bridge
    # outage or overload: 1M is ~2 min at 8,000 msg/s and up to ~0.5 GB of broker memory (measured ~490 B each).
    mqtt_max_queued: int = 1_000_000

    # Security (issue 4): certificate lifetimes, rotation grace, broker cut-off, provisioning.
    cert_validity_days: int = 365
    claim_cert_validity_days: int = 730
    # After a rotation the old certificate keeps working this long, then goes on the CRL.
    cert_rotation_grace_s: int = 3600
    # The CN of the API's own services-CA identity (takes over sessions, runs provisioning).
    api_service_identity: str = "fleet-api"
    # Shell command that makes the broker reload its CRLs; empty = SIGHUP via the local pid file.
    broker_reload_command: str = ""
    cutoff_timeout_s: int = 4
    # The API answers claim and rotation requests over MQTT (shared subscription) when true.
    provisioning_service: bool = True
    provisioning_share_group: str = "provisioning"
    provisioning_webhook_timeout_s: int = 5
    # How often the API revokes rotated certificates whose grace period is over (0 = never).
    revocation_interval_s: int = 5
    # How often the bridge re-reads the devices that are not active (a status change reaches it
    # within this), and how long it trusts that the registry lists a device (catches deletions;
    # the broker has cut a deleted device off already). See fleet/identity/active_devices.py.
    registry_cache_ttl_s: int = 2
    registry_known_ttl_s: int = 300

    # Flink
    flink_rest_port: int = 8081
    # Prometheus metrics of the JobManager and TaskManagers: each takes the first free port of
    # flink_metrics_port .. flink_metrics_port + 9 (the JobManager, started first, the first).
    flink_metrics_port: int = 9249
    flink_parallelism: int = 2

    # Bridge
    bridge_client_id: str = "fleet-bridge"
    bridge_share_group: str = "bridge"
    bridge_metrics_port: int = 9108
    max_payload_bytes: int = 16384
    # Dead-letter messages of devices the registry does not list as active (issue: security).
    bridge_require_active: bool = True
    # The bridge producer's batching delay: 25 ms of latency buys Kafka batches a few times larger,
    # which is what the broker's CPU per message depends on.
    kafka_linger_ms: int = 25
    kafka_batch_size: int = 65536

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Serve HTTPS with a certificate from the platform CA (pki_dir/servers/fleet-api-server.*).
    api_tls: bool = False
    api_token_ttl_s: int = 3600
    api_token_max_ttl_s: int = 86400
    # Largest request body the API reads; a bigger one is a 413 before any parsing.
    api_max_body_bytes: int = 1 << 20

    # Parquet lake
    lake_dir: Path | None = None

    # Telemetry retention in Cassandra (the lake keeps everything); the API reads older days from
    # the lake. Keep equal to the telemetry job's --raw-ttl-s / --rollup-ttl-s.
    telemetry_raw_ttl_days: int = 30
    telemetry_rollup_ttl_days: int = 400

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
    def cassandra_contact_points(self) -> list[str]:
        return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]

    def topic(self, name: str) -> str:
        """Full Kafka topic name for a logical topic (see fleet.contract.topics.KafkaTopics)."""
        return f"{self.topic_prefix}{name}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """FLEET_* variables that make ``from_env`` rebuild these settings in a child process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            env[ENV_PREFIX + f.name.upper()] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_file = env.get(ENV_PREFIX + "CONFIG_FILE")
        if config_file:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = raw
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**{name: _coerce(known[name], value) for name, value in values.items()})


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        return None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"setting {f.name} must be true or false, got {value!r}")
    if kind.startswith("int"):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"setting {f.name} must be an integer, got {value!r}") from None
    if kind.startswith("Path"):
        return Path(value).expanduser().resolve() if value != "" else None
    return str(value)
