import json

import pytest

from fleet.identity.devices import RegistryError
from fleet.identity.provisioning import (
    ClaimRequest,
    Rejected,
    Template,
    check_template,
    decide,
    device_id_for,
    parse_claim_request,
    parse_csr_request,
    parse_provisioning_topic,
    parse_rotation_topic,
)

REQ = ClaimRequest("SN-1", "csr", {"color": "red"})


def never_called(url, body, timeout):
    raise AssertionError("the webhook must not be called")


@pytest.mark.parametrize("template, allowed, reason", [
    (Template("t", allowed_serials=frozenset({"SN-1"})), True, "allowed"),
    (Template("t", allowed_serials=frozenset({"SN-2"})), False, "serial 'SN-1' is not allowed by template 't'"),
    (Template("t", enabled=False, allowed_serials=frozenset({"SN-1"})), False, "template 't' is disabled"),
])
def test_allow_list(template, allowed, reason):
    d = decide(template, "claim-1", REQ, never_called, 1)
    assert (d.allowed, d.reason) == (allowed, reason)


def test_webhook_is_asked_with_the_request_and_may_add_groups_and_metadata():
    seen = []

    def hook(url, body, timeout):
        seen.append((url, body, timeout))
        return {"allow": True, "groups": ["line-3"], "metadata": {"batch": "7"}}

    t = Template("t", device_id_prefix="sensor-", webhook_url="http://hook", groups=frozenset({"fleet"}),
                 metadata={"owner": "acme"})
    d = decide(t, "claim-1", REQ, hook, 2)
    assert d.allowed and d.groups == {"fleet", "line-3"}
    assert d.metadata == {"color": "red", "owner": "acme", "batch": "7"}
    assert seen == [("http://hook", {"template": "t", "claim_id": "claim-1", "serial": "SN-1",
                                     "device_id": "sensor-SN-1", "metadata": {"color": "red"}}, 2)]


@pytest.mark.parametrize("answer, reason", [
    ({"allow": False, "reason": "not ours"}, "pre-provisioning webhook refused: not ours"),
    ({"allow": "yes"}, "pre-provisioning webhook refused"),
    ([], "pre-provisioning webhook refused"),
    (RuntimeError("HTTP 500"), "pre-provisioning webhook failed: HTTP 500"),
    ({"allow": True, "groups": ["bad group"]}, "pre-provisioning webhook answered badly: group 'bad group'"),
])
def test_webhook_no_or_failure_is_a_rejection(answer, reason):
    def hook(url, body, timeout):
        if isinstance(answer, Exception):
            raise answer
        return answer

    d = decide(Template("t", webhook_url="http://hook"), "c", REQ, hook, 1)
    assert not d.allowed and d.reason.startswith(reason)


def test_allow_list_and_webhook_must_both_agree():
    t = Template("t", allowed_serials=frozenset({"SN-9"}), webhook_url="http://hook")
    assert not decide(t, "c", REQ, never_called, 1).allowed


@pytest.mark.parametrize("payload, reason", [
    (b"{", "request is not valid JSON"),
    (b"[]", "request must be a JSON object"),
    (json.dumps({"csr": "x"}).encode(), "serial is missing or not well-formed"),
    (json.dumps({"serial": "a/b", "csr": "x"}).encode(), "serial is missing or not well-formed"),
    (json.dumps({"serial": "s"}).encode(), "csr is missing"),
    (json.dumps({"serial": "s", "csr": "x", "metadata": []}).encode(), "metadata must be an object"),
    (b"x" * 20000, "request larger than 16384 bytes"),
])
def test_bad_claim_requests(payload, reason):
    with pytest.raises(Rejected, match=reason):
        parse_claim_request(payload)


def test_good_claim_request():
    assert parse_claim_request(b'{"serial": "SN-1", "csr": "pem", "metadata": {"k": "v"}}') == \
        ClaimRequest("SN-1", "pem", {"k": "v"})
    assert parse_csr_request(b'{"csr": "pem"}') == "pem"


@pytest.mark.parametrize("topic, parsed", [
    ("provisioning/claim-1/client-9/request", ("claim-1", "client-9")),
    ("provisioning/claim-1/client-9/response", None),
    ("provisioning/claim-1/request", None),
    ("provisioning//c/request", None),
])
def test_provisioning_topics(topic, parsed):
    assert parse_provisioning_topic(topic) == parsed


@pytest.mark.parametrize("topic, device_id", [
    ("devices/d-1/certificate/request", "d-1"),
    ("devices/d-1/certificate/response", None),
    ("devices/d-1/telemetry", None),
])
def test_rotation_topics(topic, device_id):
    assert parse_rotation_topic(topic) == device_id


def test_device_id_from_serial():
    assert device_id_for(Template("t", device_id_prefix="s-"), "42") == "s-42"
    with pytest.raises(Rejected, match="not well-formed"):
        device_id_for(Template("t", device_id_prefix="s-"), "x" * 64)


@pytest.mark.parametrize("template, message", [
    (Template("t"), "a template needs allowed_serials or webhook_url"),
    (Template("t", webhook_url="ftp://x"), "webhook_url must be an http:// or https:// URL"),
    (Template("t", allowed_serials=frozenset({"a/b"})), "serial 'a/b' is not well-formed"),
    (Template("t", allowed_serials=frozenset({"a"}), device_id_prefix="-x"), "device_id_prefix '-x'"),
    (Template("bad name", webhook_url="http://x"), "template name 'bad name' is not well-formed"),
])
def test_unsafe_templates_are_refused(template, message):
    with pytest.raises(RegistryError, match=message):
        check_template(template)
