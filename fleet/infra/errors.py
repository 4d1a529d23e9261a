"""The error production infrastructure code raises (the dev launcher's StackError is a kind of it)."""


class InfraError(RuntimeError):
    """Infrastructure the platform needs is missing, unreachable or refused a request."""
