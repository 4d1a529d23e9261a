"""The one rule for missing prerequisites: skip on a developer machine, fail under CI=true."""

from __future__ import annotations

import pytest

from tests.support import require


def test_a_missing_service_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require.missing("no broker")


def test_a_missing_service_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nothing may skip"):
        require.missing("no broker")


def test_a_missing_module_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz"):
        require.module("no_such_module_xyz")


def test_a_present_module_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require.module("json").dumps(1) == "1"
