"""One place that decides whether a missing prerequisite may skip a test.

On a developer machine a missing *service* (a stack that is not running) may skip; under CI=true
nothing may skip: every missing prerequisite is a failure, so a green CI run means it all ran.
"""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip locally, fail under CI=true. Never returns."""
    if in_ci():
        pytest.fail(f"{reason} (under CI=true nothing may skip)", pytrace=False)
    pytest.skip(reason)


def module(name: str, why: str = ""):
    """``importorskip`` that is a failure under CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not importable{': ' + why if why else ''} ({exc})")
