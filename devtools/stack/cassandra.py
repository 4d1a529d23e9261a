"""Cassandra 5.0, one node run from Maven Central jars (CassandraDaemon), sized for a dev machine.

Layout under ``<data_dir>/cassandra``: ``cassandra.yaml`` and ``logback.xml`` (rewritten on every
``prepare`` from Settings) and the data, commitlog, hints, saved_caches and cdc_raw directories.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from devtools.stack import jars
from devtools.stack.component import JarComponent
from devtools.stack.process import StackError, port_open, require_java
from fleet.config import Settings
from fleet.infra.cassandra import open_session

# Cassandra 5.0 runs on Java 11 or 17 only; the flags below are for 17.
JAVA_MAJOR = 17

# From Cassandra's conf/jvm17-server.options: the JPMS holes its internals (jamm, chronicle,
# netty, the sstable code) need on Java 17. Without them start-up dies with
# InaccessibleObjectException.
JAVA17_MODULE_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.base/jdk.internal.ref", "java.base/sun.nio.ch",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi", "java.rmi/sun.rmi.registry",
        "java.rmi/sun.rmi.server", "java.sql/java.sql", "java.base/java.lang.ref",
        "jdk.unsupported/sun.misc", "jdk.compiler/com.sun.tools.javac.file",
        "jdk.attach/sun.tools.attach",
    )),
    *(f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
        "java.base/jdk.internal.util.jar", "jdk.management/com.sun.management.internal",
        "java.base/sun.nio.ch", "java.base/java.io", "java.base/java.lang.reflect",
        "jdk.compiler/com.sun.tools.javac", "java.base/java.lang", "java.base/java.util",
        "java.base/java.nio", "java.base/java.util.concurrent", "java.base/java.util.concurrent.atomic",
        "java.base/java.math", "java.base/java.net",
    )),
]

# Everything to stdout (appended to <log_dir>/cassandra.log by ManagedProcess). Without a config
# logback defaults to DEBUG for everything.
LOGBACK_XML = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra.db.ColumnFamilyStore" level="WARN"/>
  <logger name="org.apache.cassandra.db.lifecycle.LogTransaction" level="WARN"/>
  <logger name="org.apache.cassandra.db.compaction" level="WARN"/>
  <logger name="org.apache.cassandra.db.commitlog" level="WARN"/>
  <logger name="org.apache.cassandra.db.memtable" level="WARN"/>
  <logger name="org.apache.cassandra.io.sstable" level="WARN"/>
  <logger name="org.apache.cassandra.index.sai" level="WARN"/>
  <logger name="org.apache.cassandra.utils.SigarLibrary" level="ERROR"/>
  <logger name="com.datastax" level="WARN"/>
</configuration>
"""


def cassandra_config(settings: Settings, home: Path) -> dict[str, Any]:
    """The cassandra.yaml content (5.0 key names, values with units)."""
    host = settings.cassandra_contact_points[0]
    return {
        "cluster_name": "fleet-local",
        # One node: a few vnodes are plenty and keep token metadata small.
        "num_tokens": 4,
        "allocate_tokens_for_local_replication_factor": 1,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": f"{host}:{settings.cassandra_storage_port}"}],
        }],
        "listen_address": host,
        "rpc_address": host,
        "storage_port": settings.cassandra_storage_port,
        "native_transport_port": settings.cassandra_port,
        "start_native_transport": True,
        # Local development: no auth (the API is the guarded entry point).
        "authenticator": "AllowAllAuthenticator",
        "authorizer": "AllowAllAuthorizer",
        "data_file_directories": [str(home / "data")],
        "commitlog_directory": str(home / "commitlog"),
        "saved_caches_directory": str(home / "saved_caches"),
        "hints_directory": str(home / "hints"),
        "cdc_raw_directory": str(home / "cdc_raw"),
        "disk_failure_policy": "stop",
        "commit_failure_policy": "stop",
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "commitlog_segment_size": "32MiB",
        "commitlog_total_space": "512MiB",
        # A new cluster needs no compatibility with 4.x sstables/messaging.
        "storage_compatibility_mode": "NONE",
        # Small machine: small memtables and caches, few threads.
        "memtable_heap_space": "128MiB",
        "memtable_offheap_space": "256MiB",
        # Trie memtables with off-heap contents (5.0): less garbage per write than skip lists.
        "memtable_allocation_type": "offheap_objects",
        "memtable": {"configurations": {
            "skiplist": {"class_name": "SkipListMemtable"},
            "trie": {"class_name": "TrieMemtable"},
            "default": {"inherits": "trie"},
        }},
        # The telemetry job sends UNLOGGED batches of up to ~24 KiB (a partition's rows together):
        # don't log each as oversized. The fail threshold stays at its 50 KiB default.
        "batch_size_warn_threshold": "48KiB",
        "unlogged_batch_across_partitions_warn_threshold": 1000,
        "memtable_flush_writers": 1,
        "key_cache_size": "16MiB",
        "row_cache_size": "0MiB",
        "counter_cache_size": "4MiB",
        "file_cache_size": "64MiB",
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 4,
        "concurrent_materialized_view_writes": 2,
        "concurrent_compactors": 1,
        "compaction_throughput": "64MiB/s",
        "native_transport_max_threads": 32,
        # Tests create and drop throwaway keyspaces: snapshots on DROP would pile up on disk.
        "auto_snapshot": False,
        "snapshot_before_compaction": False,
        "incremental_backups": False,
        # One node has nobody to hand hints to.
        "hinted_handoff_enabled": False,
    }


def render_yaml(config: dict[str, Any]) -> str:
    # JSON is valid YAML (flow style), so no YAML library is needed to write the file.
    lines = ["# Written by devtools.stack.cassandra on every prepare(); edit Settings, not this file."]
    lines += [f"{key}: {json.dumps(value)}" for key, value in config.items()]
    return "\n".join(lines) + "\n"


def _without_memlock_privilege(argv: list[str]) -> list[str]:
    """Run ``argv`` without CAP_IPC_LOCK when we are root.

    CassandraDaemon always calls mlockall(MCL_CURRENT) (no switch turns it off). As a normal user
    that fails at once against RLIMIT_MEMLOCK and only logs a warning; as root (CAP_IPC_LOCK
    ignores the limit) it succeeds and faults in the whole committed heap: measured here +3.7 s
    start-up and RSS pinned at Xmx+0.5 GiB. Dropping the capability makes root behave like a
    normal user. setpriv (util-linux) execs, so the pid stays the JVM's.
    """
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", *argv]
    return argv


class CassandraComponent(JarComponent):
    name = "cassandra"
    start_timeout = 180.0
    # SIGTERM runs Cassandra's drain-on-shutdown hook (flush memtables, close the commitlog),
    # so the next start replays nothing.
    stop_timeout = 90.0

    def __init__(self, settings: Settings, jmx_port: int | None = None):
        """``jmx_port``: local-only JMX (for nodetool) on this port; None (default) runs without
        JMX so the node never clashes with another JVM's 7199."""
        super().__init__(settings)
        self.jmx_port = jmx_port
        self.config_file = self.home / "cassandra.yaml"
        self.logback_file = self.home / "logback.xml"

    def java_argv(self, java: str) -> list[str]:
        heap = self.settings.cassandra_heap
        argv = [
            java, f"-Xms{heap}", f"-Xmx{heap}",
            # jvm-server.options / jvm17-server.options, minus -XX:+AlwaysPreTouch (it touches the
            # whole heap at start: slower start and full RSS at once on a dev machine).
            "-ea", "-da:net.openhft...", "-XX:+UseThreadPriorities", "-Xss256k",
            "-XX:+HeapDumpOnOutOfMemoryError", f"-XX:HeapDumpPath={self.home}",
            "-XX:+CrashOnOutOfMemoryError", f"-XX:ErrorFile={self.home}/hs_err_%p.log",
            "-XX:+UseTLAB", "-XX:+ResizeTLAB", "-XX:+PerfDisableSharedMem",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
            "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300",
            "-Djava.net.preferIPv4Stack=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true", "-Dio.netty.allocator.maxOrder=11",
            *JAVA17_MODULE_FLAGS,
            # Cassandra sizes memtable contents with jamm, which needs its agent loaded.
            f"-javaagent:{jars.find_jar(self.jar_dir, 'jamm-')}",
            f"-Dcassandra.config={self.config_file.as_uri()}",
            f"-Dcassandra.storagedir={self.home}",
            f"-Dcassandra.logdir={self.settings.log_dir}",
            f"-Dlogback.configurationFile={self.logback_file}",
            "-Dcassandra-foreground=yes",
            # Start-up speed on a single seed node: nobody to gossip with, so do not wait for it.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=0",
            # ... and do not sleep 2 s announcing the shutdown to peers that do not exist.
            "-Dcassandra.shutdown_announce_in_ms=0",
        ]
        if self.jmx_port is not None:
            argv.append(f"-Dcassandra.jmx.local.port={self.jmx_port}")
        argv += ["-cp", jars.classpath(self.jar_dir), "org.apache.cassandra.service.CassandraDaemon"]
        return _without_memlock_privilege(argv)

    # --- Component protocol ------------------------------------------------------------

    def prepare(self) -> None:
        require_java(JAVA_MAJOR)
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        _ = self.jar_dir  # download once; cached by POM hash
        self.config_file.write_text(render_yaml(cassandra_config(self.settings, self.home)))
        self.logback_file.write_text(LOGBACK_XML)

    def start(self) -> None:
        if self.is_running():
            return
        if not self.config_file.exists():
            raise StackError("cassandra: not prepared (no cassandra.yaml); call prepare() first")
        self.process.argv = self.java_argv(require_java(JAVA_MAJOR))
        super().start()

    def ports(self) -> list[tuple[str, int, str]]:
        host = self.settings.cassandra_contact_points[0]
        ports = [(host, self.settings.cassandra_port, "Cassandra (CQL native port)"),
                 (host, self.settings.cassandra_storage_port, "Cassandra (storage port)")]
        if self.jmx_port is not None:
            ports.append(("127.0.0.1", self.jmx_port, "Cassandra (JMX)"))
        return ports

    def healthy(self) -> bool:
        host = self.settings.cassandra_contact_points[0]
        if not port_open(host, self.settings.cassandra_port):
            return False
        try:
            session = open_session(self.settings, connect_timeout=3.0)
        except Exception:
            return False
        try:
            return session.execute("SELECT release_version FROM system.local").one() is not None
        except Exception:
            return False
        finally:
            session.cluster.shutdown()

    def post_start(self) -> None:
        from fleet.infra.migrations import apply_migrations

        apply_migrations(self.settings)

    def endpoints(self) -> dict[str, str]:
        return {"cql": f"{self.settings.cassandra_contact_points[0]}:{self.settings.cassandra_port}"}
