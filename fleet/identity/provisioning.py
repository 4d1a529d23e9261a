"""Zero-touch provisioning by claim: templates, the allow/deny decision, and their storage.

A device leaves the factory with a *claim certificate* shared by its batch (claim CA, CN = claim
id). On the provisioning listener it may only publish ``provisioning/<claim id>/<client id>/request``::

    {"serial": "SN-0042", "csr": "-----BEGIN CERTIFICATE REQUEST-----...", "metadata": {...}}

The claim is bound to a *template*; the template decides (allow-list of serials and/or a
pre-provisioning webhook answering ``{"allow": true|false}``) and names the device
(``<device_id_prefix><serial>``, which must be the CSR's CN). The answer arrives on
``.../response``: ``{"status": "accepted", "device_id", "certificate", "ca_chain"}`` or
``{"status": "rejected", "reason"}``. This module holds the pure parts and the stores; the
MQTT service is fleet.identity.provisioner.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fleet.contract.topics import is_valid_device_id
from fleet.identity.devices import RegistryError, check_groups, check_metadata, check_name
from fleet.infra.cql_values import as_utc

MAX_REQUEST_BYTES = 16384
REQUEST_SUFFIX = "request"
RESPONSE_SUFFIX = "response"


class Rejected(Exception):
    """A provisioning or rotation request is refused; ``str(exc)`` goes back to the device."""


class NotOurs(Exception):
    """A request about a claim or device this registry does not know: another installation (or
    test keyspace) sharing the broker answers it, so this service stays silent."""


@dataclass(frozen=True)
class Template:
    name: str
    device_id_prefix: str = ""
    enabled: bool = True
    allowed_serials: frozenset[str] | None = None
    webhook_url: str | None = None
    device_type: str | None = None
    groups: frozenset[str] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


def check_template(t: Template) -> Template:
    """RegistryError("bad_request") for a template that would let anything in or name badly."""
    check_name("template name", t.name)
    if not t.allowed_serials and not t.webhook_url:
        raise RegistryError("bad_request", "a template needs allowed_serials or webhook_url (or both); "
                                           "otherwise any holder of the claim certificate could make devices")
    if t.webhook_url and not t.webhook_url.startswith(("http://", "https://")):
        raise RegistryError("bad_request", "webhook_url must be an http:// or https:// URL")
    if t.device_id_prefix and not is_valid_device_id(t.device_id_prefix + "0"):
        raise RegistryError("bad_request", f"device_id_prefix {t.device_id_prefix!r} would not make valid device ids")
    for s in t.allowed_serials or ():
        if not is_valid_device_id(s):
            raise RegistryError("bad_request", f"serial {s!r} is not well-formed")
    if t.device_type:
        check_name("device type", t.device_type)
    check_groups(t.groups)
    check_metadata(t.metadata)
    return t


@dataclass(frozen=True)
class ClaimRequest:
    serial: str
    csr: str
    metadata: dict[str, str]


def parse_claim_request(payload: bytes) -> ClaimRequest:
    if len(payload) > MAX_REQUEST_BYTES:
        raise Rejected(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("request is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Rejected("request must be a JSON object")
    serial, csr, metadata = doc.get("serial"), doc.get("csr"), doc.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(serial, str) or not is_valid_device_id(serial):
        raise Rejected("serial is missing or not well-formed (1-64 letters, digits, '-' or '_')")
    if not isinstance(csr, str) or not csr.strip():
        raise Rejected("csr is missing")
    if not isinstance(metadata, dict):
        raise Rejected("metadata must be an object of strings")
    try:
        metadata = check_metadata(metadata)
    except RegistryError as exc:
        raise Rejected(str(exc)) from None
    return ClaimRequest(serial, csr, metadata)


def parse_csr_request(payload: bytes) -> str:
    """The CSR of a rotation request ``{"csr": "..."}`` on devices/<id>/certificate/request."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise Rejected(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("request is not valid JSON") from None
    csr = doc.get("csr") if isinstance(doc, dict) else None
    if not isinstance(csr, str) or not csr.strip():
        raise Rejected("csr is missing")
    return csr


def provisioning_topic(claim_id: str, client_id: str, suffix: str) -> str:
    return f"provisioning/{claim_id}/{client_id}/{suffix}"


def parse_provisioning_topic(topic: str) -> tuple[str, str] | None:
    """(claim id, client id) of ``provisioning/<claim>/<client>/request``; None otherwise."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "provisioning" and parts[3] == REQUEST_SUFFIX and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def parse_rotation_topic(topic: str) -> str | None:
    """The device id of ``devices/<id>/certificate/request``; None otherwise."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "devices" and parts[2:] == ["certificate", "request"]:
        return parts[1] if is_valid_device_id(parts[1]) else None
    return None


def device_id_for(template: Template, serial: str) -> str:
    device_id = f"{template.device_id_prefix}{serial}"
    if not is_valid_device_id(device_id):
        raise Rejected(f"device id {device_id!r} made from the serial is not well-formed")
    return device_id


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    groups: frozenset[str] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)


Webhook = Callable[[str, dict, float], dict]


def decide(template: Template, claim_id: str, request: ClaimRequest, webhook: Webhook, timeout_s: float) -> Decision:
    """Allowed when the serial is on the allow-list (if there is one) and the webhook (if any) says yes.

    The webhook may add groups and metadata; it cannot remove the template's.
    """
    if not template.enabled:
        return Decision(False, f"template {template.name!r} is disabled")
    if template.allowed_serials is not None and request.serial not in template.allowed_serials:
        return Decision(False, f"serial {request.serial!r} is not allowed by template {template.name!r}")
    groups, metadata = set(template.groups), {**request.metadata, **template.metadata}
    if template.webhook_url:
        body = {"template": template.name, "claim_id": claim_id, "serial": request.serial,
                "device_id": device_id_for(template, request.serial), "metadata": request.metadata}
        try:
            answer = webhook(template.webhook_url, body, timeout_s)
        except Exception as exc:  # any failure of the hook is a "no", never an accident
            return Decision(False, f"pre-provisioning webhook failed: {exc}")
        if not isinstance(answer, dict) or answer.get("allow") is not True:
            why = answer.get("reason") if isinstance(answer, dict) else None
            return Decision(False, f"pre-provisioning webhook refused{': ' + str(why) if why else ''}")
        try:
            groups |= check_groups(answer.get("groups") or ())
            metadata.update(check_metadata(answer.get("metadata") or {}))
        except RegistryError as exc:
            return Decision(False, f"pre-provisioning webhook answered badly: {exc}")
    return Decision(True, "allowed", frozenset(groups), metadata)


def http_webhook(url: str, body: dict, timeout_s: float) -> dict:
    """POST JSON, expect a 2xx JSON object back."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read(65536) or b"{}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(type(exc).__name__) from None


# -- stores ------------------------------------------------------------------------------------
class TemplateStore:
    _COLUMNS = ("name, description, enabled, allowed_serials, webhook_url, device_id_prefix, device_type, groups, "
                "metadata, created_at, updated_at")

    def __init__(self, session):
        self.session = session
        self._get = session.prepare(f"SELECT {self._COLUMNS} FROM provisioning_templates WHERE name = ?")
        self._put = session.prepare(
            f"INSERT INTO provisioning_templates ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._create = session.prepare(
            f"INSERT INTO provisioning_templates ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")

    @staticmethod
    def _template(row) -> Template:
        return Template(row.name, row.device_id_prefix or "", bool(row.enabled),
                        frozenset(row.allowed_serials) if row.allowed_serials is not None else None,
                        row.webhook_url, row.device_type, frozenset(row.groups or ()), dict(row.metadata or {}),
                        row.description, as_utc(row.created_at), as_utc(row.updated_at))

    def _values(self, t: Template) -> tuple:
        return (t.name, t.description, t.enabled, set(t.allowed_serials) if t.allowed_serials else None,
                t.webhook_url, t.device_id_prefix, t.device_type, set(t.groups) or None, dict(t.metadata) or None,
                t.created_at, t.updated_at)

    def get(self, name: str) -> Template | None:
        row = self.session.execute(self._get, (name,)).one()
        return self._template(row) if row else None

    def list(self) -> list[Template]:
        rows = self.session.execute(f"SELECT {self._COLUMNS} FROM provisioning_templates")
        return sorted((self._template(r) for r in rows), key=lambda t: t.name)

    def create(self, t: Template) -> Template:
        now = dt.datetime.now(dt.UTC)
        t = Template(**{**t.__dict__, "created_at": now, "updated_at": now})
        if not self.session.execute(self._create, self._values(t)).was_applied:
            raise RegistryError("conflict", f"template {t.name!r} already exists")
        return t

    def put(self, t: Template) -> Template:
        t = Template(**{**t.__dict__, "updated_at": dt.datetime.now(dt.UTC)})
        self.session.execute(self._put, self._values(t))
        return t

    def delete(self, name: str) -> None:
        self.session.execute("DELETE FROM provisioning_templates WHERE name = %s", (name,))


@dataclass(frozen=True)
class Claim:
    claim_id: str
    template: str
    status: str  # "active" | "revoked"
    cert_serial: str
    cert_fingerprint: str
    not_after: dt.datetime
    created_at: dt.datetime
    created_by: str | None
    revoked_at: dt.datetime | None = None


class ClaimStore:
    _COLUMNS = "claim_id, template, status, cert_serial, cert_fingerprint, not_after, created_at, created_by, revoked_at"

    def __init__(self, session):
        self.session = session
        self._get = session.prepare(f"SELECT {self._COLUMNS} FROM claims WHERE claim_id = ?")
        self._create = session.prepare(
            f"INSERT INTO claims ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self._revoke = session.prepare("UPDATE claims SET status = 'revoked', revoked_at = ? WHERE claim_id = ?")
        self._serial_get = session.prepare(
            "SELECT device_id, claim_id FROM provisioned_serials WHERE template = ? AND serial = ?")
        self._serial_put = session.prepare(
            "INSERT INTO provisioned_serials (template, serial, device_id, claim_id, provisioned_at) VALUES (?, ?, ?, ?, ?)")
        self._client_seen = session.prepare(
            "INSERT INTO claim_clients (claim_id, client_id, last_seen) VALUES (?, ?, ?)")
        self._clients = session.prepare("SELECT client_id FROM claim_clients WHERE claim_id = ?")

    @staticmethod
    def _claim(row) -> Claim:
        return Claim(row.claim_id, row.template, row.status, row.cert_serial, row.cert_fingerprint,
                     as_utc(row.not_after), as_utc(row.created_at), row.created_by, as_utc(row.revoked_at))

    def get(self, claim_id: str) -> Claim | None:
        row = self.session.execute(self._get, (claim_id,)).one()
        return self._claim(row) if row else None

    def list(self) -> list[Claim]:
        rows = self.session.execute(f"SELECT {self._COLUMNS} FROM claims")
        return sorted((self._claim(r) for r in rows), key=lambda c: c.created_at)

    def reserve(self, claim: Claim) -> None:
        if not self.session.execute(self._create, (claim.claim_id, claim.template, claim.status, claim.cert_serial,
                                                   claim.cert_fingerprint, claim.not_after, claim.created_at,
                                                   claim.created_by, None)).was_applied:
            raise RegistryError("conflict", f"claim {claim.claim_id!r} already exists")

    def mark_revoked(self, claim_id: str) -> None:
        self.session.execute(self._revoke, (dt.datetime.now(dt.UTC), claim_id))

    def provisioned(self, template: str, serial: str) -> str | None:
        row = self.session.execute(self._serial_get, (template, serial)).one()
        return row.device_id if row else None

    def client_seen(self, claim_id: str, client_id: str) -> None:
        self.session.execute(self._client_seen, (claim_id, client_id, dt.datetime.now(dt.UTC)))

    # builtins.list: the method ``list`` above shadows the builtin in this class body.
    def clients(self, claim_id: str) -> builtins.list[str]:
        return [r.client_id for r in self.session.execute(self._clients, (claim_id,))]

    def remember(self, template: str, serial: str, device_id: str, claim_id: str) -> None:
        self.session.execute(self._serial_put, (template, serial, device_id, claim_id, dt.datetime.now(dt.UTC)))
