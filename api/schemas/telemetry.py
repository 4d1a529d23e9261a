"""/v1/devices/{device_id}/telemetry bodies and the enumerated query values."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from api.schemas.base import ResponseModel

# -- query values --------------------------------------------------------------------------

# The domain's tables (fleet.telemetry.query BUCKETS_MS, AGG_FUNCTIONS) as enums, so OpenAPI lists
# them; tests/unit/test_api_app.py checks that they stay equal.


class BucketSize(enum.StrEnum):
    """Aggregation bucket width."""

    ONE_MINUTE = "1m"
    FIVE_MINUTES = "5m"
    ONE_HOUR = "1h"
    ONE_DAY = "1d"


class AggFunction(enum.StrEnum):
    """Aggregate function over a bucket."""

    AVG = "avg"
    MIN = "min"
    MAX = "max"
    COUNT = "count"
    SUM = "sum"


# -- responses -----------------------------------------------------------------------------


class PointOut(ResponseModel):
    ts: int = Field(description="device time, epoch ms")
    seq: int
    ingest_ts: int | None = Field(None, description="when the bridge received it, epoch ms")
    metrics: dict[str, float]
    attrs: dict[str, Any] | None = None


class PointsPage(ResponseModel):
    device_id: str
    items: list[PointOut] = Field(description="newest first")
    next_page_token: str | None = Field(None, description="pass as page_token for the next (older) page; "
                                                          "null on the last page")


class BucketOut(ResponseModel):
    start: int = Field(description="bucket start, epoch ms (UTC-aligned)")
    values: dict[str, float | int | None]


class Aggregate(ResponseModel):
    device_id: str
    metric: str
    bucket: str
    functions: list[str]
    buckets: list[BucketOut] = Field(description="oldest first; buckets without data are omitted")


class Gap(ResponseModel):
    first_seq: int
    last_seq: int
    missing: int
    after_ts: int | None = None
    before_ts: int | None = None
    status: str = Field(description="open: may still arrive; lost: can no longer arrive; "
                                    "filled: arrived late after all")


class GapReport(ResponseModel):
    device_id: str
    received: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = Field(0, description="records that never arrived (sum of lost gaps)")
    max_seq: int | None = None
    last_ts: int | None = None
    complete: bool = Field(description="true when nothing the device sent is missing or pending")
    gaps: list[Gap]
