"""Raw MQTT packets, for tests that must see what a bare TLS client sees (no paho in between)."""

from __future__ import annotations

import socket


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _remaining_length(len(body)) + body


def read_packet(sock: socket.socket) -> bytes:
    """One MQTT packet, header included; b"" at EOF."""
    first = sock.recv(1)
    if not first:
        return b""
    header, length, shift = bytearray(first), 0, 0
    while True:
        byte = sock.recv(1)[0]
        header.append(byte)
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return bytes(header) + body
