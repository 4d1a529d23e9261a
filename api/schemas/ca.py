"""/v1/ca bodies."""

from __future__ import annotations

from api.schemas.base import ResponseModel


class CaChain(ResponseModel):
    ca_chain: str
    mqtt_device_endpoint: str
    mqtt_provisioning_endpoint: str
