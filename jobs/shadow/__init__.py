"""The shadow job: device reports, operator changes and connectivity -> shadow documents.

See pipeline for the graph, logic for the per-record rules around fleet.shadow.domain, core for
the keyed state, sinks for where outputs go, job for the entry point (``fleet jobs submit shadow``;
the local launcher submits every jobs/<name>/job.py).

The core comes in two implementations of the same rules, chosen with ``--core``:

- ``java`` (the default): fleet.flink.shadow.ShadowCore in java/flink-fleet, a Java
  KeyedProcessFunction (uid ``shadow-core-java``), a line-by-line port of jobs.shadow.logic and
  fleet.shadow.domain (ShadowLogic, ShadowDomain) writing the same JSON text (Python's
  ``json.dumps`` formatting, float repr included) and the same rows.
- ``python``: ``core.ShadowCore``, a thin thread-mode shell around ``logic.handle`` (uid
  ``shadow-core``). fleet.shadow.domain is the spec; both cores replay the same step vectors
  (tests/vectors/shadow, tests/vectors/shadow_job), and tests/pipeline/test_shadow_job.py runs
  both on the same records with the same expectations and checks that they emit the same records.

Java is the default because the Python operator tops out at ~840 updates/s on one task on the
2-core dev box: the domain is only ~110-150 us per update, but every state access and each of the
emitted records (downlink, verdict, shadow row, history row, ...) crosses between the JVM and the
embedded interpreter, ~1 ms per update in all, short of the 1,000 updates/s target. The Java core
does the same work without leaving the JVM: ~40 us per update for its logic alone (the Python
logic: ~150 us, bench/shadow_core_bench.py's records); in a local mini-cluster (RocksDB, discarding
sinks, 8,000 devices, a loaded 2-core box) ~130 us per update for the core against ~250 us for the
Python one, most of the Java figure being state access and record serialization.

The two cores keep separate state (different uids; the layout is the same, MapStates of
``fleet.shadow.domain.encode`` documents and token buckets per shadow name plus the connectivity
JSON, but it is not carried over): switching core on a running job means starting without that
state (``--allowNonRestoredState`` from a savepoint), i.e. with empty documents whose versions
restart at 1. The job does not reload them from Cassandra, whose rows are written by version
(``logic.shadow_write_ts``): the old rows would win over the new ones. So switch only on a fresh
stack, or with the shadow tables truncated.
"""
