"""/v1/devices/{device_id}/command(s) and /v1/commands bodies.

Commands are shown as fleet.commands.domain.command_json stores them: times in epoch
milliseconds, every transition with its time and reason.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api.schemas.base import NEXT_PAGE_TOKEN, ErrorOut, RequestModel, ResponseModel

# -- requests ------------------------------------------------------------------------------


class _CommandBody(RequestModel):
    name: str = Field(description="the command, e.g. reboot or set_config ([A-Za-z][A-Za-z0-9_.-]{0,63})")
    params: dict[str, Any] = Field(default_factory=dict, description="a JSON object, at most 8 KiB and 6 levels")
    timeout_s: float = Field(30, description="how long the device has to answer once the command is sent (1-3600 s)")


class CommandIn(_CommandBody):
    ttl_s: float = Field(3600, description="how long the command may wait for an offline device (0: only if online "
                                           "now; at most 7 days)")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128,
        description="the same key with the same body is the same command (never run twice); with another body, 409. "
                    "Kept one day per device")


# -- responses -----------------------------------------------------------------------------


class TransitionOut(ResponseModel):
    from_state: str | None = Field(alias="from", description="null for the creation")
    to: str
    ts: int = Field(description="epoch ms")
    reason: str


class LateResultOut(ResponseModel):
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    ts: int


class CommandOut(ResponseModel):
    command_id: str
    device_id: str
    name: str
    params: dict[str, Any]
    state: str = Field(description="QUEUED, SENT, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, EXPIRED, CANCELED")
    final: bool
    timeout_ms: int
    expires_at: int = Field(description="epoch ms after which a queued command is EXPIRED, never sent")
    created_by: str
    created_at: int
    updated_at: int
    sent_at: int | None = None
    deadline: int | None = Field(None, description="epoch ms by which the device must answer, while SENT/IN_PROGRESS")
    result: dict[str, Any] | None = None
    error: str | None = None
    late_result: LateResultOut | None = Field(None, description="what the device answered after TIMED_OUT, EXPIRED "
                                                                "or CANCELED (the state stays)")
    history: list[TransitionOut]
    batch_id: str | None = Field(None, description="the bulk command (POST /v1/command-batches) it is part of")

    model_config = {"populate_by_name": True}

    @classmethod
    def of(cls, command: dict[str, Any]) -> CommandOut:
        from fleet.commands.domain import State

        history = [TransitionOut.model_validate({k: v for k, v in t.items() if k != "command_id"})
                   for t in command.get("history", [])]
        fields = {k: command.get(k) for k in ("command_id", "device_id", "name", "params", "state", "timeout_ms",
                                              "expires_at", "created_by", "created_at", "updated_at", "sent_at",
                                              "deadline", "result", "error", "late_result", "batch_id")}
        return cls.model_validate({**fields, "final": State(command["state"]).final, "history": history})


class CommandAccepted(ResponseModel):
    """202: the command is on its way; poll ``status_url`` (or wait with ``?wait=``)."""

    command_id: str
    status_url: str
    state: str | None = Field(None, description="the last state known when answering (null if the job had not "
                                                "answered yet)")


class CommandPage(ResponseModel):
    device_id: str
    items: list[CommandOut] = Field(description="newest first")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)


class CommandRejected(ErrorOut):
    """The command (or its cancellation) was refused; nothing changed."""

    code: str = Field(description="invalid_command, params_too_large, queue_full, command_id_conflict, "
                                  "idempotency_conflict, not_cancelable, kafka_unavailable")


# -- bulk commands -------------------------------------------------------------------------


class BatchTargetIn(RequestModel):
    """Either ``device_ids`` or at least one filter (the registry's, as GET /v1/devices takes them)."""

    device_ids: list[str] | None = Field(None, description="explicit devices (at most 10,000; repeats dropped); "
                                                           "unknown or invisible ones are skipped and counted")
    group: str | None = Field(None, description="devices in this group")
    type: str | None = Field(None, description="devices of this type")
    status: Literal["active", "disabled", "revoked"] | None = Field(None, description="devices in this status")
    metadata: dict[str, str] | None = Field(None, description="devices whose metadata has all these values")


class CommandBatchIn(_CommandBody):
    ttl_s: float = Field(3600, description="how long each device's command may wait for it while offline, from the "
                                           "batch's creation (at most 7 days)")
    target: BatchTargetIn


class CommandBatchAccepted(ResponseModel):
    """202: the batch is fanning out; poll ``status_url``."""

    batch_id: str
    status_url: str


class CommandBatchOut(ResponseModel):
    batch_id: str
    name: str
    params: dict[str, Any]
    timeout_ms: int
    ttl_ms: int
    target: dict[str, Any]
    created_by: str
    created_at: int
    state: str = Field(description="submitting, submitted (every command handed to Kafka), failed (see error), "
                                   "interrupted (its API process stopped while submitting), canceled (POST "
                                   ".../cancel: no more devices submitted, every member not final canceled)")
    error: str | None = None
    targeted: int = Field(description="devices the target selected")
    submitted: int = Field(description="commands submitted so far")
    skipped: int = Field(description="listed device ids that do not exist or this key may not see")
    skipped_sample: list[str] = Field(description="the first 100 of them")
    counts: dict[str, int] = Field(description="devices per command state (QUEUED ... CANCELED, and REFUSED when the "
                                               "device's queue was full)")
    final: int = Field(description="devices whose command is final (REFUSED included)")
    pending: int = Field(description="submitted commands not final yet")
    done: bool = Field(description="the fan-out is over (submitted, or stopped by a cancellation) and every "
                                   "submitted command is final")
    canceled_at: int | None = Field(None, description="epoch ms of the cancellation (null: not canceled)")
    canceled_by: str | None = Field(None, description="the name of the API key that canceled it")


class BatchMemberOut(ResponseModel):
    device_id: str
    command_id: str
    state: str
    reason: str
    updated_at: int


class BatchMemberPage(ResponseModel):
    batch_id: str
    items: list[BatchMemberOut] = Field(description="in device-id order")
    next_page_token: str | None = Field(None, description=NEXT_PAGE_TOKEN)
