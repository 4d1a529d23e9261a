"""Pipeline tests: a job's build() on in-memory data in a local Flink (thread mode, parallelism 2)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _embedded_python_path():
    # Thread mode embeds the base interpreter, which does not see the virtualenv; the local
    # cluster's JVM (started by the first StreamExecutionEnvironment) inherits this variable.
    pytest.importorskip("pyflink")
    from fleet.stack.flink import PROJECT_ROOT, python_path

    os.environ["PYTHONPATH"] = python_path(os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                        os.environ.get("PYTHONPATH")])))
    yield
