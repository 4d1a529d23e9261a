"""The OTA job: staged firmware rollouts (fleet.ota.rollout) and device executions (fleet.ota.execution)."""
