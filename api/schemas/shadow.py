"""/v1/devices/{device_id}/shadow, /shadows, /shadow/history and /v1/shadow-requests bodies.

Shadow documents are shown as the device sees them on ``shadow/document`` (fleet.shadow.domain
``ShadowDocument.to_json``): times in epoch milliseconds, like the per-field metadata.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, ErrorOut, RequestModel, ResponseModel
from fleet.shadow.domain import ShadowChange, ShadowDocument
from fleet.shadow.query import Connectivity, ShadowSummary

# -- requests ------------------------------------------------------------------------------


class DesiredPatch(RequestModel):
    desired: dict[str, Any] | None = Field(
        description="a JSON merge patch of the desired state: objects merge, null deletes a field, "
                    "arrays and other values replace; null clears the whole section")
    client_token: str | None = Field(None, description="echoed to the device on shadow/accepted and kept in the history")


# -- responses -----------------------------------------------------------------------------


class ShadowState(ResponseModel):
    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any] = Field(description="every desired field that differs from reported")


class ShadowOut(ResponseModel):
    device_id: str
    name: str = Field(description='"" for the classic (unnamed) shadow')
    version: int
    state: ShadowState
    metadata: dict[str, Any] = Field(description="per section, the tree of the state with each leaf's last "
                                                 "change time (epoch ms)")
    updated_at: int | None = Field(None, description="epoch ms of the last accepted change")
    connectivity: ConnectivityOut | None = Field(
        None, description="GET only: the device's connection as its status and last-will messages tell it "
                          "(also on GET /v1/devices/{id}); null when never seen")

    @classmethod
    def of(cls, doc: ShadowDocument, connectivity: Connectivity | None = None) -> ShadowOut:
        out = cls.of_json(doc.to_json())
        if connectivity is not None:
            out.connectivity = ConnectivityOut.of(connectivity)
        return out

    @classmethod
    def of_json(cls, doc: dict[str, Any]) -> ShadowOut:
        return cls.model_validate(doc)


class ShadowName(ResponseModel):
    name: str
    version: int
    updated_at: int | None

    @classmethod
    def of(cls, s: ShadowSummary) -> ShadowName:
        return cls(name=s.name, version=s.version, updated_at=s.updated_at)


class ShadowList(ResponseModel):
    device_id: str
    items: list[ShadowName]


class ShadowVersion(ResponseModel):
    version: int
    ts: int = Field(description="epoch ms the change was accepted")
    source_kind: str = Field(description="device or operator")
    actor: str = Field(description="the device id, or the name of the operator's API key")
    client_token: str | None = None
    patch: dict[str, Any] = Field(description="what the change applied, per section (deleted fields as null)")
    desired: dict[str, Any]
    reported: dict[str, Any]

    @classmethod
    def of(cls, c: ShadowChange) -> ShadowVersion:
        return cls(version=c.version, ts=c.ts, source_kind=c.source_kind, actor=c.actor, client_token=c.client_token,
                   patch=c.patch, desired=c.desired, reported=c.reported)


class ShadowHistoryPage(ResponseModel):
    device_id: str
    name: str
    items: list[ShadowVersion] = Field(description="newest first")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)


class ShadowRejected(ErrorOut):
    """The shadow job (or the API's own check) refused the change; nothing changed."""

    code: str = Field(description="the rejection code (version_conflict, state_too_large, rate_limited, ...)")
    version: int | None = Field(None, description="the shadow's current version, when known (a 409 names it)")


class ShadowPending(ResponseModel):
    """202: the verdict did not come within the bound; poll ``status_url``."""

    request_id: str
    status_url: str


class ShadowRequestOut(ResponseModel):
    request_id: str
    device_id: str
    name: str
    state: Literal["pending", "accepted", "rejected", "failed"] = Field(
        description="failed: Kafka did not take the request (nothing changed)")
    status: int | None = Field(default=None, description="the HTTP status the PATCH would have answered with")
    code: str | None = None
    message: str | None = None
    version: int | None = None
    document: ShadowOut | None = None


class ConnectivityOut(ResponseModel):
    connected: bool | None
    connected_since: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    disconnect_reason: str | None = None
    firmware_version: str | None = Field(None, description="as the device last reported it in its status")

    @classmethod
    def of(cls, c: Connectivity) -> ConnectivityOut:
        return cls(connected=c.connected, connected_since=_time(c.connected_since), last_seen=_time(c.last_seen),
                   disconnect_reason=c.disconnect_reason, firmware_version=c.firmware_version)


def _time(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


ShadowOut.model_rebuild()  # ConnectivityOut is defined after it
