"""What Mosquitto's own log says about a client it threw out, as data.

Some device faults never reach the platform as a message: a packet above the broker's
``max_packet_size`` makes Mosquitto disconnect the device and discard the packet, so there is
nothing to dead-letter. The broker does log it, and with ``log_dest topic`` it publishes each log
line on ``$SYS/broker/log/<level>``; the bridge subscribes and counts these disconnects by reason
so that an operator sees them (fleet_broker_disconnects{reason=...}) instead of a device that
silently loops, resending the same packet after every reconnect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Mosquitto logs client disconnects at NOTICE level.
BROKER_NOTICE_LOG_TOPIC = "$SYS/broker/log/N"

# Mosquitto 2.0's do_disconnect() wording -> our reason label. Only the ones that point at a
# misbehaving client; a plain "disconnected." or "closed its connection." is normal life.
_REASONS = {
    "disconnected due to oversize packet.": "packet_too_large",
    "disconnected due to oversize payload.": "payload_too_large",
    "disconnected due to malformed packet.": "malformed_packet",
    "disconnected due to protocol error.": "protocol_error",
    "disconnected, not authorised.": "not_authorised",
    "has exceeded timeout, disconnecting.": "keepalive_timeout",
}
REASONS = frozenset(_REASONS.values())

# "<epoch or formatted time>: Client <id> <wording>"; a client id has no spaces in MQTT practice
# (Mosquitto prints "<unknown>" before CONNECT).
_LINE = re.compile(r"^(?:[^ ]+: )?Client (?P<client>\S+) (?P<what>.+)$")


@dataclass(frozen=True, slots=True)
class Disconnect:
    client_id: str | None  # None: the broker did not know it yet ("<unknown>")
    reason: str


def parse_disconnect(line: str | bytes | bytearray) -> Disconnect | None:
    """A misbehaving client's disconnect from one broker log line (an MQTT payload or text), else None."""
    if isinstance(line, (bytes, bytearray)):
        line = line.decode("utf-8", "replace")
    match = _LINE.match(line.strip())
    if match is None:
        return None
    reason = _REASONS.get(match["what"])
    if reason is None:
        return None
    client = match["client"]
    return Disconnect(None if client == "<unknown>" else client, reason)
