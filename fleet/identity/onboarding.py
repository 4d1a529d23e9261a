"""Device identity operations: register, issue, rotate, disable/revoke with cut-off, claim.

The one place where the registry (Cassandra), the CA (fleet.identity.ca) and the broker (fleet.identity.cutoff)
change together, used by the API routes and the MQTT provisioning service alike. Order of each
operation: the registry first (source of truth), then the CA's CRL, then the broker. A failure
after the registry write is reported (``CutoffReport.error``) and repaired by ``fleet admin
sync-crl`` (``Onboarding.sync_crl``); it never leaves a device marked active that was meant to be
cut off.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import overload

from fleet.config import Settings
from fleet.contract.topics import is_valid_device_id
from fleet.identity.ca import CertificateAuthority, pki_from_settings
from fleet.identity.certstore import CertificateStore, CertRecord, CertStatus
from fleet.identity.cutoff import BrokerControl, CutoffReport
from fleet.identity.devices import (
    CertAction,
    Device,
    DeviceStatus,
    RegistryError,
    check_device_id,
    check_groups,
    check_metadata,
    check_name,
    new_device_id,
    status_change,
)
from fleet.identity.pki import CSRError, csr_common_name, load_csr
from fleet.identity.provisioning import (
    Claim,
    ClaimStore,
    NotOurs,
    Rejected,
    TemplateStore,
    Webhook,
    decide,
    device_id_for,
    http_webhook,
    parse_claim_request,
)
from fleet.identity.registry import DeviceRegistry
from fleet.logs import log_fields

log = logging.getLogger(__name__)

KIND_CA = {"device": "issuing", "claim": "claim"}
_LIVE = (CertStatus.active, CertStatus.superseded, CertStatus.on_hold)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Issued:
    device: Device
    certificate: CertRecord
    ca_chain: str


class Onboarding:
    def __init__(self, settings: Settings, session, pki: CertificateAuthority | None = None,
                 broker: BrokerControl | None = None, webhook: Webhook = http_webhook):
        self.settings = settings
        self.pki = pki or pki_from_settings(settings)
        self.broker = broker or BrokerControl(settings, self.pki)
        self.devices = DeviceRegistry(session)
        self.certs = CertificateStore(session)
        self.templates = TemplateStore(session)
        self.claims = ClaimStore(session)
        self.webhook = webhook

    @property
    def ca_chain(self) -> str:
        return self.pki.ca_chain_path.read_text()

    # -- registration and certificates --------------------------------------------------------
    # With a CSR the device gets a certificate; without one, none.
    @overload
    def register(self, device_id: str | None, *, device_type: str | None = None, metadata=None, groups=None,
                 csr: str) -> tuple[Device, CertRecord]: ...
    @overload
    def register(self, device_id: str | None, *, device_type: str | None = None, metadata=None, groups=None,
                 csr: None = None) -> tuple[Device, None]: ...
    @overload
    def register(self, device_id: str | None, *, device_type: str | None = None, metadata=None, groups=None,
                 csr: str | None = None) -> tuple[Device, CertRecord | None]: ...
    def register(self, device_id: str | None, *, device_type: str | None = None, metadata=None, groups=None,
                 csr: str | None = None) -> tuple[Device, CertRecord | None]:
        if device_id is None and csr is not None:
            # The CSR already names the device (its CN); use it rather than inventing another id.
            device_id = self._csr_cn(csr)
        device_id = check_device_id(device_id or new_device_id())
        device = Device(device_id, DeviceStatus.active, check_name("device type", device_type) if device_type else None,
                        check_metadata(metadata), check_groups(groups))
        if csr is not None:
            self._check_csr(csr, device_id)  # refuse a bad CSR before anything is stored
        if self.devices.get(device_id) is not None:
            raise RegistryError("conflict", f"device {device_id!r} already exists")
        device = self.devices.create(device)
        record = None
        if csr is not None:
            device, record = self._issue(device, csr)
        return device, record

    @staticmethod
    def _csr_cn(csr: str) -> str:
        try:
            cn = csr_common_name(load_csr(csr))
        except CSRError as exc:
            raise RegistryError("bad_request", str(exc)) from None
        if not cn:
            raise RegistryError("bad_request", "the CSR has no common name; it must be the device id")
        return cn

    def _check_csr(self, csr: str, device_id: str) -> None:
        from fleet.identity.pki import check_csr

        try:
            check_csr(csr, device_id)
        except CSRError as exc:
            raise RegistryError("bad_request", str(exc)) from None

    def _issue(self, device: Device, csr: str) -> tuple[Device, CertRecord]:
        try:
            cert = self.pki.issue_device_certificate(csr, device.device_id, self.settings.cert_validity_days)
        except CSRError as exc:
            raise RegistryError("bad_request", str(exc)) from None
        record = self.certs.add(device.device_id, "device", cert)
        device = self.devices.update(device, device.with_changes(cert_serial=record.serial,
                                                                cert_fingerprint=record.fingerprint))
        log.info("certificate issued", extra=log_fields(device_id=device.device_id, serial=record.serial))
        return device, record

    def rotate(self, device_id: str, csr: str, grace_s: int | None = None) -> tuple[Device, CertRecord]:
        """A new certificate for an active device; its previous ones are revoked after the grace period."""
        device = self.devices.require(device_id)
        if device.status is not DeviceStatus.active:
            raise RegistryError("conflict", f"device {device_id!r} is {device.status.value}; only an active device "
                                            "can get a new certificate")
        self._check_csr(csr, device_id)
        previous = [c for c in self.certs.list(device_id) if c.status is CertStatus.active]
        device, record = self._issue(device, csr)
        grace = self.settings.cert_rotation_grace_s if grace_s is None else grace_s
        revoke_at = _now() + dt.timedelta(seconds=max(0, grace))
        for old in previous:
            self.certs.schedule_revocation(old, revoke_at)
        if grace <= 0 and previous:
            self.run_due_revocations()
        return device, record

    def certificates(self, device_id: str) -> list[CertRecord]:
        return self.certs.list(device_id)

    def revoke_certificate(self, device_id: str, serial: str) -> tuple[CertRecord, CutoffReport]:
        record = self.certs.get(device_id, serial)
        if record is None:
            raise RegistryError("not_found", f"certificate {serial!r} of device {device_id!r} not found")
        if record.status is CertStatus.revoked:
            raise RegistryError("conflict", f"certificate {serial!r} is already revoked")
        self._revoke_records([record], reason="revoked by operator")
        report = self.broker.cut_off([device_id])
        revoked = self.certs.get(device_id, serial)
        if revoked is None:  # deleted since the read above (the device was deleted meanwhile)
            raise RegistryError("not_found", f"certificate {serial!r} of device {device_id!r} not found")
        return revoked, report

    # -- status changes, delete ----------------------------------------------------------------
    def update(self, device_id: str, *, device_type=None, metadata=None, groups=None,
               status: DeviceStatus | None = None) -> tuple[Device, CutoffReport | None]:
        device = self.devices.require(device_id)
        changes: dict = {}
        if device_type is not None:
            changes["device_type"] = check_name("device type", device_type)
        if metadata is not None:
            changes["metadata"] = check_metadata(metadata)
        if groups is not None:
            changes["groups"] = check_groups(groups)
        action = CertAction.none
        if status is not None:
            action = status_change(device.status, status)
            changes["status"] = status
        updated = self.devices.update(device, device.with_changes(**changes)) if changes else device
        return updated, self._apply(device_id, action)

    def _apply(self, device_id: str, action: CertAction) -> CutoffReport | None:
        live = [c for c in self.certs.list(device_id) if c.status in _LIVE]
        if action is CertAction.none:
            return None
        if action is CertAction.hold:
            for c in live:
                if c.status is not CertStatus.on_hold:
                    self.pki.revoke(int(c.serial), ca=KIND_CA[c.kind], hold=True)
                    self.certs.set_status(c, CertStatus.on_hold, reason=f"device disabled (was {c.status.value})",
                                          revoke_at=c.revoke_at)
            return self.broker.cut_off([device_id])
        if action is CertAction.release:
            for c in live:
                if c.status is CertStatus.on_hold:
                    self.pki.release(int(c.serial), ca=KIND_CA[c.kind])
                    was = CertStatus.superseded if c.revoke_at is not None else CertStatus.active
                    self.certs.set_status(c, was, reason=None, revoke_at=c.revoke_at)
            return self.broker.refresh()
        self._revoke_records(live, reason="device revoked")
        return self.broker.cut_off([device_id])

    def _revoke_records(self, records: list[CertRecord], reason: str) -> None:
        for c in records:
            self.pki.revoke(int(c.serial), ca=KIND_CA[c.kind])
            self.certs.set_status(c, CertStatus.revoked, reason=reason)

    def delete(self, device_id: str) -> tuple[list[str], CutoffReport]:
        """Remove a device: its certificates are revoked for good (their records stay as history)."""
        device = self.devices.require(device_id)
        live = [c for c in self.certs.list(device_id) if c.status in _LIVE]
        self._revoke_records(live, reason="device deleted")
        self.devices.delete(device)
        return [c.serial for c in live], self.broker.cut_off([device_id])

    def run_due_revocations(self, now: dt.datetime | None = None) -> int:
        """Revoke superseded certificates whose grace period is over; returns how many."""
        due = self.certs.due(now)
        owners: set[str] = set()
        for revoke_at, serial, owner, kind in due:
            record = self.certs.get(owner, serial)
            if record is not None and record.status is not CertStatus.revoked:
                self._revoke_records([record], reason="rotated; grace period over")
                if kind == "device":
                    owners.add(owner)
            self.certs.unschedule(revoke_at, serial)
        if owners:
            # A device still connected with the old certificate reconnects with its new one.
            self.broker.cut_off(sorted(owners))
        return len(due)

    def sync_crl(self) -> dict[str, int]:
        """Make the CRLs say what the registry says (it is the source of truth), then reload.

        Repairs a revocation whose CRL write or broker reload failed, or a CA directory restored
        from an older backup. Returns counts of what changed.
        """
        changed = {"revoked": 0, "held": 0, "released": 0}
        touched: set[str] = set()
        for c in self.certs.all():
            ca = KIND_CA.get(c.kind)
            if ca is None:
                continue
            crl = self.pki.revocation(int(c.serial), ca=ca)
            if c.status is CertStatus.revoked and crl != "revoked":
                self.pki.revoke(int(c.serial), ca=ca)
                changed["revoked"] += 1
            elif c.status is CertStatus.on_hold and crl is None:
                self.pki.revoke(int(c.serial), ca=ca, hold=True)
                changed["held"] += 1
            elif c.status in (CertStatus.active, CertStatus.superseded) and crl == "hold":
                self.pki.release(int(c.serial), ca=ca)
                changed["released"] += 1
            else:
                continue
            touched.add(ca)
        for ca in sorted(touched):
            self.broker.refresh(ca)
        return changed

    # -- claims -------------------------------------------------------------------------------
    def create_claim(self, template: str, claim_id: str | None, csr: str | None,
                     created_by: str | None) -> tuple[Claim, str, bytes | None]:
        """(claim, certificate PEM, private key PEM if made here)."""
        if self.templates.get(check_name("template name", template)) is None:
            raise RegistryError("not_found", f"template {template!r} not found")
        if claim_id is None and csr is not None:
            claim_id = self._csr_cn(csr)
        claim_id = check_device_id(claim_id or f"claim-{new_device_id()[4:]}")
        if self.claims.get(claim_id) is not None:
            raise RegistryError("conflict", f"claim {claim_id!r} already exists")
        try:
            cert, key = self.pki.issue_claim_certificate(claim_id, csr, self.settings.claim_cert_validity_days)
        except CSRError as exc:
            raise RegistryError("bad_request", str(exc)) from None
        claim = Claim(claim_id, template, "active", str(cert.serial), cert.fingerprint_sha256, cert.not_after, _now(),
                      created_by)
        try:
            self.claims.reserve(claim)
        except RegistryError:
            self.pki.revoke(cert.serial, ca="claim")
            raise
        self.certs.add(claim_id, "claim", cert)
        return claim, cert.pem.decode(), key

    def revoke_claim(self, claim_id: str) -> CutoffReport:
        claim = self.claims.get(claim_id) if is_valid_device_id(claim_id) else None
        if claim is None:
            raise RegistryError("not_found", f"claim {claim_id!r} not found")
        if claim.status == "revoked":
            raise RegistryError("conflict", f"claim {claim_id!r} is already revoked")
        self.claims.mark_revoked(claim_id)
        live = [c for c in self.certs.list(claim_id) if c.status in _LIVE]
        self._revoke_records(live, reason="claim revoked")
        return self.broker.cut_off(self.claims.clients(claim_id), ca="claim")

    def provision(self, claim_id: str, client_id: str, payload: bytes) -> Issued:
        """Answer one claim request; raises Rejected with the reason the device will see."""
        claim = self.claims.get(claim_id)
        if claim is None:
            raise NotOurs(claim_id)
        self.claims.client_seen(claim_id, client_id)  # so revoking the claim can drop this session
        if claim.status != "active":
            raise Rejected(f"claim {claim_id!r} is not active")
        request = parse_claim_request(payload)
        template = self.templates.get(claim.template)
        if template is None:
            raise Rejected(f"template {claim.template!r} of claim {claim_id!r} no longer exists")
        device_id = device_id_for(template, request.serial)
        decision = decide(template, claim_id, request, self.webhook, self.settings.provisioning_webhook_timeout_s)
        if not decision.allowed:
            raise Rejected(decision.reason)
        existing = self.devices.get(device_id)
        try:
            if existing is None:
                device, record = self.register(device_id, device_type=template.device_type,
                                               metadata=decision.metadata, groups=decision.groups, csr=request.csr)
            else:
                # Re-provisioning (e.g. after a factory reset): only the same serial through the same
                # template, and never a disabled or revoked device.
                if self.claims.provisioned(template.name, request.serial) != device_id:
                    raise Rejected(f"device {device_id!r} already exists and was not provisioned by this template")
                device, record = self.rotate(device_id, request.csr)
        except RegistryError as exc:
            raise Rejected(str(exc)) from None
        self.claims.remember(template.name, request.serial, device_id, claim_id)
        log.info("device provisioned by claim", extra=log_fields(device_id=device_id, claim_id=claim_id,
                                                                  template=template.name, serial=record.serial))
        return Issued(device, record, self.ca_chain)
