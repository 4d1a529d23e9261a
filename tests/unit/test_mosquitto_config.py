"""The generated Mosquitto config: one listener per trust anchor, each with its own ACL. One
template set (deploy/mosquitto/) serves the local stack and compose."""

import re

import pytest

from devtools.stack.mosquitto import (
    COMPOSE_CONF,
    TEMPLATE_DIR,
    MosquittoComponent,
    main,
    render_compose_config,
)
from fleet.config import Settings

ACL_DEVICES, ACL_SERVICES, ACL_PROVISIONING = (
    (TEMPLATE_DIR / name).read_text() for name in ("acl-devices", "acl-services", "acl-provisioning"))


@pytest.fixture(scope="module")
def listeners(tmp_path_factory):
    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path_factory.mktemp("var"))})
    conf = MosquittoComponent(settings).render_config()
    assert "per_listener_settings true" in conf
    blocks = re.split(r"\n(?=listener )", conf)[1:]
    parsed = {}
    for block in blocks:
        lines = dict(line.split(" ", 1) for line in block.strip().splitlines() if line and not line.startswith("#"))
        parsed[int(lines["listener"].split()[0])] = lines
    return settings, parsed


@pytest.mark.parametrize("port_field, cafile, crlfile, acl, clientid", [
    ("mqtt_device_port", "ca-chain.crt", "crl.pem", "acl-devices", "true"),
    ("mqtt_service_port", "services-ca.crt", "services-crl.pem", "acl-services", "false"),
    ("mqtt_provisioning_port", "claim-ca.crt", "claim-crl.pem", "acl-provisioning", "false"),
])
def test_each_listener_trusts_one_ca_and_has_its_own_acl(listeners, port_field, cafile, crlfile, acl, clientid):
    settings, parsed = listeners
    lines = parsed[getattr(settings, port_field)]
    assert lines["cafile"].endswith("/" + cafile)
    assert lines["crlfile"].endswith("/" + crlfile)
    assert lines["acl_file"].endswith("/" + acl)
    assert lines["require_certificate"] == "true" and lines["use_identity_as_username"] == "true"
    assert lines["allow_anonymous"] == "false"
    # Client id = CN only for devices: no device can take over another device's session.
    assert lines["use_username_as_clientid"] == clientid


def test_acls():
    assert ACL_DEVICES.strip().splitlines()[-1] == "pattern readwrite devices/%u/#"
    assert ACL_SERVICES.strip().splitlines()[-2:] == ["pattern read $SYS/#", "pattern readwrite #"]  # "topic" = anonymous only
    rules = [line for line in ACL_PROVISIONING.splitlines() if line and not line.startswith("#")]
    assert rules == ["pattern write provisioning/%u/%c/request", "pattern read provisioning/%u/%c/response"]
    assert "devices/" not in ACL_PROVISIONING


def _global_options(conf: str) -> dict[str, str]:
    """The options before the first listener (the broker-wide ones)."""
    head = re.split(r"\n(?=listener )", conf)[0]
    return dict(line.split(" ", 1) for line in head.splitlines() if line and not line.startswith("#"))


def test_local_and_compose_brokers_both_persist_and_autosave(tmp_path):
    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})
    local = _global_options(MosquittoComponent(settings).render_config())
    compose = _global_options(COMPOSE_CONF.read_text())
    for options in (local, compose):
        # The queued bridge messages survive a broker restart only up to the last save (30 s).
        assert options["persistence"] == "true"
        assert options["autosave_interval"] == "30"
        assert options["persistence_location"]
    for key in ("max_queued_messages", "max_packet_size", "per_listener_settings"):
        assert local[key] == compose[key], key


def test_the_committed_compose_config_is_a_fresh_render():
    # docker-compose.yml mounts this file; regenerate it with `python -m devtools.stack.mosquitto`.
    assert COMPOSE_CONF.read_text() == render_compose_config()
    assert main(["--check"]) == 0


@pytest.mark.parametrize("port", ["8883", "8884", "8885"])
def test_compose_listens_on_every_interface_with_the_mounted_pki_and_acls(port):
    listener = next(b for b in re.split(r"\n(?=listener )", COMPOSE_CONF.read_text()) if b.startswith(f"listener {port}\n"))
    options = dict(line.split(" ", 1) for line in listener.strip().splitlines() if line and not line.startswith("#"))
    assert options["cafile"].startswith("/pki/") and options["crlfile"].startswith("/pki/")
    assert options["acl_file"].startswith("/mosquitto/config/acl-")


def test_the_local_stack_copies_the_acl_files_as_they_are(tmp_path, monkeypatch):
    import devtools.stack.mosquitto as mosquitto

    settings = Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})
    component = MosquittoComponent(settings)
    monkeypatch.setattr(mosquitto, "mosquitto_binary", lambda: "/usr/sbin/mosquitto")
    monkeypatch.setattr(component.pki, "ensure", lambda: None)
    monkeypatch.setattr(component.pki, "service_identity", lambda name: (None, None))
    component.prepare()
    for name in ("acl-devices", "acl-services", "acl-provisioning"):
        assert (component.conf_dir / name).read_text() == (TEMPLATE_DIR / name).read_text()
    assert component.conf_path.read_text() == component.render_config()
    assert component.process.argv == ["/usr/sbin/mosquitto", "-c", str(component.conf_path)]
