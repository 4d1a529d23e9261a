import pytest

from api.audit import outcome_of


@pytest.mark.parametrize("status, outcome", [
    (200, "success"), (201, "success"), (204, "success"), (400, "rejected"), (401, "denied"), (403, "denied"),
    (404, "rejected"), (409, "rejected"), (422, "rejected"), (500, "error"), (503, "error"),
])
def test_outcomes(status, outcome):
    assert outcome_of(status) == outcome
