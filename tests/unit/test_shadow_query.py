"""fleet.shadow.query on a fake Cassandra session: rows as the shadow job writes them -> the domain's objects."""

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from fleet.shadow.domain import ShadowDocument
from fleet.shadow.query import Connectivity, HistoryCursor, ShadowReader, ShadowSummary

T0 = dt.datetime(2024, 5, 31, 12, 0, tzinfo=dt.UTC)
T0_MS = 1_717_156_800_000


class Rows(list):
    def one(self):
        return self[0] if self else None


class Future:
    def __init__(self, rows):
        self.rows = rows

    def result(self):
        return self.rows


class FakeSession:
    """Answers the reader's four prepared statements from in-memory tables, as Cassandra would."""

    def __init__(self):
        self.shadows = {}        # (device, name) -> row
        self.history = {}        # (device, name) -> [row]
        self.connectivity = {}   # device -> row
        self.executed = []

    def prepare(self, query):
        return query

    def execute(self, query, params):
        self.executed.append((query, params))
        if query.startswith("SELECT device_id, name, version") and "FROM shadows" in query:
            row = self.shadows.get(params)
            return Rows([row] if row else [])
        if "FROM shadows WHERE device_id = ?" in query:
            return Rows(r for (d, _), r in sorted(self.shadows.items()) if d == params[0])
        if "FROM shadow_history" in query:
            device, name, below, limit = params
            rows = sorted((r for r in self.history.get((device, name), []) if r.version < below),
                          key=lambda r: -r.version)
            return Rows(rows[:limit])
        if "FROM device_connectivity" in query:
            row = self.connectivity.get(params[0])
            return Rows([row] if row else [])
        raise AssertionError(query)

    def execute_async(self, query, params):
        return Future(self.execute(query, params))

    def put_shadow(self, device, name, version, desired, reported, metadata, updated_at=T0):
        self.shadows[(device, name)] = SimpleNamespace(
            device_id=device, name=name, version=version, desired=json.dumps(desired), reported=json.dumps(reported),
            metadata=json.dumps(metadata), updated_at=updated_at.replace(tzinfo=None))  # the driver: naive UTC

    def put_change(self, device, name, version, **kw):
        row = SimpleNamespace(version=version, ts=T0.replace(tzinfo=None) + dt.timedelta(seconds=version),
                              source_kind=kw.get("source_kind", "operator"), actor=kw.get("actor", "ops"),
                              client_token=kw.get("client_token"), patch=json.dumps({"desired": {"v": version}}),
                              desired=json.dumps({"v": version}), reported=json.dumps({}))
        self.history.setdefault((device, name), []).append(row)


@pytest.fixture
def session():
    return FakeSession()


def test_a_document_comes_back_as_the_domain_document(session):
    meta = {"desired": {"fan": T0_MS}, "reported": {"fan": T0_MS - 5}}
    session.put_shadow("d1", "", 3, {"fan": "on"}, {"fan": "off"}, meta)
    doc = ShadowReader(session).document("d1", "")
    assert doc == ShadowDocument("d1", "", {"fan": "on"}, {"fan": "off"}, meta, 3, T0_MS)
    assert doc.delta == {"fan": "on"}
    assert doc.to_json()["state"] == {"desired": {"fan": "on"}, "reported": {"fan": "off"}, "delta": {"fan": "on"}}


def test_a_shadow_never_written_is_none(session):
    session.put_shadow("d1", "cfg", 1, {}, {}, {})
    reader = ShadowReader(session)
    assert reader.document("d1", "") is None and reader.document("d2", "cfg") is None
    assert reader.document("d1", "cfg").version == 1


def test_missing_metadata_sections_are_empty(session):
    session.put_shadow("d1", "", 1, {"a": 1}, {}, {"desired": {"a": T0_MS}})
    assert ShadowReader(session).document("d1", "").metadata == {"desired": {"a": T0_MS}, "reported": {}}


def test_the_shadows_of_a_device_by_name(session):
    session.put_shadow("d1", "net", 2, {}, {}, {})
    session.put_shadow("d1", "", 7, {}, {}, {})
    session.put_shadow("d2", "x", 1, {}, {}, {})
    assert ShadowReader(session).shadows("d1") == [ShadowSummary("", 7, T0_MS), ShadowSummary("net", 2, T0_MS)]


def test_history_pages_newest_first(session):
    for v in range(1, 6):
        session.put_change("d1", "", v, client_token=f"t{v}" if v == 5 else None)
    reader = ShadowReader(session)
    first, cursor = reader.history("d1", "", limit=2)
    assert [c.version for c in first] == [5, 4] and cursor == HistoryCursor(4)
    assert (first[0].client_token, first[0].source_kind, first[0].actor) == ("t5", "operator", "ops")
    assert first[0].ts == T0_MS + 5000 and first[0].patch == {"desired": {"v": 5}} and first[0].desired == {"v": 5}
    second, cursor = reader.history("d1", "", limit=2, cursor=HistoryCursor.decode(cursor.encode()))
    assert [c.version for c in second] == [3, 2] and cursor == HistoryCursor(2)
    last, cursor = reader.history("d1", "", limit=2, cursor=cursor)
    assert [c.version for c in last] == [1] and cursor is None


def test_a_full_last_page_has_no_next_token(session):
    for v in (1, 2):
        session.put_change("d1", "n", v)
    changes, cursor = ShadowReader(session).history("d1", "n", limit=2)
    assert len(changes) == 2 and cursor is None
    assert session.executed[-1][1] == ("d1", "n", 2 ** 63 - 1, 3)  # one extra row tells whether there is more


def _b64(text):
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("token", ["garbage!", HistoryCursor(5).encode()[:-1] + "*", _b64("v:0"), _b64("v:-1"),
                                   _b64("v:1e3"), _b64("x:5"), _b64("v:" + "9" * 20), "\u00e9t\u00e9"])
def test_page_tokens_this_module_did_not_issue_are_refused(token):
    with pytest.raises(ValueError):
        HistoryCursor.decode(token)


def test_page_tokens_round_trip():
    assert HistoryCursor.decode(HistoryCursor(12345).encode()) == HistoryCursor(12345)
    assert HistoryCursor.decode(None) is None and HistoryCursor.decode("") is None


def test_connectivity_of_the_devices_heard_from(session):
    session.connectivity["d1"] = SimpleNamespace(device_id="d1", connected=True, connected_since=T0.replace(tzinfo=None),
                                                 last_seen=T0.replace(tzinfo=None) + dt.timedelta(seconds=1),
                                                 disconnect_reason=None, firmware_version="1.2.0")
    session.connectivity["d2"] = SimpleNamespace(device_id="d2", connected=False, connected_since=None,
                                                 last_seen=T0.replace(tzinfo=None), disconnect_reason="connection_lost",
                                                 firmware_version=None)
    known = ShadowReader(session).connectivity(["d1", "d2", "d3", "d1"])
    assert known == {"d1": Connectivity("d1", True, T0_MS, T0_MS + 1000, None, "1.2.0"),
                     "d2": Connectivity("d2", False, None, T0_MS, "connection_lost", None)}
    reads = [p for q, p in session.executed if "device_connectivity" in q]
    assert reads == [("d1",), ("d2",), ("d3",)]  # one read per device, each once
