"""The API in-process for unit tests: the app with its dependencies replaced, and a fake registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from fleet.config import Settings
from fleet.identity.devices import Device, RegistryError


@contextmanager
def api_client(overrides: dict[Callable[..., Any], Callable[..., Any]], **settings: Any) -> Iterator[TestClient]:
    """A TestClient on the app with ``overrides`` as its dependency_overrides. No background workers
    (provisioning service, revocation sweep): nothing may reach a broker or Cassandra. A route's
    exception is the 500 a client would see, not raised into the test."""
    app = create_app(Settings.from_env({}).replace(provisioning_service=False, revocation_interval_s=0, **settings))
    app.dependency_overrides.update(overrides)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


class FakeDevices:
    """The registry's devices (onboarding.devices, the fan-out's registry); a device's one group is
    the last letter of its id. ``listed`` keeps the arguments of every ``list``."""

    def __init__(self, ids: Iterable[str] = ("d1-a", "d2-a", "d3-b", "d4-b")):
        self.devices = {i: Device(i, groups=frozenset({i[-1]})) for i in ids}
        self.listed: list[tuple] = []

    def require(self, device_id):
        if device_id not in self.devices:
            raise RegistryError("not_found", f"device {device_id!r} not found")
        return self.devices[device_id]

    def get_many(self, ids):
        return {i: self.devices[i] for i in ids if i in self.devices}

    def list(self, flt, limit, after=None):
        self.listed.append((flt, limit, after))
        ids = sorted(i for i in self.devices if after is None or i > after)
        page = ids[:limit]
        return [self.devices[i] for i in page], page[-1] if len(ids) > limit else None
