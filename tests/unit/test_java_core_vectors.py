"""The Java telemetry and shadow logic against the same vectors as the Python reference
(tests/vectors/telemetry, tests/vectors/shadow, tests/vectors/shadow_job): runs the JUnit suite of
java/flink-fleet with Maven, so a rule changed on one side only fails here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import require

MODULE = Path(__file__).resolve().parents[2] / "java" / "flink-fleet" / "pom.xml"


def test_the_java_core_passes_the_shared_vectors(tmp_path):
    if shutil.which("mvn") is None:
        require.missing("mvn is not installed (scripts/bootstrap.sh installs maven)")
    base = ["mvn", "-q", "-B", "-f", str(MODULE), f"-Dfleet.build.dir={tmp_path / 'build'}", "test"]
    run = subprocess.run([*base[:3], "-o", *base[3:]], capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and "offline" in (run.stdout + run.stderr).lower():
        run = subprocess.run(base, capture_output=True, text=True, timeout=900)  # first run: fetch JUnit
    assert run.returncode == 0, f"JUnit vectors failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
