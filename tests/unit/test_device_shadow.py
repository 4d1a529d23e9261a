"""Device-side shadow sync (device/shadow_sync.py): stale deltas, reports, documents, persistence."""

from __future__ import annotations

import json

import pytest

from device.shadow_sync import Message, ShadowSync, accept_all, parse_shadow_suffix
from device.statefile import read_json, write_json


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def delta(version: int, state: dict) -> bytes:
    return raw({"version": version, "state": state, "metadata": {}, "timestamp": 1})


def reported_of(msg: Message) -> dict:
    assert set(msg.payload) == {"state", "client_token"}
    assert set(msg.payload["state"]) == {"reported"}
    return msg.payload["state"]["reported"]


@pytest.mark.parametrize("suffix, parsed", [
    ("shadow/delta", ("", "delta")),
    ("shadow/document", ("", "document")),
    ("shadow/accepted", ("", "accepted")),
    ("shadow/rejected", ("", "rejected")),
    ("shadow/name/cfg:v1_a-b/delta", ("cfg:v1_a-b", "delta")),
    ("shadow/update", None),   # our own uplink topics are not downlink
    ("shadow/get", None),
    ("shadow/name/x/update", None),
    ("shadow/name/a b/delta", None),
    ("shadow/name//delta", None),
    ("shadow/name/x/delta/more", None),
    ("commands", None),
])
def test_parse_shadow_suffix(suffix, parsed):
    assert parse_shadow_suffix(suffix) == parsed


def test_delta_is_applied_reported_and_persisted(tmp_path):
    sync = ShadowSync(tmp_path / "shadow.json")
    out = sync.handle("", "delta", delta(3, {"led": "on", "cfg": {"rate": 5}}))
    assert len(out) == 1 and out[0].suffix == "shadow/update"
    assert reported_of(out[0]) == {"led": "on", "cfg": {"rate": 5}}
    assert sync.version("") == 3 and sync.reported("") == {"led": "on", "cfg": {"rate": 5}}
    again = ShadowSync(tmp_path / "shadow.json")  # a restart
    assert again.version("") == 3 and again.reported("") == {"led": "on", "cfg": {"rate": 5}}


def test_named_shadow_uses_its_own_topics_and_state(tmp_path):
    sync = ShadowSync(tmp_path / "s.json")
    out = sync.handle("fw", "delta", delta(1, {"v": "2.0"}))
    assert out[0].suffix == "shadow/name/fw/update"
    assert sync.reported("fw") == {"v": "2.0"} and sync.reported("") == {} and not sync.has_state("")


@pytest.mark.parametrize("held, incoming, applied", [(5, 4, False), (5, 5, False), (5, 6, True)])
def test_stale_deltas_are_dropped(held, incoming, applied):
    sync = ShadowSync()
    sync.handle("", "delta", delta(held, {"a": 1}))
    out = sync.handle("", "delta", delta(incoming, {"a": 2}))
    assert bool(out) is applied
    assert sync.reported("")["a"] == (2 if applied else 1)
    assert sync.version("") == max(held, incoming)


def test_accepted_replies_to_our_reports_do_not_advance_the_held_version():
    # The operator's delta v4 is still on its way when our own report is accepted as v5.
    sync = ShadowSync()
    sync.handle("", "delta", delta(3, {"a": 1}))
    assert sync.handle("", "accepted", raw({"version": 5, "state": {"reported": {"a": 1}}, "metadata": {},
                                            "timestamp": 1, "changed": True})) == []
    assert sync.version("") == 3
    assert reported_of(sync.handle("", "delta", delta(4, {"b": 2}))[0]) == {"b": 2}


def test_apply_desired_decides_what_is_applied_and_reported():
    seen = []

    def apply(name, d):
        seen.append((name, d))
        return {k: v for k, v in d.items() if k != "forbidden"}

    sync = ShadowSync(apply_desired=apply)
    out = sync.handle("", "delta", delta(1, {"ok": 1, "forbidden": 2}))
    assert seen == [("", {"ok": 1, "forbidden": 2})]
    assert reported_of(out[0]) == {"ok": 1}
    assert sync.reported("") == {"ok": 1} and sync.version("") == 1


def test_nothing_applied_reports_nothing_but_holds_the_version():
    sync = ShadowSync(apply_desired=lambda name, d: None)
    assert sync.handle("", "delta", delta(2, {"x": 1})) == []
    assert sync.version("") == 2 and sync.reported("") == {}


def test_a_failing_apply_desired_leaves_the_delta_pending():
    calls = []

    def apply(name, d):
        calls.append(d)
        if len(calls) == 1:
            raise RuntimeError("flash busy")
        return d

    sync = ShadowSync(apply_desired=apply)
    assert sync.handle("", "delta", delta(2, {"x": 1})) == []
    assert sync.version("") is None
    # The same delta again (as the platform pushes it on the next connect) is applied now.
    assert reported_of(sync.handle("", "delta", delta(2, {"x": 1}))[0]) == {"x": 1}
    assert sync.version("") == 2


def test_apply_desired_returning_garbage_applies_nothing():
    sync = ShadowSync(apply_desired=lambda name, d: ["not", "a", "dict"])
    assert sync.handle("", "delta", delta(2, {"x": 1})) == [] and sync.version("") is None


def test_the_hook_gets_a_copy():
    sync = ShadowSync(apply_desired=lambda name, d: d.setdefault("cfg", {}).setdefault("mutated", True) and {})
    sync.handle("", "delta", delta(1, {"cfg": {"a": 1}}))
    assert sync.reported("") == {}


def test_get_on_connect_only_without_local_state(tmp_path):
    sync = ShadowSync(tmp_path / "s.json", names=("", "fw"))
    gets = sync.on_connect()
    assert [m.suffix for m in gets] == ["shadow/get", "shadow/name/fw/get"]
    assert all(set(m.payload) == {"client_token"} for m in gets)
    assert gets[0].payload["client_token"] != gets[1].payload["client_token"]
    sync.handle("", "delta", delta(1, {"a": 1}))
    assert [m.suffix for m in sync.on_connect()] == ["shadow/name/fw/get"]
    assert [m.suffix for m in ShadowSync(tmp_path / "s.json", names=("", "fw")).on_connect()] == ["shadow/name/fw/get"]


def test_document_without_local_state_adopts_reported_and_applies_the_delta():
    sync = ShadowSync()
    doc = {"version": 7, "state": {"desired": {"led": "on", "rate": 5}, "reported": {"led": "off", "rate": 5, "fw": "1"},
                                   "delta": {"led": "on"}}, "metadata": {}, "timestamp": 1, "client_token": "t"}
    out = sync.handle("", "document", raw(doc))
    assert len(out) == 1 and reported_of(out[0]) == {"led": "on"}
    assert sync.reported("") == {"led": "on", "rate": 5, "fw": "1"} and sync.version("") == 7


def test_document_with_local_state_reports_every_difference():
    sync = ShadowSync()
    sync.report("", {"temp_unit": "C", "fw": "2"})
    doc = {"version": 3, "state": {"desired": {"mode": "eco"}, "reported": {"fw": "1", "old": True}}}
    out = sync.handle("", "document", raw(doc))
    assert reported_of(out[0]) == {"mode": "eco", "temp_unit": "C", "fw": "2", "old": None}
    assert sync.reported("") == {"temp_unit": "C", "fw": "2", "mode": "eco"}


def test_document_in_sync_reports_nothing_and_stale_document_is_dropped():
    sync = ShadowSync()
    same = {"version": 4, "state": {"desired": {"a": 1}, "reported": {"a": 1}}}
    assert sync.handle("", "document", raw(same)) == [] and sync.version("") == 4
    older = {"version": 3, "state": {"desired": {"a": 9}, "reported": {"a": 1}}}
    assert sync.handle("", "document", raw(older)) == [] and sync.reported("") == {"a": 1}


def test_rejected_version_conflict_asks_again_and_not_found_records_an_empty_shadow(tmp_path):
    sync = ShadowSync(tmp_path / "s.json")
    out = sync.handle("", "rejected", raw({"code": "version_conflict", "message": "m", "version": 9}))
    assert [m.suffix for m in out] == ["shadow/get"]
    assert sync.handle("", "rejected", raw({"code": "rate_limited", "message": "slow down"})) == []
    assert not sync.has_state("")
    assert sync.handle("", "rejected", raw({"code": "not_found", "message": "never written", "version": 0})) == []
    assert sync.has_state("") and sync.version("") is None
    assert ShadowSync(tmp_path / "s.json").on_connect() == []  # the next start does not ask again
    assert reported_of(sync.handle("", "delta", delta(1, {"a": 1}))[0]) == {"a": 1}


def test_report_merges_and_sends_only_what_changed():
    sync = ShadowSync()
    assert reported_of(sync.report("", {"config": {"a": 1, "b": 2}})) == {"config": {"a": 1, "b": 2}}
    assert reported_of(sync.report("", {"config": {"a": 1, "b": None}})) == {"config": {"b": None}}
    assert sync.report("", {"config": {"a": 1}}) is None
    assert sync.reported("") == {"config": {"a": 1}}


def test_check_report_applies_the_platform_rules():
    sync = ShadowSync()
    assert sync.check_report("", {"config": {"rate": 5}}) is None
    assert sync.check_report("", {"bad key": 1}).startswith("invalid_key")
    deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
    assert sync.check_report("", deep).startswith("too_deep")
    assert sync.check_report("", {"big": "x" * 9000}).startswith("state_too_large")


@pytest.mark.parametrize("kind", ["delta", "document", "rejected", "accepted"])
@pytest.mark.parametrize("payload", [
    b"", b"not json", b"\xff\xfe", b"[1,2]", b"null", b"42", b'"s"',
    raw({}), raw({"version": "3", "state": {}}), raw({"version": -1, "state": {}}), raw({"version": True, "state": {}}),
    raw({"version": 3}), raw({"version": 3, "state": [1]}), raw({"version": 3.0, "state": {"a": 1}}),
])
def test_bad_payloads_are_ignored(tmp_path, kind, payload):
    sync = ShadowSync(tmp_path / "s.json")
    assert sync.handle("", kind, payload) == []
    assert not sync.has_state("") and sync.version("") is None


@pytest.mark.parametrize("state", [{"desired": [1]}, {"desired": {}, "reported": "x"}])
def test_documents_with_broken_sections_are_ignored(state):
    sync = ShadowSync()
    assert sync.handle("", "document", raw({"version": 3, "state": state})) == [] and not sync.has_state("")


def test_damaged_state_file_starts_empty(tmp_path):
    path = tmp_path / "s.json"
    path.write_bytes(b"{torn")
    assert ShadowSync(path).reported("") == {} and not ShadowSync(path).has_state("")
    path.write_text(json.dumps({"shadows": {"": {"version": "x", "reported": 5}, "n": 3}}))
    sync = ShadowSync(path)
    assert sync.has_state("") and sync.version("") is None and sync.reported("") == {} and not sync.has_state("n")


def test_state_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "sub" / "f.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary left behind
    assert read_json(None) is None and read_json(tmp_path / "missing") is None


def test_accept_all_is_the_identity():
    assert accept_all("", {"a": {"b": 1}}) == {"a": {"b": 1}}
