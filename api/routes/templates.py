"""/v1/provisioning/templates: what a claim certificate may turn into (unscoped admins)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import OnboardingDep, UnscopedAdmin
from api.errors import responses
from api.schemas.templates import TemplateCreate, TemplateIn, TemplateOut
from fleet.identity.devices import RegistryError, check_name
from fleet.identity.provisioning import Template, check_template

router = APIRouter(prefix="/v1/provisioning/templates", tags=["provisioning"], responses=responses(403))


def _template(name: str, body: TemplateIn) -> Template:
    return check_template(Template(
        name=name, device_id_prefix=body.device_id_prefix, enabled=body.enabled,
        allowed_serials=frozenset(body.allowed_serials) if body.allowed_serials is not None else None,
        webhook_url=body.webhook_url, device_type=body.device_type, groups=frozenset(body.groups),
        metadata=body.metadata, description=body.description))


def _get(onboarding, name: str) -> Template:
    try:
        template = onboarding.templates.get(check_name("template name", name))
    except RegistryError:  # a name that is not well-formed cannot exist: not found, like any other
        template = None
    if template is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"template {name!r} not found")
    return template


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TemplateOut, summary="Create a template",
             responses=responses(400, 409, 413, 422))
def create_template(body: TemplateCreate, principal: UnscopedAdmin, onboarding: OnboardingDep,
                    request: Request) -> TemplateOut:
    request.state.audit_target = body.name
    return TemplateOut.of(onboarding.templates.create(_template(body.name, body)))


@router.get("", response_model=list[TemplateOut], summary="List templates")
def list_templates(principal: UnscopedAdmin, onboarding: OnboardingDep) -> list[TemplateOut]:
    return [TemplateOut.of(t) for t in onboarding.templates.list()]


@router.get("/{name}", response_model=TemplateOut, summary="One template", responses=responses(404))
def get_template(name: str, principal: UnscopedAdmin, onboarding: OnboardingDep) -> TemplateOut:
    return TemplateOut.of(_get(onboarding, name))


@router.put("/{name}", response_model=TemplateOut, summary="Replace a template", responses=responses(400, 404, 413, 422))
def replace_template(name: str, body: TemplateIn, principal: UnscopedAdmin, onboarding: OnboardingDep,
                     request: Request) -> TemplateOut:
    existing = _get(onboarding, name)
    request.state.audit_target = name
    t = _template(name, body)
    return TemplateOut.of(onboarding.templates.put(Template(**{**t.__dict__, "created_at": existing.created_at})))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a template (its claims can no longer provision)", responses=responses(404))
def delete_template(name: str, principal: UnscopedAdmin, onboarding: OnboardingDep, request: Request) -> None:
    _get(onboarding, name)
    request.state.audit_target = name
    onboarding.templates.delete(name)
