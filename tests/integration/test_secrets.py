"""Secrets (API keys, tokens, generated claim keys) appear once in the creating response and
nowhere else: not in logs (at DEBUG), not in the audit log, not in later responses, not in the store.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from fleet.logs import JsonFormatter
from tests.support.identity import csr_pem

pytestmark = pytest.mark.integration


@pytest.fixture
def captured_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_secrets_never_leave_the_creating_response(api, keys, uid, cassandra, captured_logs):
    key = api.post("/v1/keys", headers=keys.admin, json={"name": "leak-check", "role": "operator"}).json()
    secret = key["key"]
    headers = {"X-API-Key": secret}
    token = api.post("/v1/tokens", headers=headers, json={}).json()["token"]
    api.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    api.get("/v1/whoami", headers={"X-API-Key": secret[:-2] + "zz"})              # a failed attempt
    device = uid("leak")
    api.post("/v1/devices", headers=headers, json={"device_id": device, "csr": csr_pem(device)}).raise_for_status()
    template = uid("leak-tpl")
    api.post("/v1/provisioning/templates", headers=keys.admin,
             json={"name": template, "allowed_serials": ["S1"]}).raise_for_status()
    claim = api.post("/v1/provisioning/claims", headers=keys.admin, json={"template": template}).json()
    private_key = claim["private_key"]
    assert "PRIVATE KEY" in private_key

    needles = {
        "api key": secret, "api key secret part": secret.split("_", 2)[2],
        "token": token, "token secret part": token.split("_", 2)[2],
        "claim private key": private_key.splitlines()[1],
    }
    logs = captured_logs.getvalue()
    assert "certificate issued" in logs  # the capture works
    audit = api.get("/v1/audit", headers=keys.admin, params={"limit": 1000}).text
    later = "".join(api.get(p, headers=keys.admin).text for p in (
        "/v1/keys", f"/v1/keys/{key['id']}", "/v1/provisioning/claims", f"/v1/provisioning/claims/{claim['claim_id']}"))
    stored = "".join(str(list(cassandra.execute(f"SELECT * FROM {t}")))
                     for t in ("api_keys", "api_tokens", "claims", "certificates", "audit_log"))
    for what, needle in needles.items():
        assert needle not in logs, f"{what} in the logs"
        assert needle not in audit, f"{what} in the audit log"
        assert needle not in later, f"{what} in a later response"
        assert needle not in stored, f"{what} in Cassandra"


def test_bootstrap_prints_the_first_admin_key_once_and_refuses_a_second(api, api_settings, keys):
    env = {**os.environ, "FLEET_CASSANDRA_KEYSPACE": api_settings.cassandra_keyspace}
    cmd = [sys.executable, "-m", "fleet.cli", "admin", "bootstrap", "--name", "first-admin"]
    # The test keyspace already has admin keys (the fixtures'), so a plain bootstrap refuses...
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "an active admin key exists already" in refused.stderr
    # ...and --force adds one: the key on stdout (alone), the note on stderr without it.
    made = subprocess.run(cmd + ["--force"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("fk_") and secret not in made.stderr and "shown only once" in made.stderr
    me = api.get("/v1/whoami", headers={"X-API-Key": secret}).json()
    assert (me["name"], me["role"]) == ("first-admin", "admin")
