"""The record shapes between the commands job's operators: types and output tags.

The core's main output is the downlink; the rest are side outputs. Kafka outputs are
Row(key = device id, value = JSON text); the Cassandra outputs are rows of logic.COMMAND_FIELDS and BATCH_MEMBER_FIELDS,
which the Java Cassandra sink binds to its statement's markers in order.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import OutputTag

from jobs.commands.logic import BATCH_MEMBER_FIELDS, COMMAND_FIELDS

INPUT_TYPE = Types.ROW([Types.STRING(), Types.STRING()])
KAFKA_TYPE = Types.ROW_NAMED(["device_id", "value"], [Types.STRING(), Types.STRING()])

_S, _L = Types.STRING(), Types.LONG()
COMMAND_TYPE = Types.ROW_NAMED(COMMAND_FIELDS, [_S, _S, _S, _S, _L, _L, _S, _L])
BATCH_MEMBER_TYPE = Types.ROW_NAMED(BATCH_MEMBER_FIELDS, [_S, _S, _S, _S, _S, _L, _L])

EVENTS = OutputTag("command-events", KAFKA_TYPE)
DEAD_LETTERS = OutputTag("dead-letters", KAFKA_TYPE)
COMMANDS = OutputTag("commands", COMMAND_TYPE)
BATCH_MEMBERS = OutputTag("batch-members", BATCH_MEMBER_TYPE)
SIDE_OUTPUTS = (EVENTS, DEAD_LETTERS, COMMANDS, BATCH_MEMBERS)
