"""Telemetry rules (the job's domain), queries and the read-side store."""
