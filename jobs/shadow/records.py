"""The record shapes between the shadow job's operators: types and output tags.

The core's main output is the downlink; the rest are side outputs. Kafka outputs are
Row(key = device id, value = JSON text); Cassandra outputs are rows of logic.*_FIELDS, typed
here, which the Java Cassandra sink binds to its statement's markers in order.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import OutputTag

from jobs.shadow.logic import CONNECTIVITY_FIELDS, HISTORY_FIELDS, SHADOW_FIELDS

# What sources hand to build(): Row(device_id = the Kafka key, raw JSON), as the telemetry job's.
INPUT_TYPE = Types.ROW([Types.STRING(), Types.STRING()])
KAFKA_TYPE = Types.ROW_NAMED(["device_id", "value"], [Types.STRING(), Types.STRING()])

_S, _L, _B = Types.STRING(), Types.LONG(), Types.BOOLEAN()
SHADOW_TYPE = Types.ROW_NAMED(SHADOW_FIELDS, [_S, _S, _L, _S, _S, _S, _L, _L])
HISTORY_TYPE = Types.ROW_NAMED(HISTORY_FIELDS, [_S, _S, _L, _L, _S, _S, _S, _S, _S, _S, _L])
CONNECTIVITY_TYPE = Types.ROW_NAMED(CONNECTIVITY_FIELDS, [_S, _B, _L, _L, _S, _S, _L])

VERDICTS = OutputTag("shadow-verdicts", KAFKA_TYPE)
DEAD_LETTERS = OutputTag("dead-letters", KAFKA_TYPE)
SHADOWS = OutputTag("shadows", SHADOW_TYPE)
HISTORY = OutputTag("shadow-history", HISTORY_TYPE)
CONNECTIVITY = OutputTag("device-connectivity", CONNECTIVITY_TYPE)
SIDE_OUTPUTS = (VERDICTS, DEAD_LETTERS, SHADOWS, HISTORY, CONNECTIVITY)
