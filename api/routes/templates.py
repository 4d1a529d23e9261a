"""/v1/provisioning/templates: what a claim certificate may turn into (unscoped admins)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from api.deps import OnboardingDep, UnscopedAdmin, raise_http
from api.models import Strict
from fleet.identity.devices import RegistryError, check_name
from fleet.identity.provisioning import Template, check_template

router = APIRouter(prefix="/v1/provisioning/templates", tags=["provisioning"])


class TemplateIn(Strict):
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


class TemplateOut(BaseModel):
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


def _template(name: str, body: TemplateIn) -> Template:
    return check_template(Template(
        name=name, device_id_prefix=body.device_id_prefix, enabled=body.enabled,
        allowed_serials=frozenset(body.allowed_serials) if body.allowed_serials is not None else None,
        webhook_url=body.webhook_url, device_type=body.device_type, groups=frozenset(body.groups),
        metadata=body.metadata, description=body.description))


def _get(onboarding, name: str) -> Template:
    try:
        template = onboarding.templates.get(check_name("template name", name))
    except RegistryError:
        template = None
    if template is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"template {name!r} not found")
    return template


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TemplateOut, summary="Create a template")
def create_template(body: TemplateCreate, principal: UnscopedAdmin, onboarding: OnboardingDep,
                    request: Request) -> TemplateOut:
    request.state.audit_target = body.name
    try:
        return TemplateOut.of(onboarding.templates.create(_template(body.name, body)))
    except RegistryError as exc:
        raise_http(exc)


@router.get("", response_model=list[TemplateOut], summary="List templates")
def list_templates(principal: UnscopedAdmin, onboarding: OnboardingDep) -> list[TemplateOut]:
    return [TemplateOut.of(t) for t in onboarding.templates.list()]


@router.get("/{name}", response_model=TemplateOut, summary="One template")
def get_template(name: str, principal: UnscopedAdmin, onboarding: OnboardingDep) -> TemplateOut:
    return TemplateOut.of(_get(onboarding, name))


@router.put("/{name}", response_model=TemplateOut, summary="Replace a template")
def replace_template(name: str, body: TemplateIn, principal: UnscopedAdmin, onboarding: OnboardingDep,
                     request: Request) -> TemplateOut:
    existing = _get(onboarding, name)
    request.state.audit_target = name
    try:
        t = _template(name, body)
    except RegistryError as exc:
        raise_http(exc)
    return TemplateOut.of(onboarding.templates.put(Template(**{**t.__dict__, "created_at": existing.created_at})))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a template (its claims can no longer provision)")
def delete_template(name: str, principal: UnscopedAdmin, onboarding: OnboardingDep, request: Request) -> None:
    _get(onboarding, name)
    request.state.audit_target = name
    onboarding.templates.delete(name)
