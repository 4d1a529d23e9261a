"""The CA interface: LocalPKI implements every member with the same signature; the factory picks it."""

from __future__ import annotations

import inspect

from fleet.config import Settings
from fleet.identity.ca import CertificateAuthority, pki_from_settings
from fleet.identity.cutoff import BrokerControl
from fleet.identity.pki import LocalPKI


def _members(cls) -> dict[str, object]:
    return {name: value for name, value in vars(cls).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def test_local_pki_implements_every_member_of_the_interface_with_the_same_signature():
    wanted = _members(CertificateAuthority)
    assert {"ca_chain_path", "issue_device_certificate", "issue_claim_certificate", "service_identity", "revoke",
            "release", "revocation", "canary_paths"} <= set(wanted)
    for name, member in wanted.items():
        implemented = inspect.getattr_static(LocalPKI, name)
        if isinstance(member, property):
            assert isinstance(implemented, property), name
        else:
            assert inspect.signature(implemented) == inspect.signature(member), name


def test_the_factory_builds_the_file_backed_ca_from_the_settings(tmp_path):
    settings = Settings(var_dir=tmp_path, cert_validity_days=90)
    pki = pki_from_settings(settings)
    assert isinstance(pki, LocalPKI) and isinstance(pki, CertificateAuthority)
    assert pki.dir == settings.pki_dir and pki.validity_days == 90
    assert pki.ca_chain_path == settings.pki_dir / "ca-chain.crt"


def test_the_broker_cut_off_takes_its_ca_from_the_factory_unless_given_one(tmp_path):
    settings = Settings(var_dir=tmp_path)
    default = BrokerControl(settings).pki
    assert isinstance(default, LocalPKI) and default.dir == settings.pki_dir
    given = LocalPKI(tmp_path / "other")
    assert BrokerControl(settings, given).pki is given
