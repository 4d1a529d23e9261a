"""Pipeline tests: a job's build() on in-memory data in a local Flink (thread mode, parallelism 2)."""

from __future__ import annotations

import os

import pytest

from tests.support import require


@pytest.fixture(scope="session", autouse=True)
def _embedded_python_path():
    # The local cluster's JVM (started by the first StreamExecutionEnvironment) inherits these.
    # Thread mode embeds the base interpreter, which does not see the virtualenv by itself.
    require.module("pyflink", "pipeline tests need the [flink] extra")
    from devtools.stack.flink import PROJECT_ROOT, prepare_lib, pyflink_home, python_path
    from fleet.config import Settings

    # The cluster's lib/ (pip runtime + connectors + java/flink-fleet) for the local JVM too, so
    # the job's Java parts (keying, event time, sinks) are the ones the cluster runs.
    # (FLINK_HOME must be set too, or PyFlink resets FLINK_LIB_DIR to the package's own lib.)
    os.environ["FLINK_HOME"] = str(pyflink_home())
    os.environ["FLINK_LIB_DIR"] = str(prepare_lib(Settings.from_env()))
    os.environ["PYTHONPATH"] = python_path(os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                        os.environ.get("PYTHONPATH")])))
    yield
