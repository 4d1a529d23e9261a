"""Bring parts of the real local stack up for a test session, and down again at its end."""

from __future__ import annotations

import os
from collections.abc import Iterator

from fleet.config import Settings
from tests.support import require

IN_CI = require.in_ci()


def running(settings: Settings, names: list[str]) -> Iterator[Settings]:
    """Generator for a session fixture: reuses healthy parts, starts the others with the
    project's launcher and stops only those at the end (unless FLEET_TEST_KEEP_STACK=1).
    Skips when they cannot start on a developer machine; under CI=true that is a failure."""
    from devtools.stack import launcher
    from fleet.infra.errors import InfraError

    already = {row["name"] for row in launcher.status(settings) if row["state"] == "healthy"}
    try:
        launcher.up(settings, names)
    except (InfraError, ImportError) as exc:
        # Stop what this attempt did start, so a failed start leaves no stray services behind.
        _stop(settings, [n for n in names if n not in already])
        require.missing(f"{', '.join(names)} did not start: no local stack ({exc})")
    yield settings
    if os.environ.get("FLEET_TEST_KEEP_STACK") != "1":
        _stop(settings, [n for n in names if n not in already])


def _stop(settings: Settings, names: list[str]) -> None:
    """Stop exactly ``names``: the launcher reads an empty list as "everything", which would take
    down a developer's stack that was already running before the tests."""
    from devtools.stack import launcher

    if names:
        launcher.down(settings, names)
