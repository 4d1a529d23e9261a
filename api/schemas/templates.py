"""/v1/provisioning/templates bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from api.schemas.base import RequestModel, ResponseModel
from fleet.identity.provisioning import Template

# -- requests ------------------------------------------------------------------------------


class TemplateIn(RequestModel):
    description: str | None = Field(None, max_length=1000)
    enabled: bool = True
    allowed_serials: list[str] | None = Field(None, description="serials that may provision; omit to rely on the webhook")
    webhook_url: str | None = Field(None, description="pre-provisioning hook: POSTed the request, answers "
                                                      '{"allow": true|false, "groups"?, "metadata"?}')
    device_id_prefix: str = Field("", description="device id = prefix + serial; the CSR's CN must equal it")
    device_type: str | None = None
    groups: list[str] = []
    metadata: dict[str, str] = {}


class TemplateCreate(TemplateIn):
    name: str


# -- responses -----------------------------------------------------------------------------


class TemplateOut(ResponseModel):
    name: str
    description: str | None
    enabled: bool
    allowed_serials: list[str] | None
    webhook_url: str | None
    device_id_prefix: str
    device_type: str | None
    groups: list[str]
    metadata: dict[str, str]
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @classmethod
    def of(cls, t: Template) -> TemplateOut:
        return cls(name=t.name, description=t.description, enabled=t.enabled,
                   allowed_serials=sorted(t.allowed_serials) if t.allowed_serials is not None else None,
                   webhook_url=t.webhook_url, device_id_prefix=t.device_id_prefix, device_type=t.device_type,
                   groups=sorted(t.groups), metadata=dict(t.metadata), created_at=t.created_at,
                   updated_at=t.updated_at)
