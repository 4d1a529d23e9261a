"""fleet.shadow.domain: merge, delta, version, metadata, limits, get/connect, rate; table-driven and properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleet.shadow import domain as dom
from tests.vectors import shadow_replay

T0 = 1_767_225_600_000
DEV = dom.Source(dom.DEVICE, "d-1")
OP = dom.Source(dom.OPERATOR, "alice")
RULES = dom.ShadowRules()


def empty(name=""):
    return dom.ShadowDocument.empty("d-1", name)


def upd(section, patch, source=None, ts=T0, version=None, token=None):
    source = source or (OP if section == dom.DESIRED else DEV)
    return dom.ShadowUpdate({section: patch}, source, ts, version, token)


def apply(doc, *updates, rules=RULES):
    for u in updates:
        out = dom.apply_update(doc, u, rules)
        assert isinstance(out, dom.Accepted), out
        doc = out.document
    return doc


# --- merge / diff / delta ----------------------------------------------------------------------

@pytest.mark.parametrize("target, patch, result", [
    ({}, {"a": 1}, {"a": 1}),
    ({"a": 1}, {"a": None}, {}),
    ({"a": 1}, {"b": None}, {"a": 1}),
    ({"a": {"x": 1, "y": 2}}, {"a": {"y": None, "z": 3}}, {"a": {"x": 1, "z": 3}}),
    ({"a": {"x": 1}}, {"a": {"x": None}}, {}),  # emptied object disappears
    ({"a": 5}, {"a": {"x": 1}}, {"a": {"x": 1}}),
    ({"a": {"x": 1}}, {"a": 5}, {"a": 5}),
    ({"a": [1, 2, 3]}, {"a": [4]}, {"a": [4]}),  # arrays whole
    ({"a": [{"x": 1}]}, {"a": [{"y": None}]}, {"a": [{"y": None}]}),  # nulls inside arrays are values
    ({"a": 5}, {"a": {}}, {}),  # {} is absence
    ({}, {"a": {"b": {}}}, {}),
])
def test_merge(target, patch, result):
    before = repr(target)
    assert dom.merge(target, patch) == result
    assert repr(target) == before


@pytest.mark.parametrize("desired, reported, delta", [
    ({}, {}, {}),
    ({"a": 1}, {}, {"a": 1}),
    ({}, {"a": 1}, {}),  # reported-only fields are not in the delta
    ({"a": 1}, {"a": 1.0}, {}),  # numbers by value
    ({"a": True}, {"a": 1}, {"a": True}),  # a boolean is not a number
    ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 3}}, {"a": {"y": 2}}),
    ({"a": {"x": 1}}, {"a": 7}, {"a": {"x": 1}}),
    ({"a": [1, 2]}, {"a": [1, 2]}, {}),
    ({"a": [1, 2]}, {"a": [2, 1]}, {"a": [1, 2]}),
    ({"a": {"b": {"c": 1}}, "k": "v"}, {"a": {"b": {"c": 2}}, "k": "v"}, {"a": {"b": {"c": 1}}}),
])
def test_delta(desired, reported, delta):
    assert dom.compute_delta(desired, reported) == delta


@pytest.mark.parametrize("a, b, equal", [
    (1, 1.0, True), (True, 1, False), (False, 0, False), (True, True, True), ("1", 1, False), (None, None, True),
    ([1, {"a": 1}], [1.0, {"a": 1}], True), ({"a": 1}, {"a": 1, "b": 2}, False), ([], {}, False),
])
def test_json_equal(a, b, equal):
    assert dom.json_equal(a, b) is equal


# --- apply_update: the happy path, version, metadata, messages ---------------------------------

def test_first_operator_update_creates_version_1_with_a_delta():
    out = dom.apply_update(empty(), upd("desired", {"led": "on", "cfg": {"rate": 5}}, token="t-1", version=0))
    assert isinstance(out, dom.Accepted) and out.changed
    doc = out.document
    assert (doc.version, doc.desired, doc.reported, doc.updated_at) == (1, {"led": "on", "cfg": {"rate": 5}}, {}, T0)
    assert doc.metadata == {"desired": {"led": T0, "cfg": {"rate": T0}}, "reported": {}}
    assert out.accepted == {"version": 1, "state": {"desired": {"led": "on", "cfg": {"rate": 5}}},
                            "metadata": {"desired": {"led": T0, "cfg": {"rate": T0}}}, "timestamp": T0,
                            "changed": True, "client_token": "t-1"}
    assert out.delta == {"version": 1, "state": {"led": "on", "cfg": {"rate": 5}},
                         "metadata": {"led": T0, "cfg": {"rate": T0}}, "timestamp": T0}
    assert out.change == dom.ShadowChange("d-1", "", 1, "operator", "alice", T0, "t-1",
                                          {"desired": {"led": "on", "cfg": {"rate": 5}}},
                                          {"led": "on", "cfg": {"rate": 5}}, {})


def test_device_report_clears_part_of_the_delta_and_sends_no_delta_message():
    doc = apply(empty(), upd("desired", {"led": "on", "rate": 5}))
    out = dom.apply_update(doc, upd("reported", {"led": "on", "temp": 21}, ts=T0 + 10))
    assert out.document.version == 2
    assert out.document.delta == {"rate": 5}
    assert out.delta is None  # a report never triggers a delta (it would loop)
    assert out.accepted["state"] == {"reported": {"led": "on", "temp": 21}}
    assert out.change.source_kind == "device" and out.change.actor == "d-1"


def test_delta_holds_every_differing_field_not_only_the_changed_one():
    doc = apply(empty(), upd("desired", {"a": 1, "b": 2}))
    out = dom.apply_update(doc, upd("desired", {"c": 3}, ts=T0 + 1))
    assert out.delta["state"] == {"a": 1, "b": 2, "c": 3}
    assert out.delta["metadata"] == {"a": T0, "b": T0, "c": T0 + 1}


def test_only_changed_leaves_get_new_timestamps_and_the_effective_patch_is_reported():
    doc = apply(empty(), upd("reported", {"a": 1, "b": {"x": 1, "y": 2}}))
    out = dom.apply_update(doc, upd("reported", {"a": 1, "b": {"x": 1, "y": None, "z": 3}}, ts=T0 + 5))
    assert out.accepted["state"] == {"reported": {"b": {"y": None, "z": 3}}}
    assert out.accepted["metadata"] == {"reported": {"b": {"y": None, "z": T0 + 5}}}
    assert out.document.metadata["reported"] == {"a": T0, "b": {"x": T0, "z": T0 + 5}}
    assert out.change.patch == {"reported": {"b": {"y": None, "z": 3}}}


def test_a_no_op_update_is_accepted_without_a_version_history_or_delta():
    doc = apply(empty(), upd("desired", {"a": 1}), upd("reported", {"b": 2}))
    out = dom.apply_update(doc, upd("reported", {"b": 2.0, "gone": None}, ts=T0 + 99, token="again"))
    assert isinstance(out, dom.Accepted) and not out.changed
    assert out.document is doc
    assert out.accepted == {"version": 2, "state": {}, "metadata": {}, "timestamp": T0 + 99, "changed": False,
                            "client_token": "again"}
    assert out.delta is None and out.change is None


def test_a_section_set_to_null_is_cleared():
    doc = apply(empty(), upd("desired", {"a": 1, "b": {"c": 2}}))
    out = dom.apply_update(doc, upd("desired", None, ts=T0 + 1))
    assert out.document.desired == {} and out.document.metadata["desired"] == {}
    assert out.accepted["state"] == {"desired": {"a": None, "b": None}}
    assert out.delta is None


@pytest.mark.parametrize("version, ok", [(None, True), (2, True), (1, False), (3, False), (0, False)])
def test_optimistic_concurrency(version, ok):
    doc = apply(empty(), upd("desired", {"a": 1}), upd("desired", {"a": 2}))
    out = dom.apply_update(doc, upd("desired", {"a": 3}, version=version, token="tk"))
    if ok:
        assert out.document.version == 3
    else:
        assert out == dom.Rejection(dom.VERSION_CONFLICT, f"version {version} is not the current version 2", "tk", 2)
        assert out.http_status == 409
        assert out.message_json() == {"code": "version_conflict", "message": out.message, "version": 2,
                                      "client_token": "tk"}


def test_two_updates_on_one_version_exactly_one_wins():
    doc = apply(empty(), upd("desired", {"a": 1}))
    first = dom.apply_update(doc, upd("desired", {"a": 2}, version=1))
    second = dom.apply_update(first.document, upd("desired", {"a": 3}, version=1))
    assert isinstance(first, dom.Accepted) and isinstance(second, dom.Rejection)
    assert second.code == dom.VERSION_CONFLICT


def test_a_stale_version_is_a_conflict_even_for_a_no_op():
    doc = apply(empty(), upd("desired", {"a": 1}), upd("desired", {"a": 2}))
    assert dom.apply_update(doc, upd("desired", {"a": 2}, version=1)).code == dom.VERSION_CONFLICT


def test_version_0_creates_and_a_higher_one_on_a_missing_shadow_conflicts():
    assert dom.apply_update(empty(), upd("reported", {"a": 1}, version=0)).document.version == 1
    assert dom.apply_update(empty(), upd("reported", {"a": 1}, version=1)).code == dom.VERSION_CONFLICT


# --- rejections --------------------------------------------------------------------------------

@pytest.mark.parametrize("source, section, code", [
    (DEV, "desired", dom.FORBIDDEN_SECTION),
    (OP, "reported", dom.FORBIDDEN_SECTION),
    (dom.Source("robot", "x"), "desired", dom.INVALID_REQUEST),
    (OP, "tags", dom.INVALID_REQUEST),
])
def test_who_may_write_what(source, section, code):
    out = dom.apply_update(empty(), dom.ShadowUpdate({section: {"a": 1}}, source, T0))
    assert isinstance(out, dom.Rejection) and out.code == code


@pytest.mark.parametrize("patch, code", [
    ({"bad key": 1}, dom.INVALID_KEY),
    ({"": 1}, dom.INVALID_KEY),
    ({"-lead": 1}, dom.INVALID_KEY),
    ({"k" * 65: 1}, dom.INVALID_KEY),
    ({"a": {"$x": 1}}, dom.INVALID_KEY),
    ({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}, dom.TOO_DEEP),  # 7 levels
    ({"a": {"b": {"c": {"d": {"e": [1]}}}}}, None),  # the array is level 6
    ({"a": {"b": {"c": {"d": {"e": [[1]]}}}}}, dom.TOO_DEEP),
    ({"a": [{"any key ok": 1}]}, None),  # keys inside arrays are values
    ({"a": float("nan")}, dom.INVALID_VALUE),
    ({"a": [float("inf")]}, dom.INVALID_VALUE),
    ({"a": {1, 2}}, dom.INVALID_VALUE),
    ({"k" * 64: 1, "a.b:c_d-e": 2}, None),
])
def test_patch_rules(patch, code):
    out = dom.apply_update(empty(), upd("reported", patch, token="t"))
    if code is None:
        assert isinstance(out, dom.Accepted)
    else:
        assert isinstance(out, dom.Rejection) and out.code == code and out.client_token == "t", out


@pytest.mark.parametrize("name, ok", [
    ("", True), ("config", True), ("a:b_c-1", True), ("x" * 64, True), ("x" * 65, False), ("$aws", False),
    ("a/b", False), ("a b", False), ("name\n", False),
])
def test_shadow_names(name, ok):
    out = dom.apply_update(empty(name), upd("reported", {"a": 1}))
    assert isinstance(out, dom.Accepted) is ok
    if not ok:
        assert out.code == dom.INVALID_SHADOW_NAME


def test_too_many_keys_counts_every_level():
    rules = dom.ShadowRules(max_keys=3)
    assert isinstance(dom.apply_update(empty(), upd("reported", {"a": {"b": 1, "c": 2}}), rules), dom.Accepted)
    out = dom.apply_update(empty(), upd("reported", {"a": {"b": 1, "c": 2, "d": 3}}), rules)
    assert out.code == dom.TOO_MANY_KEYS and out.http_status == 413


def _sized(total: int) -> dict:
    """A reported section whose compact JSON, added to "{}" for desired, is exactly ``total`` bytes."""
    # {"v":"xxx"} is 8 bytes + the string; desired "{}" is 2.
    return {"v": "x" * (total - 2 - 8)}


@pytest.mark.parametrize("total, ok", [(8192, True), (8193, False)])
def test_size_limit_is_exact_at_the_boundary(total, ok):
    patch = _sized(total)
    assert dom.json_size(patch) + 2 == total
    out = dom.apply_update(empty(), upd("reported", patch))
    assert isinstance(out, dom.Accepted) is ok
    if not ok:
        assert out.code == dom.STATE_TOO_LARGE and "8193 bytes" in out.message


def test_size_counts_utf8_bytes_and_both_sections():
    doc = apply(empty(), upd("desired", {"d": "é" * 100}))  # 200 bytes of string
    left = 8192 - dom.json_size(doc.desired) - 8
    assert isinstance(dom.apply_update(doc, upd("reported", {"v": "x" * left})), dom.Accepted)
    assert dom.apply_update(doc, upd("reported", {"v": "x" * (left + 1)})).code == dom.STATE_TOO_LARGE


def test_a_shrinking_update_passes_on_an_oversized_document():
    # Limits are checked on the result, so a device can always delete its way out.
    doc = apply(empty(), upd("reported", {"a": "x" * 5000, "b": "y" * 3000}))
    small = dom.ShadowRules(max_state_bytes=4000)
    assert dom.apply_update(doc, upd("reported", {"c": 1}), small).code == dom.STATE_TOO_LARGE
    assert isinstance(dom.apply_update(doc, upd("reported", {"a": None}), small), dom.Accepted)


@pytest.mark.parametrize("payload, code", [
    ([], dom.INVALID_REQUEST),
    ({}, dom.INVALID_REQUEST),
    ({"state": {}}, dom.INVALID_REQUEST),
    ({"state": {"reported": [1]}}, dom.INVALID_REQUEST),
    ({"state": {"delta": {}}}, dom.INVALID_REQUEST),
    ({"state": {"reported": {}}, "version": -1}, dom.INVALID_REQUEST),
    ({"state": {"reported": {}}, "version": True}, dom.INVALID_REQUEST),
    ({"state": {"reported": {}}, "client_token": ""}, dom.INVALID_REQUEST),
    ({"state": {"reported": {}}, "client_token": "t" * 65}, dom.INVALID_REQUEST),
    ({"state": {"reported": {}}, "extra": 1}, dom.INVALID_REQUEST),
    ({"state": {"reported": {"a": 1}}, "version": 3, "client_token": "c", "ts": 5}, None),
    ({"state": {"reported": None}}, None),
])
def test_parse_update(payload, code):
    out = dom.parse_update(payload, DEV, T0)
    if code is None:
        assert isinstance(out, dom.ShadowUpdate) and out.ts == T0
    else:
        assert isinstance(out, dom.Rejection) and out.code == code


def test_parse_update_echoes_the_token_on_rejection():
    out = dom.parse_update({"state": {"delta": {}}, "client_token": "abc"}, DEV, T0)
    assert out.client_token == "abc"


@pytest.mark.parametrize("payload, expect", [
    (None, None), ({}, None), ({"client_token": "x"}, "x"), ({"client_token": "x", "ts": T0}, "x"),
])
def test_parse_get(payload, expect):
    assert dom.parse_get(payload) == expect


@pytest.mark.parametrize("payload", [[], {"x": 1}, {"client_token": 5}, {"client_token": ""}])
def test_parse_get_rejects(payload):
    assert dom.parse_get(payload).code == dom.INVALID_REQUEST


# --- get, connect, stale, encoding, rate -------------------------------------------------------

def test_get():
    missing = dom.handle_get(empty(), T0, "g")
    assert missing.code == dom.NOT_FOUND and missing.http_status == 404 and missing.client_token == "g"
    doc = apply(empty(), upd("desired", {"a": 1}), upd("reported", {"a": 2, "b": 3}, ts=T0 + 1))
    assert dom.handle_get(doc, T0 + 5, "g") == {
        "version": 2, "state": {"desired": {"a": 1}, "reported": {"a": 2, "b": 3}, "delta": {"a": 1}},
        "metadata": {"desired": {"a": T0}, "reported": {"a": T0 + 1, "b": T0 + 1}}, "timestamp": T0 + 5,
        "client_token": "g"}


def test_on_connect_sends_the_current_delta_or_nothing():
    assert dom.on_connect(empty(), T0) is None
    doc = apply(empty(), upd("desired", {"a": 1, "b": 2}), upd("reported", {"a": 1}, ts=T0 + 1))
    assert dom.on_connect(doc, T0 + 9) == {"version": 2, "state": {"b": 2}, "metadata": {"b": T0}, "timestamp": T0 + 9}
    assert dom.on_connect(apply(doc, upd("reported", {"b": 2})), T0) is None


@pytest.mark.parametrize("held, incoming, stale", [(None, 1, False), (3, 4, False), (4, 4, True), (5, 4, True)])
def test_is_stale(held, incoming, stale):
    assert dom.is_stale(held, incoming) is stale


def test_encoding_round_trips():
    doc = apply(empty("cfg"), upd("desired", {"a": [1, {"b": None}], "c": {"d": 1.5}}), upd("reported", {"v": "é"}))
    assert dom.decode(dom.encode(doc)) == doc


def test_token_bucket():
    rules = dom.ShadowRules(burst=3, per_second=2)
    bucket = None
    verdicts = []
    for _ in range(4):
        ok, bucket = dom.take(bucket, T0, rules)
        verdicts.append(ok)
    assert verdicts == [True, True, True, False]
    assert dom.take(bucket, T0 + 499, rules)[0] is False  # 0.998 of a token
    ok, bucket = dom.take(bucket, T0 + 500, rules)
    assert ok and bucket.milli_tokens == 0
    ok, later = dom.take(bucket, T0 - 10_000, rules)  # the clock going back refills nothing
    assert not ok and later.updated_at == T0 + 500
    ok, full = dom.take(bucket, T0 + 3_600_000, rules)
    assert ok and full.milli_tokens == 2000  # capped at the burst
    assert dom.rate_limited("t", rules).http_status == 429


# --- properties --------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.0, 2.5]), st.sampled_from(["", "x"]))
LEAVES = st.one_of(SCALARS.filter(lambda v: v is not None), st.lists(SCALARS, max_size=3))
PATCHES = st.recursive(st.dictionaries(KEYS, st.one_of(st.none(), LEAVES), max_size=3),
                       lambda inner: st.dictionaries(KEYS, st.one_of(st.none(), LEAVES, inner), max_size=3),
                       max_leaves=10)


@st.composite
def updates(draw):
    source = draw(st.sampled_from([OP, DEV]))
    section = dom.WRITABLE[source.kind]
    patch = draw(st.one_of(PATCHES, st.just(None)) if draw(st.integers(0, 9)) == 0 else PATCHES)
    version = draw(st.one_of(st.none(), st.integers(0, 6)))
    return section, patch, source, version


def _shape(tree):
    return {k: _shape(v) if isinstance(v, dict) else None for k, v in tree.items()}


def _no_empty_objects(tree):
    return all(v and _no_empty_objects(v) for v in tree.values() if isinstance(v, dict))


@settings(max_examples=300, deadline=None)
@given(st.lists(updates(), max_size=12), st.integers(100, 400))
@example([("desired", {"a": {"b": 1}}, OP, None), ("reported", {"a": {"b": 1, "c": 2}}, DEV, None),
          ("desired", {"a": {"b": None}}, OP, None)], 8192)
@example([("reported", {"a": [1]}, DEV, None), ("desired", {"a": [1.0]}, OP, None)], 8192)
@example([("desired", {"a": True}, OP, None), ("reported", {"a": 1}, DEV, None)], 8192)
@example([("desired", {"a": 1}, OP, 0), ("desired", {"a": 2}, OP, 0)], 8192)
@example([("reported", {"a": "x" * 60}, DEV, None), ("reported", {"b": "y" * 60}, DEV, None)], 140)
def test_invariants_over_any_sequence(steps, max_bytes):
    rules = dom.ShadowRules(max_state_bytes=max_bytes)
    doc = empty()
    for index, (section, patch, source, version) in enumerate(steps):
        before = dom.encode(doc)
        out = dom.apply_update(doc, dom.ShadowUpdate({section: patch}, source, T0 + index, version), rules)
        if isinstance(out, dom.Rejection):
            assert dom.encode(doc) == before  # rejected: nothing changed
            if version is not None and version != doc.version:
                assert out.code == dom.VERSION_CONFLICT
            continue
        new = out.document
        # the version moves by exactly 1 on a change and not at all on a no-op
        assert new.version == doc.version + (1 if out.changed else 0)
        assert out.changed != (dom.json_equal(new.desired, doc.desired) and dom.json_equal(new.reported, doc.reported))
        assert out.accepted["version"] == new.version
        expected = dom.merge(getattr(doc, section), patch) if patch is not None else {}
        assert dom.json_equal(getattr(new, section), expected)
        # the applied patch replays the change; metadata has the section's shape
        for s in dom.SECTIONS:
            applied = out.accepted["state"].get(s, {})
            assert dom.json_equal(dom.merge(getattr(doc, s), applied), getattr(new, s))
            assert _shape(new.metadata[s]) == _shape(getattr(new, s))
            assert _no_empty_objects(getattr(new, s))
        assert dom.json_size(new.desired) + dom.json_size(new.reported) <= max_bytes
        if out.delta is not None:
            assert out.delta["version"] == new.version and out.delta["state"]
        assert dom.decode(dom.encode(new)) == new
        doc = new
        # the delta is exactly desired minus reported, whatever happened before
        assert _delta_ok(doc)


def _delta_ok(doc):
    """Brute force: a leaf path is in the delta iff desired has it and reported differs there."""
    def leaves(tree, prefix=()):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from leaves(v, (*prefix, k))
            else:
                yield (*prefix, k), v

    def lookup(tree, path):
        for k in path:
            if not isinstance(tree, dict) or k not in tree:
                return _MISSING
            tree = tree[k]
        return tree

    expect = {p: v for p, v in leaves(doc.desired)
              if (r := lookup(doc.reported, p)) is _MISSING or not dom.json_equal(r, v)}
    got = dict(leaves(doc.delta))
    return got == expect


_MISSING = object()


@given(PATCHES, PATCHES)
@example({"a": {"b": 1}}, {"a": 5})
@example({"a": [1]}, {"a": [1.0]})
def test_diff_is_the_smallest_patch_that_replays(old_patch, new_patch):
    old, new = dom.merge({}, old_patch), dom.merge({}, new_patch)
    patch = dom.diff(old, new)
    assert dom.json_equal(dom.merge(old, patch), new)
    assert dom.diff(new, new) == {}
    assert (patch == {}) == dom.json_equal(old, new)


# --- the shared vectors (tests/vectors/shadow), for a second core to replay too ----------------

SHADOW_VECTORS = shadow_replay.vector_files()


def test_the_shadow_vectors_are_there():
    assert len(SHADOW_VECTORS) >= 6


@pytest.mark.parametrize("path", SHADOW_VECTORS, ids=[p.stem for p in SHADOW_VECTORS])
def test_shadow_vector(path):
    vector = json.loads(path.read_text())
    outputs = shadow_replay.run(vector)
    for index, (step, output) in enumerate(zip(vector["steps"], outputs, strict=True)):
        assert output == step["expect"], f"{vector['name']} step {index}: {step}"
