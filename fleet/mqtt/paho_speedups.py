"""A measured speed-up for paho-mqtt 2.2's MQTT 5 packet decoding.

paho builds its full property tables (~30 names, per-type lists, ``list.index`` lookups) in
every ``Properties()`` constructor, and ``unpack()`` first runs ``clear()`` over all names. It
does this for every received PUBLISH and PUBACK, even when the packet carries no properties
(the common case): measured ~60 us of the ~90 us paho spends per received message here.

``install()`` swaps the class paho's packet decoder instantiates for a subclass that builds
the tables only when something actually needs them and skips ``unpack()`` for an empty
property block. Behaviour is unchanged (tests/unit/test_paho_speedups.py compares decoding
with and without it); only paho 2.2.x is patched, any other version is left alone.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

_PATCHED_VERSIONS = ("2.2.",)
_TABLES = ("types", "names", "properties")


class LazyProperties(Properties):
    def __init__(self, packetType: int):  # noqa: N803 (paho's name)
        object.__setattr__(self, "packetType", packetType)

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: build paho's tables on first real use.
        if name in _TABLES:
            Properties.__init__(self, self.packetType)
            return object.__getattribute__(self, name)
        raise AttributeError(name)

    def unpack(self, buffer):
        if buffer[:1] == b"\x00":  # property length 0: nothing to decode
            return self, 1
        return Properties.unpack(self, buffer)


def _supported() -> bool:
    return paho.mqtt.__version__.startswith(_PATCHED_VERSIONS)


_PUBACK = struct.Struct("!BBH")


def ack_many(client: mqtt.Client, mids: Iterable[int]) -> None:
    """PUBACK several QoS 1 messages with one queued write (one TLS record, one syscall).

    ``client.ack()`` queues one packet per message, and paho writes each with its own
    ``send()``: at thousands of messages a second that is a TLS record and a syscall per
    message. The concatenated PUBACKs are byte-for-byte what the separate calls would send.
    Call on the thread that drives the client.
    """
    if not _supported():
        for mid in mids:
            client.ack(mid, 1)
        return
    blob = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
    if blob:
        client._packet_queue(mqtt.PUBACK, blob, 0, 1)


def install() -> bool:
    """Patch paho's decoder (idempotent); returns whether the patch is active."""
    if _packet.Properties is LazyProperties:
        return True
    if not _supported():
        log.info("paho %s: MQTT 5 decoding speed-up not applied (written for 2.2)", paho.mqtt.__version__)
        return False
    # The patch itself: rebinding a class name in paho's module, which mypy forbids for any type.
    _packet.Properties = LazyProperties  # type: ignore[misc]
    return True


def uninstall() -> None:
    _packet.Properties = Properties  # type: ignore[misc]  # undoing the patch (see install)
