"""The telemetry job: Kafka telemetry -> validated, deduplicated points -> Cassandra and the Parquet lake.

    source: Row(device_id, raw envelope JSON), event time = envelope ts, watermarks (all in Java)
      -> key by device_id (Java)
      -> telemetry-core (validate, dedup by seq, per-device lateness, gaps, 1-minute rollups)
           main output  : accepted envelopes -> Cassandra `telemetry` + Parquet lake
           side outputs : rollups            -> Cassandra `telemetry_rollup_1m`
                          gaps, stats        -> Cassandra `telemetry_gaps`, `telemetry_device_stats`
                          dead letters       -> Kafka `dead-letter`
    Everything the core emits is JSON text, and Java (fleet.flink.sinks.Rows) turns it into rows behind it.

The modules, in the order a record meets them:

- ``job``: ``main`` (command-line options, startup checks, the Flink environment, execute);
- ``options``: ``JobOptions``, the job's tuning (endpoints, paths and retention come from Settings);
- ``records``: the record shapes between operators (types, JSON fields, output tags);
- ``pipeline``: ``build``, which wires a source, the core and a ``TelemetrySinks``, and the two
  sources (``kafka_source``; ``envelopes`` for files and tests' lists);
- ``python_core``: the Python implementation of the core (``--core python``);
- ``sinks``: ``ProductionSinks``, the Cassandra, lake and Kafka dead-letter sinks;
- ``pyflink_internals``: every reach into PyFlink's private API and the Java side (``_j_*``,
  ``get_gateway``, Java objects); no other module touches them.

The core comes in two implementations of the same rules, chosen with ``--core``:

- ``java`` (the default): fleet.flink.telemetry.TelemetryCore in java/flink-fleet, a Java
  KeyedProcessFunction with its own compact per-device state (uid ``telemetry-core-java``).
- ``python``: ``python_core.TelemetryCore``, a thin thread-mode shell around fleet.telemetry.domain
  (uid ``telemetry-core``). fleet.telemetry.domain is the readable reference and the spec of the
  rules (unit-tested table-driven); the Java core is a line-by-line port of it, and the pipeline
  tests run both cores on the same records and hand-computed expectations.

Java is the default because it is measured to be much cheaper. The Python operator, at ~100+ us
of CPU per record (JSON parsing, the domain, and every state access and emitted record crossing
between the JVM and the embedded interpreter), was the pipeline's largest CPU cost; the Java core
spends ~3 us per record on the same rules plus its RocksDB state access, and with it and the
production sinks no Python runs per record at all. bench/telemetry_bench.py --runs discard
--core java,python on the 2-core dev box (source + keying + core, 600k records): 65,000-124,000
records/s with Java against 8,400-9,400 with Python (figures and conditions in its docstring).

The two cores keep separate state (different uids and encodings): switching core on a running
job means starting without that state (``--allowNonRestoredState`` from a savepoint), i.e. with a
fresh dedup horizon and gap tracking.

Submit: ``fleet jobs submit telemetry`` (fleet.infra.flink_jobs) or the local launcher
(devtools.stack.flink.submit_job) does it, or by hand:
    flink run --python jobs/telemetry/job.py --pyFiles <zip of fleet/ and jobs/> [--core java|python] [...]
(java/flink-fleet's jar and the connector jars must be in the cluster's lib/.)
"""
