"""The shared telemetry vectors (tests/vectors/telemetry) through the Python reference core.

The same files run through the Java logic in JUnit (tests/unit/test_java_core_vectors.py runs
it), so a rule change that is not made on both sides fails one of the two.
"""

from __future__ import annotations

import pytest

from tests.vectors.replay import load, run, vector_files

VECTORS = vector_files()


def test_the_vectors_are_there():
    assert len(VECTORS) >= 10


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path):
    vector = load(path)
    outputs = run(vector)
    for index, (step, output) in enumerate(zip(vector["steps"], outputs, strict=True)):
        assert output == step["expect"], f"{vector['name']} step {index}: {step}"
    assert len(outputs) == len(vector["steps"])
