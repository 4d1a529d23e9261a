"""Bulk commands without a stack: the target rules, progress and cancellation rules
(fleet.commands.batches), the job's batch member rows (jobs.commands.logic), the stored command's
batch id (fleet.commands.domain)."""

from __future__ import annotations

import json

import pytest

from fleet.commands import batches
from fleet.commands import domain as dom
from fleet.contract.validation import kafka_schema
from jobs.commands import logic
from jobs.commands.logic import handle
from jobs.keyed_state import MemoryCell
from tests.unit.test_commands_job_logic import T0, result, status, submit

# -- target ------------------------------------------------------------------------------------

def test_a_target_is_a_list_or_a_filter_never_both_never_neither():
    assert batches.target(device_ids=["a", "b", "a"]).device_ids == ("a", "b")  # repeats dropped, in order
    assert batches.target(group="g").as_json() == {"group": "g"}
    assert batches.target(status="active", metadata={"site": "x"}).as_json() == {"status": "active",
                                                                                 "metadata": {"site": "x"}}
    for bad in ({}, {"metadata": {}}, {"device_ids": []}, {"device_ids": ["a"], "group": "g"}):
        with pytest.raises(batches.TargetError):
            batches.target(**bad)


def test_the_explicit_list_is_bounded():
    batches.target(device_ids=[f"d-{i}" for i in range(batches.MAX_DEVICE_IDS)])
    with pytest.raises(batches.TargetError, match="more than"):
        batches.target(device_ids=[f"d-{i}" for i in range(batches.MAX_DEVICE_IDS + 1)])


def test_member_command_ids_are_stable_distinct_and_valid():
    a = batches.member_command_id("b1", "d-1")
    assert a == batches.member_command_id("b1", "d-1")
    assert len({a, batches.member_command_id("b1", "d-2"), batches.member_command_id("b2", "d-1")}) == 3
    assert dom.validate(dom.CommandRequest(a, "d-1", "reboot", {}, 5000, 0, "alice", T0, "b1")) is None


# -- progress ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "submitted", "members", "heartbeat", "expect"), [
    # state, submitted, member states, heartbeat age -> (state, final, pending, done)
    ("submitted", 3, ["SUCCEEDED", "EXPIRED", "REFUSED"], 0, ("submitted", 3, 0, True)),
    ("submitted", 3, ["SUCCEEDED", "SENT"], 0, ("submitted", 1, 2, False)),  # one not answered by the job yet
    ("submitting", 2, ["SUCCEEDED", "SUCCEEDED"], 1_000, ("submitting", 2, 0, False)),  # more may come
    ("submitting", 2, ["SUCCEEDED"], batches.INTERRUPTED_AFTER_MS + 1, ("interrupted", 1, 1, False)),
    ("failed", 1, ["QUEUED"], 0, ("failed", 0, 1, False)),
])
def test_progress_counts_member_states(state, submitted, members, heartbeat, expect):
    p = batches.progress(state=state, targeted=3, submitted=submitted, skipped=1, member_states=members,
                         heartbeat_at=T0 - heartbeat, now=T0)
    assert (p.state, p.final, p.pending, p.done) == expect
    assert sum(p.counts.values()) == len(members) and set(p.counts) == set(batches.MEMBER_STATES)


@pytest.mark.parametrize(("state", "submitted", "members", "heartbeat", "expect"), [
    # a canceled batch reads canceled; done once the fan-out stopped and every submitted member is final
    ("canceled", 2, ["CANCELED", "SUCCEEDED"], 0, ("canceled", 2, 0, True)),  # the fan-out stopped at the cancel
    ("submitted", 2, ["CANCELED", "QUEUED"], 0, ("canceled", 1, 1, False)),  # a cancellation still on its way
    ("submitting", 2, ["CANCELED", "CANCELED"], 1_000, ("canceled", 2, 0, False)),  # it may submit one more chunk
    ("submitting", 1, ["CANCELED"], batches.INTERRUPTED_AFTER_MS + 1, ("canceled", 1, 0, True)),  # its API died
    ("failed", 1, ["CANCELED"], 0, ("canceled", 1, 0, True)),
])
def test_a_canceled_batch_reads_canceled(state, submitted, members, heartbeat, expect):
    p = batches.progress(state=state, targeted=3, submitted=submitted, skipped=0, member_states=members,
                         heartbeat_at=T0 - heartbeat, now=T0, canceled_at=T0 - 5)
    assert (p.state, p.final, p.pending, p.done) == expect


def test_only_members_whose_command_is_not_final_are_cancelable():
    assert [s for s in batches.MEMBER_STATES if batches.cancelable(s)] == ["QUEUED", "SENT", "IN_PROGRESS"]
    assert not batches.cancelable("nonsense")


@pytest.mark.parametrize(("state", "heartbeat", "submitted", "members", "expect"), [
    ("canceled", 0, 3, 3, True),
    ("submitted", 0, 3, 3, True),
    ("submitted", 0, 3, 2, False),  # the job has not written one member yet: it could be missed
    ("submitting", 1_000, 3, 3, False),  # the fan-out has not seen the cancel yet
    ("submitting", batches.INTERRUPTED_AFTER_MS + 1, 3, 3, True),  # its API process is gone
    ("failed", 0, 0, 0, True),
])
def test_a_cancellation_has_seen_every_member_once_settled(state, heartbeat, submitted, members, expect):
    assert batches.settled(state=state, heartbeat_at=T0 - heartbeat, now=T0, submitted=submitted,
                           members=members) is expect


# -- the job -----------------------------------------------------------------------------------

def of(handled, kind):
    return [o.value for o in handled.outputs if o.kind == kind]


def test_a_batch_command_writes_its_member_row_on_every_change():
    cell = MemoryCell()
    handle("d-1", status(True), T0, cell)
    sent = handle("d-1", submit(batch_id="b1"), T0, cell)
    [row] = of(sent, logic.BATCH_MEMBER)
    assert (row["batch_id"], row["device_id"], row["command_id"], row["state"]) == ("b1", "d-1", "c-1", "SENT")
    assert json.loads(of(sent, logic.COMMAND)[0]["command"])["batch_id"] == "b1"
    done = handle("d-1", result(), T0 + 5, cell)
    [final] = of(done, logic.BATCH_MEMBER)
    assert final["state"] == "SUCCEEDED" and final["write_ts"] > row["write_ts"]
    assert of(handle("d-2", submit(device="d-2"), T0, MemoryCell()), logic.BATCH_MEMBER) == []  # no batch, no row


def test_a_refused_batch_submission_is_a_refused_member():
    cell = MemoryCell()
    rules = dom.CommandRules(max_pending_per_device=1)
    handle("d-1", submit("c-1", batch_id="b0"), T0, cell, rules)
    refused = handle("d-1", submit("c-2", batch_id="b1"), T0, cell, rules)
    [row] = of(refused, logic.BATCH_MEMBER)
    assert (row["command_id"], row["state"], row["reason"]) == ("c-2", "REFUSED", dom.QUEUE_FULL)
    # The same member submitted again (a retried fan-out) is the same command: nothing new.
    again = handle("d-1", submit("c-1", batch_id="b0"), T0, cell, rules)
    assert again.outputs == []


def test_a_batch_id_that_is_not_a_string_is_refused_and_dead_lettered():
    out = handle("d-1", submit(batch_id=7), T0, MemoryCell())
    assert [o.kind for o in out.outputs] == [logic.DEAD_LETTER, logic.EVENT]
    assert of(out, logic.EVENT)[0]["rejection"]["status"] == 400


def test_the_request_schema_takes_a_batch_id():
    assert kafka_schema("command-request").is_valid(json.loads(submit(batch_id="b1")))
    assert not kafka_schema("command-request").is_valid(json.loads(submit(batch_id="b 1")))
