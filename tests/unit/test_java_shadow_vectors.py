"""The shadow job's per-record vectors (tests/vectors/shadow_job) still hold for the Python core
(jobs.shadow.logic): they are what the Java core's ShadowLogicVectorsTest replays (run by
tests/unit/test_java_core_vectors.py with the rest of java/flink-fleet's JUnit suite), so a rule
changed on one side only fails one of the two."""

from __future__ import annotations

import json

import pytest

from tests.vectors import shadow_job_replay

VECTORS = shadow_job_replay.vector_files()


def test_the_job_vectors_are_there():
    assert len(VECTORS) >= 4


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_job_vector(path):
    vector = json.loads(path.read_text())
    for index, (step, output) in enumerate(zip(vector["steps"], shadow_job_replay.run(vector["steps"]), strict=True)):
        assert output == step["expect"], f"{vector['name']} step {index}: {step['raw']}"


def test_the_scenarios_are_the_files():
    assert sorted(p.stem for p in VECTORS) == sorted(shadow_job_replay.SCENARIOS)
