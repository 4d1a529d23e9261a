"""Mosquitto (Debian package) with mutual TLS on three listeners, each trusting one CA.

- device port: certificates of the platform (issuing) CA; the CN becomes the MQTT username and
  the client id (``use_username_as_clientid``, so no device can take over another's session),
  and the ACL confines each device to ``devices/<its id>/#``;
- service port: certificates of the services CA only (bridge, API, provisioning); full access.
  A service may connect with a device's client id: that session takeover is how a revoked
  device's live connection is dropped (fleet.identity.cutoff);
- provisioning port: claim certificates of the claim CA only; the ACL allows nothing but
  ``provisioning/<claim id>/<client id>/request`` (write) and ``.../response`` (read).

``per_listener_settings true`` gives each listener its own ACL file. Each listener has its CA's
CRL; ``reload()`` (SIGHUP) makes Mosquitto re-read CRLs and ACLs for new connections.
Anonymous access is off. Queue and in-flight limits are raised from Mosquitto's defaults
(1000 queued, 20 in flight), which would otherwise silently drop or throttle a busy bridge.

The configuration is deploy/mosquitto/: ``mosquitto.conf.tmpl`` (``string.Template``: ``${name}``
is filled in, ``$$`` is a literal ``$``) and the ACL files, used as they are. ``prepare`` renders
it for this machine; ``python -m devtools.stack.mosquitto`` renders the compose variant that
docker-compose.yml mounts (``--check``: is the committed one fresh?).
"""

from __future__ import annotations

import argparse
import getpass
import shutil
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from string import Template

from devtools.stack.component import ProcessComponent
from devtools.stack.process import StackError, port_open
from fleet.config import Settings
from fleet.identity.pki import LocalPKI

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The one source of the broker's configuration: the local stack renders it at every prepare(),
# docker-compose.yml mounts the compose rendering (committed; a unit test checks it is fresh).
TEMPLATE_DIR = PROJECT_ROOT / "deploy" / "mosquitto"
CONF_TEMPLATE = TEMPLATE_DIR / "mosquitto.conf.tmpl"
ACL_FILES = ("acl-devices", "acl-services", "acl-provisioning")
COMPOSE_CONF = PROJECT_ROOT / "deploy" / "docker" / "mosquitto" / "mosquitto.conf"


def max_packet_size(settings: Settings) -> int:
    """The broker's limit (sent to clients in CONNACK as Maximum Packet Size)."""
    return max(4 * settings.max_payload_bytes, 262144)


def render_config(settings: Settings, *, rendered_by: str, user: str, bind: str | None, pki_dir: Path,
                  data_dir: str | Path, acl_dir: str | Path) -> str:
    """mosquitto.conf from the template. ``bind`` None listens on every interface; ``pki_dir``,
    ``data_dir`` and ``acl_dir`` are paths as the broker sees them."""
    pki = LocalPKI(pki_dir)
    return Template(CONF_TEMPLATE.read_text()).substitute(
        rendered_by=rendered_by, user=user, data_dir=data_dir, acl_dir=acl_dir,
        bind=f" {bind}" if bind else "",
        max_inflight=settings.mqtt_max_inflight, max_queued=settings.mqtt_max_queued,
        max_packet_size=max_packet_size(settings),
        device_port=settings.mqtt_device_port, service_port=settings.mqtt_service_port,
        provisioning_port=settings.mqtt_provisioning_port,
        broker_cert=pki.broker_cert_path, broker_key=pki.broker_key_path,
        ca_chain=pki.ca_chain_path, crl=pki.crl_path,
        services_ca=pki.services_ca_path, services_crl=pki.services_crl_path,
        claim_ca=pki.claim_ca_path, claim_crl=pki.claim_crl_path,
    )


def render_compose_config() -> str:
    """The config docker-compose.yml mounts: the image's user and paths, the PKI volume at /pki,
    the ACL files at /mosquitto/config, default Settings (not this machine's FLEET_* variables)."""
    return render_config(Settings.from_env({}), rendered_by="python -m devtools.stack.mosquitto",
                         user="mosquitto", bind=None, pki_dir=Path("/pki"), data_dir="/mosquitto/data",
                         acl_dir="/mosquitto/config")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if not found:
        raise StackError("Mosquitto is not installed: run 'apt-get install -y mosquitto mosquitto-clients' "
                         "(the test command 'make test' installs it)")
    return found


class MosquittoComponent(ProcessComponent):
    name = "mosquitto"
    start_timeout = 20.0
    stop_timeout = 10.0

    def __init__(self, settings: Settings):
        super().__init__(settings)  # argv: prepare() looks the binary up
        self.pki = LocalPKI(settings.pki_dir)
        self.conf_dir = settings.data_dir / "mosquitto"

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / "mosquitto.conf"

    def prepare(self) -> None:
        binary = mosquitto_binary()
        self.pki.ensure()
        self.pki.service_identity(self.settings.bridge_client_id)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for name in ACL_FILES:
            shutil.copyfile(TEMPLATE_DIR / name, self.conf_dir / name)
        self.conf_path.write_text(self.render_config())
        self.process.argv = [binary, "-c", str(self.conf_path)]

    def render_config(self) -> str:
        return render_config(self.settings, rendered_by="'fleet stack up'", user=getpass.getuser(),
                             bind=self.settings.mqtt_host, pki_dir=self.settings.pki_dir,
                             data_dir=self.conf_dir, acl_dir=self.conf_dir)

    def ports(self) -> list[tuple[str, int, str]]:
        s = self.settings
        return [(s.mqtt_host, port, "Mosquitto")
                for port in (s.mqtt_device_port, s.mqtt_service_port, s.mqtt_provisioning_port)]

    def healthy(self) -> bool:
        return port_open(self.settings.mqtt_host, self.settings.mqtt_service_port) and self._service_login()

    def _service_login(self) -> bool:
        """A real MQTT CONNECT over mTLS with the bridge identity: proves TLS, CA and ACL files load."""
        import paho.mqtt.client as mqtt

        cert, key = self.pki.service_identity(self.settings.bridge_client_id)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"health-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(self.pki.ca_chain_path), certfile=str(cert), keyfile=str(key),
                       cert_reqs=ssl.CERT_REQUIRED)
        try:
            rc = client.connect(self.settings.mqtt_host, self.settings.mqtt_service_port, keepalive=10)
            client.disconnect()
            return rc == 0
        except OSError:
            return False

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its config, ACL and CRL."""
        pid = self.process.pid()
        if pid:
            subprocess.run(["kill", "-HUP", str(pid)], check=False)

    def endpoints(self) -> dict[str, str]:
        s = self.settings
        return {
            "devices (mTLS)": f"mqtts://{s.mqtt_host}:{s.mqtt_device_port}",
            "services (mTLS)": f"mqtts://{s.mqtt_host}:{s.mqtt_service_port}",
            "provisioning": f"mqtts://{s.mqtt_host}:{s.mqtt_provisioning_port}",
            "CA chain": str(self.pki.ca_chain_path),
        }


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the compose rendering that docker-compose.yml mounts."""
    parser = argparse.ArgumentParser(prog="python -m devtools.stack.mosquitto", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is not a fresh render")
    args = parser.parse_args(argv)
    text = render_compose_config()
    current = COMPOSE_CONF.read_text() if COMPOSE_CONF.exists() else None
    if args.check:
        if current != text:
            print(f"{COMPOSE_CONF.relative_to(PROJECT_ROOT)} is stale: run python -m devtools.stack.mosquitto",
                  file=sys.stderr)
            return 1
        return 0
    COMPOSE_CONF.parent.mkdir(parents=True, exist_ok=True)
    COMPOSE_CONF.write_text(text)
    print(f"wrote {COMPOSE_CONF.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
