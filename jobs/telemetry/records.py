"""The record shapes between the telemetry job's operators: types, JSON fields, output tags.

Sources hand ``build`` Row(device_id, raw envelope JSON); everything the core emits is JSON text
with the fields listed here, which Java (fleet.flink.sinks.Rows) turns into rows for the sinks.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import OutputTag

# What sources hand to build(): Row(device_id, raw envelope JSON), key first, the shape PyFlink's
# keyed operators take (see fleet.flink.telemetry.Envelopes in java/flink-fleet).
ENVELOPE_TYPE = Types.ROW([Types.STRING(), Types.STRING()])
# Outputs of the core, all JSON text (field names as below): the accepted envelopes as
# received, and one object per rollup row, gap report and device-stats update.
POINT_FIELDS = ["device_id", "ts", "seq", "ingest_ts", "metrics", "attrs"]  # as Java's Rows.envelopeToPoint makes
ROLLUP_FIELDS = ["device_id", "bucket_start", "metric", "min", "max", "avg", "sum", "count"]
ROLLUP_TYPES = "STRING,LONG,STRING,DOUBLE,DOUBLE,DOUBLE,DOUBLE,LONG"
GAP_FIELDS = ["device_id", "first_seq", "last_seq", "missing", "after_ts", "before_ts", "status"]
GAP_TYPES = "STRING,LONG,LONG,LONG,LONG,LONG,STRING"
STATS_FIELDS = ["device_id", "max_seq", "last_ts", "received", "duplicates", "late", "lost"]
STATS_TYPES = "STRING,LONG,LONG,LONG,LONG,LONG,LONG"

ROLLUPS = OutputTag("rollups", Types.STRING())
GAPS = OutputTag("gaps", Types.STRING())
STATS = OutputTag("device-stats", Types.STRING())
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())  # dead-letter JSON (schemas/kafka/dead-letter)
SIDE_OUTPUTS = (ROLLUPS, GAPS, STATS, DEAD_LETTERS)
