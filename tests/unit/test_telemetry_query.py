import datetime as dt

import pytest

from fleet.telemetry.query import (
    DAY_MS,
    MINUTE_MS,
    Bucket,
    Cursor,
    QueryError,
    TimeRange,
    buckets_from_points,
    check_bucket_count,
    check_limit,
    day_of,
    hot_horizon_day,
    parse_bucket,
    parse_functions,
    parse_metrics,
    parse_time,
    rebucket,
    split_hot_cold,
)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize("value, expected", [
    ("1700000000000", T0),
    ("2023-11-14T22:13:20Z", T0),
    ("2023-11-14T22:13:20+00:00", T0),
    ("2023-11-14T23:13:20+01:00", T0),
    ("2023-11-14T22:13:20", T0),  # naive = UTC
    (None, None), ("", None),
])
def test_parse_time(value, expected):
    assert parse_time(value, "from") == expected


def test_parse_time_names_the_parameter():
    with pytest.raises(QueryError, match="'to' must be epoch milliseconds or an ISO 8601 time"):
        parse_time("yesterday", "to")


def test_range_defaults_to_the_last_span_before_now():
    assert TimeRange.from_params(None, None, now_ms=T0, default_span_ms=1000, max_days=1) == TimeRange(T0 - 1000, T0)


@pytest.mark.parametrize("start, end, message", [
    (str(T0), str(T0), "'from' must be earlier than 'to'"),
    (str(T0 + 1), str(T0), "'from' must be earlier than 'to'"),
    ("-5", str(T0), "before 1970"),
    (str(T0 - 32 * DAY_MS), str(T0), "at most 31 days"),
])
def test_bad_ranges_are_refused_with_the_bound(start, end, message):
    with pytest.raises(QueryError, match=message):
        TimeRange.from_params(start, end, now_ms=T0, default_span_ms=1000, max_days=31)


def test_days_newest_first_spans_partial_days():
    day = dt.date(2024, 3, 1)
    start = int(dt.datetime(2024, 2, 28, 23, tzinfo=dt.UTC).timestamp() * 1000)
    end = int(dt.datetime(2024, 3, 1, 0, 0, tzinfo=dt.UTC).timestamp() * 1000) + 1
    assert TimeRange(start, end).days_newest_first() == [day, dt.date(2024, 2, 29), dt.date(2024, 2, 28)]
    # An exclusive end at midnight does not touch the next day.
    assert TimeRange(start, end - 1).days_newest_first() == [dt.date(2024, 2, 29), dt.date(2024, 2, 28)]


def test_hot_horizon_excludes_the_day_whose_start_has_expired():
    now = int(dt.datetime(2024, 3, 31, 12, tzinfo=dt.UTC).timestamp() * 1000)
    horizon = hot_horizon_day(now, 30)
    assert horizon == dt.date(2024, 3, 2)  # 2024-03-01 00:00..12:00 already expired
    hot, cold = split_hot_cold([dt.date(2024, 3, 3), dt.date(2024, 3, 2), dt.date(2024, 3, 1)], horizon)
    assert hot == [dt.date(2024, 3, 3), dt.date(2024, 3, 2)] and cold == [dt.date(2024, 3, 1)]


def test_cursor_round_trip_and_garbage():
    assert Cursor.decode(Cursor(T0, 42).encode()) == Cursor(T0, 42)
    assert Cursor.decode(None) is None
    with pytest.raises(QueryError, match="page_token"):
        Cursor.decode("not-a-token!")


@pytest.mark.parametrize("limit, ok", [(1, True), (1000, True), (0, False), (1001, False)])
def test_limit_bounds(limit, ok):
    if ok:
        assert check_limit(limit) == limit
    else:
        with pytest.raises(QueryError, match="between 1 and 1000"):
            check_limit(limit)


def test_metrics_and_functions_parsing():
    assert parse_metrics("a, b,,") == frozenset({"a", "b"})
    assert parse_metrics(None) is None
    assert parse_functions(None) == ("avg", "min", "max", "count")
    with pytest.raises(QueryError, match="'fn'"):
        parse_functions("avg,median")
    assert parse_bucket("5m") == 5 * MINUTE_MS
    with pytest.raises(QueryError, match="one of 1m, 5m, 1h, 1d"):
        parse_bucket("2m")


def test_bucket_count_bound():
    check_bucket_count(TimeRange(0, 20_000 * MINUTE_MS), MINUTE_MS)
    with pytest.raises(QueryError, match="20001 buckets requested; at most 20000"):
        check_bucket_count(TimeRange(0, 20_001 * MINUTE_MS), MINUTE_MS)


def test_rebucket_merges_minutes_hand_computed():
    # Minutes 0..5 of an hour: values min/max/sum/count chosen by hand.
    minutes = [
        Bucket(0 * MINUTE_MS, 1.0, 3.0, 4.0, 2),
        Bucket(1 * MINUTE_MS, 0.5, 2.0, 2.5, 2),
        Bucket(4 * MINUTE_MS, 5.0, 5.0, 5.0, 1),
        Bucket(5 * MINUTE_MS, 7.0, 9.0, 16.0, 2),
    ]
    merged = rebucket(minutes, 5 * MINUTE_MS)
    assert merged == [Bucket(0, 0.5, 5.0, 11.5, 5), Bucket(5 * MINUTE_MS, 7.0, 9.0, 16.0, 2)]
    assert merged[0].avg == pytest.approx(2.3)
    assert merged[0].value("count") == 5


def test_buckets_from_points():
    pts = [(10, 2.0), (MINUTE_MS - 1, 4.0), (MINUTE_MS, 10.0)]
    assert buckets_from_points(pts, MINUTE_MS) == [Bucket(0, 2.0, 4.0, 6.0, 2), Bucket(MINUTE_MS, 10.0, 10.0, 10.0, 1)]


def test_day_of_is_utc():
    assert day_of(T0) == dt.date(2023, 11, 14)


def test_a_merged_average_stays_inside_min_and_max():
    merged = rebucket([Bucket(0, 0.7, 0.7, 0.7, 1), Bucket(60_000, 0.7, 0.7, 0.7, 1), Bucket(120_000, 0.7, 0.7, 0.7, 1)],
                      300_000)
    assert merged[0].sum != 2.1 and merged[0].value("avg") == 0.7
