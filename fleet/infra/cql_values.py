"""Values as the Cassandra driver returns them, made what the stores hand out.

The driver returns ``timestamp`` columns as naive datetimes that are UTC; every store wants them
aware (or as epoch milliseconds), and binds epoch milliseconds as aware datetimes.
"""

from __future__ import annotations

import datetime as dt
from typing import overload

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """The same instant, aware in UTC (a naive value from the driver is UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@overload
def epoch_ms(value: None) -> None: ...


@overload
def epoch_ms(value: dt.datetime | int) -> int: ...


def epoch_ms(value: dt.datetime | int | None) -> int | None:
    """Epoch milliseconds of a timestamp column (or an int already in ms)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        # Exact integer arithmetic: float timestamp() * 1000 can land one millisecond low.
        return (as_utc(value) - _EPOCH) // dt.timedelta(milliseconds=1)
    return int(value)


def from_epoch_ms(ms: int) -> dt.datetime:
    """The aware UTC datetime to bind for a timestamp column, exact to the millisecond (epoch_ms's inverse)."""
    return _EPOCH + dt.timedelta(milliseconds=ms)
