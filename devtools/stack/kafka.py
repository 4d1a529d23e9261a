"""Kafka 4.x in KRaft mode: one combined broker+controller node run from Maven Central jars.

Layout under ``<data_dir>/kafka``: ``server.properties`` and ``log4j2.properties`` (rewritten on
every ``prepare`` from Settings), ``data/`` (the log dirs; formatted once by StorageTool).
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from devtools.stack import jars
from devtools.stack.component import JarComponent
from devtools.stack.process import StackError, port_open, require_java, run_checked
from fleet.config import Settings
from fleet.contract.topics import Kafka
from fleet.infra.kafka import admin_client, create_topics

NODE_ID = 1
# 4.x dropped Java 11 for the broker.
JAVA_MAJOR = 17


def bootstrap_host_port(settings: Settings) -> tuple[str, int]:
    """The first ``host:port`` of ``settings.kafka_bootstrap``."""
    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise StackError(f"kafka_bootstrap must be host:port, got {settings.kafka_bootstrap!r}")
    return host, int(port)


def server_properties(settings: Settings, log_dirs: Path) -> str:
    host, port = bootstrap_host_port(settings)
    cport = settings.kafka_controller_port
    props = {
        # KRaft, one node that is both the broker and the (only) controller. A static voter set
        # keeps the controller endpoint in config rather than in the formatted metadata log, so
        # changing ports later needs no re-format.
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(log_dirs),
        # Topics are created explicitly (post_start / create_topics) so a typo in a producer
        # fails instead of silently creating a stray topic.
        "auto.create.topics.enable": "false",
        "num.partitions": settings.topic_partitions,
        # One node: every replication factor and min ISR must be 1 or internal topics never form.
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Fewer internal partitions than the production default of 50: faster first start and
        # less memory, plenty for a dev machine.
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.num.partitions": 4,
        # Consumers (tests, Flink) join a group immediately instead of waiting 3 s.
        "group.initial.rebalance.delay.ms": 0,
        # Dev retention: a week or 1 GiB per partition, whichever first; smaller segments so
        # retention actually frees space on a small disk.
        "log.retention.hours": 168,
        "log.retention.bytes": 1024 ** 3,
        "log.segment.bytes": 128 * 1024 ** 2,
        "log.retention.check.interval.ms": 300000,
        # Sized for 2 cores.
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 16 * 1024 ** 2,
    }
    lines = ["# Written by devtools.stack.kafka on every prepare(); edit Settings, not this file."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


# Everything goes to stdout, which ManagedProcess appends to <log_dir>/kafka.log. Per-partition
# and config-dump loggers print thousands of lines per start at INFO, so they are held at WARN.
# log4j's own shutdown hook is disabled: it raced Kafka's and lost the shutdown messages.
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
"""
_QUIET_LOGGERS = (
    "kafka.request.logger", "state.change.logger", "kafka.cluster", "kafka.log.LogManager",
    "org.apache.kafka.common.config", "org.apache.kafka.controller", "org.apache.kafka.image",
    "org.apache.kafka.storage.internals.log", "org.apache.kafka.raft", "org.apache.kafka.clients",
)
LOG4J2_PROPERTIES += "".join(
    f"logger.q{i}.name = {name}\nlogger.q{i}.level = WARN\n" for i, name in enumerate(_QUIET_LOGGERS)
)


def new_cluster_id() -> str:
    """A Kafka cluster id (url-safe base64 of a random UUID, as ``kafka-storage random-uuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka rejects ids that look like a command-line flag
            return cid


class KafkaComponent(JarComponent):
    name = "kafka"
    start_timeout = 90.0
    # A KRaft node flushes and closes its logs on SIGTERM; give it time so the next start
    # skips log recovery.
    stop_timeout = 60.0

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.config_file = self.home / "server.properties"
        self.log4j_file = self.home / "log4j2.properties"
        self.log_dirs = self.home / "data"

    def _java_argv(self, java: str, main: str, *args: str) -> list[str]:
        heap = self.settings.kafka_heap
        return [
            java, f"-Xms{heap}", f"-Xmx{heap}",
            # Kafka's own kafka-run-class.sh defaults (G1, short pauses).
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.settings.log_dir}",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp", jars.classpath(self.jar_dir), main, *args,
        ]

    # --- Component protocol ------------------------------------------------------------

    def prepare(self) -> None:
        java = require_java(JAVA_MAJOR)
        self.home.mkdir(parents=True, exist_ok=True)
        _ = self.jar_dir  # download once; cached by POM hash
        self.config_file.write_text(server_properties(self.settings, self.log_dirs))
        self.log4j_file.write_text(LOG4J2_PROPERTIES)
        if self.is_formatted():
            return
        # Format exactly once: a second format would need --ignore-formatted anyway, and a new
        # cluster id would orphan the existing data.
        argv = self._java_argv(java, "kafka.tools.StorageTool", "format",
                               "--cluster-id", new_cluster_id(), "--config", str(self.config_file),
                               "--ignore-formatted")
        # The formatting tool needs no big heap.
        argv = [a for a in argv if not a.startswith(("-Xms", "-Xmx"))]
        argv.insert(1, "-Xmx256m")
        run_checked(argv, what="formatting the Kafka storage (kafka.tools.StorageTool)", timeout=120)

    def is_formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").exists()

    def start(self) -> None:
        if self.is_running():
            return
        if not self.config_file.exists() or not self.is_formatted():
            raise StackError("kafka: not prepared (no server.properties or unformatted storage); call prepare() first")
        java = require_java(JAVA_MAJOR)
        self.process.argv = self._java_argv(java, "kafka.Kafka", str(self.config_file))
        super().start()

    def ports(self) -> list[tuple[str, int, str]]:
        host, port = bootstrap_host_port(self.settings)
        return [(host, port, "Kafka (broker listener)"),
                (host, self.settings.kafka_controller_port, "Kafka (controller listener)")]

    def healthy(self) -> bool:
        host, port = bootstrap_host_port(self.settings)
        if not port_open(host, port):
            return False
        from kafka.errors import KafkaConfigurationError

        try:
            admin = admin_client(self.settings, timeout_ms=3000)
        except KafkaConfigurationError:
            raise  # a bug, not "not ready yet"
        except Exception:
            return False
        try:
            admin.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            admin.close()

    def post_start(self) -> None:
        create_topics(self.settings, Kafka.ALL)

    def endpoints(self) -> dict[str, str]:
        return {"bootstrap": self.settings.kafka_bootstrap}
