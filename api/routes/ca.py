"""/v1/ca: the public certificates devices and clients need to trust the platform."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Pki, SettingsDep, Viewer
from api.schemas.ca import CaChain

router = APIRouter(prefix="/v1/ca", tags=["ca"])


@router.get("", response_model=CaChain, summary="The CA chain that signs the broker and device certificates")
def ca_chain(principal: Viewer, settings: SettingsDep, pki: Pki) -> CaChain:
    s = settings
    return CaChain(ca_chain=pki.ca_chain_path.read_text(), mqtt_device_endpoint=f"mqtts://{s.mqtt_host}:{s.mqtt_device_port}",
                   mqtt_provisioning_endpoint=f"mqtts://{s.mqtt_host}:{s.mqtt_provisioning_port}")
