"""The shadow job: device reports, operator changes and connectivity -> shadow documents.

See pipeline for the graph, logic for the per-record rules around fleet.shadow.domain, core for
the keyed state, sinks for where outputs go, job for the entry point (``fleet jobs submit shadow``;
the local launcher submits every jobs/<name>/job.py).
"""
