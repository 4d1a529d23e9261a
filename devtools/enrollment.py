"""Enrollment of simulated and test devices through the registry, as an operator's API call would.

The device makes its key and CSR (device.identity); the registry (fleet.identity.onboarding) records the
device and issues the certificate, so the bridge's active-device check lets it through. A local
identity whose certificate the registry does not know any more (e.g. after ``stack down
--wipe``) is enrolled again with the same key; its seq file is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from device.identity import DeviceIdentity, install_certificate, prepare_csr
from fleet.config import Settings
from fleet.identity.devices import DeviceStatus
from fleet.identity.onboarding import Onboarding


def _local_serial(identity: DeviceIdentity) -> str | None:
    try:
        return str(x509.load_pem_x509_certificate(identity.cert_path.read_bytes()).serial_number)
    except (OSError, ValueError):
        return None


class RegistryEnrollment:
    def __init__(self, onboarding: Onboarding, *, device_type: str = "simulated",
                 groups: Iterable[str] = ("simulated",)):
        self.onboarding = onboarding
        self.device_type = device_type
        self.groups = list(groups)

    @classmethod
    def open(cls, settings: Settings, **kwargs) -> RegistryEnrollment:
        from fleet.infra.cassandra import CassandraSessions

        return cls(Onboarding(settings, CassandraSessions(settings).get()), **kwargs)

    def enroll(self, device_id: str, directory: Path) -> DeviceIdentity:
        identity = DeviceIdentity(device_id, Path(directory))
        device = self.onboarding.devices.get(device_id)
        if (device is not None and device.status is DeviceStatus.active and identity.is_enrolled()
                and device.cert_serial == _local_serial(identity)):
            return identity
        identity, csr = prepare_csr(device_id, directory)
        if device is None:
            _, record = self.onboarding.register(device_id, device_type=self.device_type, groups=self.groups,
                                                 csr=csr.decode())
        else:
            _, record = self.onboarding.rotate(device_id, csr.decode(), grace_s=0)
        assert record.pem is not None  # a record just issued always carries its PEM
        install_certificate(identity, record.pem.encode(), self.onboarding.ca_chain.encode())
        return identity
