"""fleet.infra.cql_values: timestamps between the Cassandra driver's datetimes and epoch milliseconds."""

from __future__ import annotations

import datetime as dt

from fleet.infra.cql_values import epoch_ms, from_epoch_ms


def test_from_epoch_ms_is_exact_aware_utc_and_epoch_ms_inverts_it():
    for ms in (0, 1, 1_717_156_800_123, 253_402_300_799_999):  # up to 9999-12-31T23:59:59.999Z
        at = from_epoch_ms(ms)
        assert at.tzinfo is dt.UTC and at.microsecond % 1000 == 0
        assert epoch_ms(at) == ms
        assert epoch_ms(at.replace(tzinfo=None)) == ms  # as the driver returns it: naive UTC
    assert from_epoch_ms(1_717_156_800_123) == dt.datetime(2024, 5, 31, 12, 0, 0, 123_000, tzinfo=dt.UTC)
