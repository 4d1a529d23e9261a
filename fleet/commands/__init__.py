"""Remote commands (direct-method style request/response): the command job's lifecycle rules."""
