"""The record shapes between the OTA job's operators: types and output tags.

Kafka outputs are Row(key, value JSON): the key is the device id (downlink, ota-assignments) or
the deployment id (ota-events). Cassandra outputs are rows of logic.DEPLOYMENT_FIELDS and
logic.EXECUTION_FIELDS, bound in order to the Java Cassandra sink's statement markers.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import OutputTag

from jobs.ota.logic import DEPLOYMENT_FIELDS, EXECUTION_FIELDS, NEW_DEPLOYMENT_FIELDS

KAFKA_TYPE = Types.ROW_NAMED(["device_id", "value"], [Types.STRING(), Types.STRING()])

_S, _L, _I = Types.STRING(), Types.LONG(), Types.INT()
DEPLOYMENT_TYPE = Types.ROW_NAMED(DEPLOYMENT_FIELDS, [_S, _S, _S, _L, _L])
NEW_DEPLOYMENT_TYPE = Types.ROW_NAMED(NEW_DEPLOYMENT_FIELDS, [_S, _S, _S, _S, _S, _S, _L, _S, _L, _S, _I, _S, _L])
EXECUTION_TYPE = Types.ROW_NAMED(EXECUTION_FIELDS, [_S, _S, _S, _I, _I, _L, _S, _L])

# Of the rollout operator (main output: ota-assignments).
DEPLOYMENTS = OutputTag("ota-deployments", DEPLOYMENT_TYPE)
ROLLOUT_DEAD_LETTERS = OutputTag("ota-rollout-dead-letters", KAFKA_TYPE)
NEW_DEPLOYMENTS = OutputTag("ota-new-deployments", NEW_DEPLOYMENT_TYPE)
REQUESTS = OutputTag("ota-requests", KAFKA_TYPE)
# Of the execution operator (main output: downlink).
EVENTS = OutputTag("ota-events", KAFKA_TYPE)
EXECUTIONS = OutputTag("ota-executions", EXECUTION_TYPE)
DEVICE_DEAD_LETTERS = OutputTag("ota-device-dead-letters", KAFKA_TYPE)
