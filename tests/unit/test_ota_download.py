"""The download gate and ranges as plain Python (fleet/ota/download.py); the route: test_api_ota_download.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fleet.infra.cassandra import StoreUnavailable
from fleet.ota import download_urls
from fleet.ota.catalog import FirmwareRecord
from fleet.ota.download import (
    FINAL_EXECUTION_STATES,
    ByteRange,
    CassandraAssignments,
    DownloadGate,
    DownloadRefused,
    RangeNotSatisfiable,
    byte_range,
    if_range_allows,
)

KEY = bytes(32)
NOW = 1_700_000_000
RECORD = FirmwareRecord("fw1", "thermo", "1.0", "ab" * 32, 1000, b"s" * 64, "k", "", 0, "alice")


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 10, None),
    ("bytes=0-9", 10, ByteRange(0, 10)),
    ("bytes=2-4", 10, ByteRange(2, 5)),
    ("bytes=4-4", 10, ByteRange(4, 5)),
    ("bytes=4-", 10, ByteRange(4, 10)),
    ("bytes=4-99", 10, ByteRange(4, 10)),  # the end is clamped
    ("bytes=-3", 10, ByteRange(7, 10)),
    ("bytes=-30", 10, ByteRange(0, 10)),
    ("BYTES = 1 - 2", 10, ByteRange(1, 3)),
    # Ignored (the whole image): several ranges, another unit, malformed, last < first.
    ("bytes=0-1,4-5", 10, None),
    ("items=0-1", 10, None),
    ("bytes=", 10, None),
    ("bytes=-", 10, None),
    ("bytes=a-b", 10, None),
    ("bytes 0-1", 10, None),
    ("bytes=5-4", 10, None),
    ("bytes=+1-2", 10, None),
])
def test_byte_range(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10),
                                              ("bytes=0-", 0), ("bytes=-1", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)


def test_content_range_and_if_range():
    assert ByteRange(7, 10).content_range(10) == "bytes 7-9/10"
    assert if_range_allows(None, '"x"') and if_range_allows(' "x" ', '"x"')
    assert not if_range_allows('W/"x"', '"x"') and not if_range_allows("Wed, 21 Oct 2015 07:28:00 GMT", '"x"')


class Assignments:
    def __init__(self, firmware=None, executions=None):
        self.firmware = firmware if firmware is not None else {"dep1": "fw1"}
        self.executions = executions if executions is not None else {("dep1", "d1"): "NOTIFIED"}

    def firmware_id(self, deployment_id):
        return self.firmware.get(deployment_id)

    def execution_state(self, deployment_id, device_id):
        return self.executions.get((deployment_id, device_id))


def gate(assignments=None, records=None):
    records = {"fw1": RECORD} if records is None else records
    return DownloadGate(KEY, assignments or Assignments(), records.get, clock=lambda: NOW)


def sig(dep="dep1", device="d1", fw="fw1", exp=NOW + 60):
    return download_urls.sign(KEY, dep, device, fw, exp)


def refused(g, *args):
    with pytest.raises(DownloadRefused) as e:
        g.authorise(*args)
    return e.value.code, str(e.value)


def test_the_gate_grants_the_deployments_image_to_a_running_execution():
    for state in ("QUEUED", "NOTIFIED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "REBOOTING", "VERIFYING"):
        g = gate(Assignments(executions={("dep1", "d1"): state}))
        assert g.authorise("dep1", "d1", NOW + 60, sig()) == RECORD


def test_the_gate_refuses_with_stable_codes():
    g = gate()
    assert refused(g, "nope", "d1", NOW + 60, sig("nope"))[0] == "not_found"
    assert refused(g, "dep1", "d1", NOW + 60, sig(fw="fw2"))[0] == "bad_signature"  # signed for another image
    assert refused(g, "dep1", "d2", NOW + 60, sig())[0] == "bad_signature"  # d1's URL used by d2
    assert refused(g, "dep1", "d1", NOW, sig(exp=NOW))[0] == "expired"
    # No execution row yet (the job writes it as it sends the notice): the signed URL is the assignment.
    assert gate(Assignments(executions={})).authorise("dep1", "d1", NOW + 60, sig()).firmware_id == "fw1"
    assert refused(gate(records={}), "dep1", "d1", NOW + 60, sig())[0] == "not_found"


@pytest.mark.parametrize("state", sorted(FINAL_EXECUTION_STATES))
def test_a_final_execution_downloads_no_more(state):
    code, message = refused(gate(Assignments(executions={("dep1", "d1"): state})), "dep1", "d1", NOW + 60, sig())
    assert code == "not_assigned" and state in message


def test_final_states_are_the_contracts():
    assert FINAL_EXECUTION_STATES == {"SUCCEEDED", "FAILED", "ROLLED_BACK", "TIMED_OUT", "REJECTED", "CANCELED",
                                      "ALREADY_INSTALLED"}


class FakeSession:
    """ota_deployments, ota_executions and firmware as dicts; counts the reads."""

    def __init__(self):
        self.deployments = {"dep1": "fw1"}
        self.executions = {("dep1", "d1"): "DOWNLOADING"}
        self.reads: list[str] = []
        self.down = False

    def prepare(self, query):
        return SimpleNamespace(query=query)

    def execute(self, stmt, params):
        from cassandra import OperationTimedOut

        if self.down:
            raise OperationTimedOut("timed out")
        q = stmt.query
        self.reads.append(q.split(" FROM ")[1].split()[0])
        if "FROM ota_deployments" in q:
            rows = [SimpleNamespace(firmware_id=self.deployments[params[0]])] if params[0] in self.deployments else []
        elif "FROM ota_executions" in q:
            rows = [SimpleNamespace(state=self.executions[params])] if params in self.executions else []
        else:
            assert "FROM firmware WHERE firmware_id = ?" in q
            rows = [SimpleNamespace(firmware_id="fw1", device_type="thermo", version="1.0", sha256="ab" * 32, size=1000,
                                    signature=b"s" * 64, signer="k", release_notes="", created_at=None,
                                    created_by="alice")] if params[0] == "fw1" else []
        return SimpleNamespace(one=lambda: rows[0] if rows else None)


def test_cassandra_assignments_cache_what_never_changes_and_read_the_state_each_time():
    session = FakeSession()
    a = CassandraAssignments(session)
    g = DownloadGate(KEY, a, a.record, clock=lambda: NOW)
    for _ in range(3):
        assert g.authorise("dep1", "d1", NOW + 60, sig()).sha256 == "ab" * 32
    assert session.reads.count("ota_deployments") == 1 and session.reads.count("firmware") == 1
    assert session.reads.count("ota_executions") == 3
    assert a.firmware_id("dep2") is None
    session.deployments["dep2"] = "fw1"  # a miss is not cached: the row may come a moment later
    assert a.firmware_id("dep2") == "fw1"
    session.executions[("dep1", "d1")] = "CANCELED"
    assert refused(g, "dep1", "d1", NOW + 60, sig())[0] == "not_assigned"
    session.down = True
    with pytest.raises(StoreUnavailable, match="timed out"):
        a.execution_state("dep1", "d1")
    with pytest.raises(StoreUnavailable):
        a.record("fw9")


def test_a_range_number_too_long_for_an_int64_serves_the_whole_image():
    from fleet.ota.download import byte_range

    assert byte_range("bytes=" + "9" * 5000 + "-", 10) is None
    assert byte_range("bytes=-" + "9" * 20, 10) is None
