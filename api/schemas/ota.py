"""/v1/ota/deployments and /v1/devices/{id}/ota bodies (fleet/ota/deployments.py has the rules).

The request models give OpenAPI the shape and FastAPI the types (a wrong type is a 422); the
bounds and the defaults are the domain's (a value out of bounds is a 400 naming the field).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, RequestModel, ResponseModel
from api.schemas.commands import TransitionOut

# -- requests ------------------------------------------------------------------------------


class FilterIn(RequestModel):
    """The registry's filter (as GET /v1/devices takes it); at least one field."""

    status: Literal["active", "disabled", "revoked"] | None = Field(
        None, description="only active devices can take a deployment (the others cannot connect): 'active' or leave "
                          "it out")
    device_type: str | None = Field(None, description="must be the firmware's device type (it is implied anyway)")
    metadata: dict[str, str] | None = Field(None, description="devices whose metadata has all these values")


class TargetIn(RequestModel):
    """Exactly one of group, filter, device_ids. Only active devices of the firmware's device type
    are targeted: a group or filter leaves the others out, a listed one is a 400 naming it."""

    group: str | None = Field(None, description="the devices of this group")
    filter: FilterIn | None = Field(None, description="the devices the registry filter selects")
    device_ids: list[str] | None = Field(None, description="these devices, in this order (the first wave takes the "
                                                           "first ones); at most 10,000, repeats dropped")


class FailureThresholdIn(RequestModel):
    count: int | None = Field(None, description="abort once this many of the wave's devices failed (>= 1)")
    pct: float | None = Field(None, description="abort once this percent of the wave's decided devices failed "
                                                "(above 0, at most 100)")
    min_sample: int | None = Field(None, description="pct applies once this many devices are decided (default 1)")


class WaveIn(RequestModel):
    size: int | str = Field(description="a percent of the targets (\"10%\", rounded up, at least 1 device) or a "
                                        "device count; the last wave takes the rest")
    success_threshold_pct: float | None = Field(None, description="percent of the wave that must succeed before the "
                                                                  "next wave starts (0-100, default 100)")
    approval: bool | None = Field(None, description="once the wave met its threshold, wait (WAITING_APPROVAL) until "
                                                    "POST .../resume (default false)")
    failure_threshold: FailureThresholdIn | None = Field(
        None, description="failures (FAILED, ROLLED_BACK, TIMED_OUT, REJECTED) that abort the deployment "
                          "(default none)")


class RateIncreaseIn(RequestModel):
    factor: float = Field(description="multiply the rate by this (above 1, at most 10) ...")
    every_successes: int = Field(description="... every this many successes (>= 1)")


class RetriesIn(RequestModel):
    download: int | None = Field(None, description="retries after a failed download (0-10, default 2)")
    install: int | None = Field(None, description="retries after a failed install (0-10, default 1)")
    verify: int | None = Field(None, description="retries after a failed signature/sha256 check (0-10, default 0)")


class DevicePolicyIn(RequestModel):
    progress_timeout_ms: int | None = Field(None, description="TIMED_OUT after this long with no report from the "
                                                              "device once notified (1 s - 7 days, default 10 min)")
    timeout_ms: int | None = Field(None, description="TIMED_OUT when not final this long after the first "
                                                     "notification (1 s - 30 days, default 1 h)")
    health_window_ms: int | None = Field(None, description="after the reboot into the new version the device must "
                                                           "stay connected this long, with no further boot, to "
                                                           "succeed (0 - 1 day, default 60 s; shorter than "
                                                           "timeout_ms)")
    max_boots: int | None = Field(None, description="boots of the new image seen while verifying before it is "
                                                    "FAILED as a crash loop (1-20, default 2)")
    retries: RetriesIn | None = None


class PlanIn(RequestModel):
    waves: list[WaveIn] | None = Field(None, description="1-20 waves (default: one wave of 100%)")
    rate_per_minute: float | None = Field(None, description="devices released per minute (1-100,000, default 60)")
    rate_increase: RateIncreaseIn | None = Field(None, description="raise the rate as devices succeed (default "
                                                                   "none)")
    device: DevicePolicyIn | None = Field(None, description="per device: timeouts, health window, retries")
    rollback_on_abort: bool | None = Field(None, description="when the deployment aborts, roll the devices it "
                                                             "updated back to the version each ran before, once "
                                                             "every released device is final: a rollback deployment "
                                                             "per version the catalog holds an image of (default "
                                                             "false; docs/ota.md)")


class DeploymentIn(RequestModel):
    name: str = Field(description="for people: 1-100 characters, no control characters; need not be unique")
    firmware_id: str = Field(description="the image (POST /v1/firmware); its device_type selects the devices")
    target: TargetIn
    plan: PlanIn | None = Field(None, description="the rollout plan; every field has a default")


# -- responses -----------------------------------------------------------------------------


class WaveOut(ResponseModel):
    index: int = Field(description="0-based")
    size: int = Field(description="devices in the wave")
    released: int = Field(description="devices of the wave released so far")
    counts: dict[str, int] = Field(description="released devices per execution state, zeros included")
    succeeded: int = Field(description="SUCCEEDED + ALREADY_INSTALLED")
    failed: int = Field(description="FAILED + ROLLED_BACK + TIMED_OUT + REJECTED")
    success_threshold_pct: float
    met: bool = Field(description="the wave reached its success threshold")


class DeploymentOut(ResponseModel):
    deployment_id: str
    name: str
    firmware_id: str
    device_type: str
    version: str = Field(description="the firmware version it installs")
    state: str = Field(description="PENDING (the OTA job has not started it yet), RUNNING, PAUSED, WAITING_APPROVAL, "
                                   "SUCCEEDED, ABORTED, CANCELED (the last three are final)")
    final: bool
    reason: str = Field(description="why it is in that state (e.g. the failure threshold that aborted it)")
    created_at: int = Field(description="epoch ms")
    created_by: str = Field(description="the API key's name that created it")
    updated_at: int = Field(description="epoch ms of the last change the job wrote")
    target_count: int = Field(description="devices targeted")
    rollback_of: str | None = Field(None, description="the deployment this one rolls back")
    plan: dict[str, Any] = Field(description="the rollout plan with every default filled in")
    wave: int = Field(description="the current wave (0-based)")
    released: int = Field(description="devices released so far (each has an execution)")
    unreleased: int = Field(description="targets not released yet (no execution yet)")
    rate_per_minute: float = Field(description="the current release rate")
    counts: dict[str, int] = Field(description="released devices per execution state (QUEUED ... ALREADY_INSTALLED), "
                                               "zeros included")
    waves: list[WaveOut]
    history: list[TransitionOut] = Field(description="the deployment's state changes, oldest first")
    paused_by: str | None = None
    rollback: dict[str, Any] | None = Field(
        None, description="for an aborted deployment with rollback_on_abort: state (WAITING until every released "
                          "device is final, then STARTED), deployments (the rollback deployments, one per previous "
                          "version; each names this one in rollback_of), unavailable (updated devices whose previous "
                          "version has no image in the catalog)")


class DeploymentPage(ResponseModel):
    items: list[DeploymentOut] = Field(description="in storage order")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)


class ExecutionOut(ResponseModel):
    deployment_id: str
    device_id: str
    state: str = Field(description="QUEUED, NOTIFIED, DOWNLOADING, DOWNLOADED, INSTALLING, REBOOTING, VERIFYING, "
                                   "then one of the final states SUCCEEDED, FAILED, ROLLED_BACK, TIMED_OUT, "
                                   "REJECTED, CANCELED, ALREADY_INSTALLED")
    final: bool
    wave: int
    attempt: int = Field(description="1, and +1 with each retry")
    updated_at: int = Field(description="epoch ms")
    execution: dict[str, Any] | None = Field(
        None, description="the whole execution as the OTA job keeps it: progress, error, previous_version, boots, "
                          "failures, and history (every transition with its time and reason)")


class ExecutionPage(ResponseModel):
    deployment_id: str
    items: list[ExecutionOut] = Field(description="in device-id order; released devices only")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)


class DeviceOtaPage(ResponseModel):
    device_id: str
    items: list[ExecutionOut] = Field(description="in deployment-id order")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)
