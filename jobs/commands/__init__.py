"""The commands job: operator commands, device results and connectivity -> one lifecycle per command.

See pipeline for the graph, logic for the per-record rules around fleet.commands.domain, core for
the keyed state and the processing-time timers, sinks for where outputs go, job for the entry
point (``fleet jobs submit commands``; the local launcher submits every jobs/<name>/job.py).
"""
