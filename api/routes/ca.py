"""/v1/ca: the public certificates devices and clients need to trust the platform."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.deps import Viewer

router = APIRouter(prefix="/v1/ca", tags=["ca"])


class CaChain(BaseModel):
    ca_chain: str
    mqtt_device_endpoint: str
    mqtt_provisioning_endpoint: str


@router.get("", response_model=CaChain, summary="The CA chain that signs the broker and device certificates")
def ca_chain(principal: Viewer, request: Request) -> CaChain:
    s, pki = request.app.state.settings, request.app.state.pki
    return CaChain(ca_chain=pki.ca_chain_path.read_text(), mqtt_device_endpoint=f"mqtts://{s.mqtt_host}:{s.mqtt_device_port}",
                   mqtt_provisioning_endpoint=f"mqtts://{s.mqtt_host}:{s.mqtt_provisioning_port}")
