"""The shadow job's per-record work, free of Flink: one input record + a device's state -> outputs.

``handle`` takes the record's Kafka key (the device id), its raw JSON, the wall-clock time and a
``DeviceState`` (the job's keyed Flink state behind a small interface, a dict in unit tests) and
returns ``Output``s: what goes to the downlink, the verdicts, Cassandra and the dead letters.
fleet.shadow.domain does the shadow rules; this module routes records, checks envelopes and shapes
the output records. Records of the three input topics are told apart by their content: envelopes
(schemas/kafka/envelope) carry ``type`` (shadow_update, shadow_get, status), operator changes
(schemas/kafka/shadow-desired) carry ``request_id`` and no ``type``.

Time: every record is applied in arrival order per device (Kafka partition order; each topic is
keyed by device id), never reordered by a timestamp in it. Metadata, ``updated_at``, history ``ts``
and ``created_at`` are the job's wall clock when it handles the record (``now``), the platform's
time like AWS's, not the device's. Connectivity times come from the bridge's ``ingest_ts``.

Dead letters: records that are not JSON, not a known envelope or operator change, whose key does
not match their device id, and device requests the domain rejects as malformed. A device's
version conflict, rate limiting and a get of a missing shadow are protocol answers
(``shadow/rejected``), not dead letters: a device flooding them must not flood that topic.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.contract.topics import is_valid_device_id, shadow_topic_suffix
from fleet.shadow import domain as dom

SOURCE = "shadow-job"

# Output kinds (the job's output streams).
DOWNLINK = "downlink"
VERDICT = "verdict"
SHADOW = "shadow"
HISTORY = "history"
CONNECTIVITY = "connectivity"
DEAD_LETTER = "dead_letter"

# Row fields per Cassandra output, in order (see schemas/cql/004_shadow.cql); write_ts is the
# USING TIMESTAMP of the write, in microseconds.
SHADOW_FIELDS = ["device_id", "name", "version", "desired", "reported", "metadata", "updated_at", "write_ts"]
HISTORY_FIELDS = ["device_id", "name", "version", "ts", "source_kind", "actor", "client_token", "patch",
                  "desired", "reported", "write_ts"]
CONNECTIVITY_FIELDS = ["device_id", "connected", "connected_since", "last_seen", "disconnect_reason",
                       "firmware_version", "write_ts"]

# Domain rejections of device input that mean a malformed request (dead-lettered as well).
MALFORMED = {dom.INVALID_REQUEST, dom.INVALID_SHADOW_NAME, dom.FORBIDDEN_SECTION, dom.INVALID_KEY, dom.TOO_DEEP,
             dom.INVALID_VALUE, dom.TOO_MANY_KEYS, dom.STATE_TOO_LARGE}
# Dead-letter reasons (schemas/kafka/dead-letter's enum) for those codes; the detail names the code.
_DEAD_REASON = {dom.TOO_DEEP: "too_deep", dom.TOO_MANY_KEYS: "payload_too_large",
                dom.STATE_TOO_LARGE: "payload_too_large"}

_US_PER_VERSION = 1_000_000


class DeviceState(Protocol):
    """One device's keyed state: documents and token buckets per shadow name, connectivity."""

    def document(self, name: str) -> str | None: ...

    def put_document(self, name: str, encoded: str) -> None: ...

    def documents(self) -> Iterable[tuple[str, str]]: ...

    def bucket(self, name: str) -> str | None: ...

    def put_bucket(self, name: str, encoded: str) -> None: ...

    def connectivity(self) -> str | None: ...

    def put_connectivity(self, encoded: str) -> None: ...


class MemoryState:
    """A DeviceState in dicts (unit tests)."""

    def __init__(self) -> None:
        self.docs: dict[str, str] = {}
        self.buckets: dict[str, str] = {}
        self.conn: str | None = None

    def document(self, name: str) -> str | None:
        return self.docs.get(name)

    def put_document(self, name: str, encoded: str) -> None:
        self.docs[name] = encoded

    def documents(self) -> Iterable[tuple[str, str]]:
        return list(self.docs.items())

    def bucket(self, name: str) -> str | None:
        return self.buckets.get(name)

    def put_bucket(self, name: str, encoded: str) -> None:
        self.buckets[name] = encoded

    def connectivity(self) -> str | None:
        return self.conn

    def put_connectivity(self, encoded: str) -> None:
        self.conn = encoded


@dataclass(frozen=True, slots=True)
class Output:
    kind: str
    # DOWNLINK / VERDICT / DEAD_LETTER: the record (a JSON object); SHADOW / HISTORY / CONNECTIVITY:
    # the row as a dict of its *_FIELDS.
    value: dict[str, Any]
    # The Kafka key (device id) for Kafka outputs; None when unknown (a dead letter).
    key: str | None = None


# --- helpers -----------------------------------------------------------------------------------

def shadow_write_ts(version: int, updated_at: int) -> int:
    """The USING TIMESTAMP (us) of a shadow's rows: ordered by version first, so a replay after a
    restart never puts an older version over a newer one; within one version (a replay that took
    another path) the later write wins the whole row instead of merging cell by cell."""
    return version * _US_PER_VERSION + updated_at % _US_PER_VERSION


def encode_bucket(bucket: dom.TokenBucket) -> str:
    return f"{bucket.milli_tokens},{bucket.updated_at}"


def decode_bucket(text: str | None) -> dom.TokenBucket | None:
    if not text:
        return None
    milli, updated = text.split(",")
    return dom.TokenBucket(int(milli), int(updated))


def dead_letter(reason: str, detail: str, raw: str, device_id: str | None, mqtt_topic: str, ingest_ts: int) -> Output:
    raw_bytes = raw.encode()
    return Output(DEAD_LETTER, {
        "type": "dead-letter", "reason": reason, "detail": detail, "source": SOURCE, "mqtt_topic": mqtt_topic,
        "device_id": device_id, "ingest_ts": ingest_ts, "raw_b64": base64.b64encode(raw_bytes).decode("ascii"),
        "raw_size": len(raw_bytes), "raw_truncated": False,
    }, device_id)


def downlink(device_id: str, kind: str, name: str, payload: dict[str, Any], version: int | None, now: int) -> Output:
    return Output(DOWNLINK, {"device_id": device_id, "suffix": shadow_topic_suffix(kind, name), "payload": payload,
                             "id": f"{name}@{version if version is not None else '-'}:{kind}",
                             "created_at": now, "expires_at": None}, device_id)


def _load(state: DeviceState, device_id: str, name: str) -> dom.ShadowDocument:
    text = state.document(name)
    return dom.decode(text) if text is not None else dom.ShadowDocument.empty(device_id, name)


def _stored(state: DeviceState, accepted: dom.Accepted) -> list[Output]:
    """Store an accepted change: Flink state, then the Cassandra shadow and history rows."""
    change = accepted.change
    if change is None:  # a no-op: nothing new to store
        return []
    doc = accepted.document
    state.put_document(doc.name, dom.encode(doc))
    ts = doc.updated_at if doc.updated_at is not None else change.ts
    write_ts = shadow_write_ts(doc.version, ts)
    dumps = dom.dumps
    return [
        Output(SHADOW, {"device_id": doc.device_id, "name": doc.name, "version": doc.version,
                        "desired": dumps(doc.desired), "reported": dumps(doc.reported),
                        "metadata": dumps(doc.metadata), "updated_at": ts, "write_ts": write_ts}),
        Output(HISTORY, {"device_id": change.device_id, "name": change.shadow_name, "version": change.version,
                         "ts": change.ts, "source_kind": change.source_kind, "actor": change.actor,
                         "client_token": change.client_token, "patch": dumps(change.patch),
                         "desired": dumps(change.desired), "reported": dumps(change.reported),
                         "write_ts": write_ts}),
    ]


# --- the entry point ---------------------------------------------------------------------------

DEFAULT_RULES = dom.ShadowRules()  # frozen


def handle(key: str | None, raw: str, now: int, state: DeviceState, rules: dom.ShadowRules = DEFAULT_RULES) -> list[Output]:
    """Everything one input record causes. Never raises on bad input: that becomes dead letters."""
    device = key if key and is_valid_device_id(key) else None
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return [dead_letter("invalid_json", f"not JSON: {e}", raw, device, "", now)]
    if not isinstance(record, dict):
        return [dead_letter("invalid_envelope", "not a JSON object", raw, device, "", now)]
    kind = record.get("type")
    if kind is None and "request_id" in record:
        return _operator_change(device, record, raw, now, state, rules)
    topic = record.get("mqtt_topic")
    mqtt_topic: str = topic if isinstance(topic, str) else ""
    ingested = record.get("ingest_ts")
    ingest_ts: int = ingested if type(ingested) is int else now
    if kind not in ("shadow_update", "shadow_get", "status"):
        return [dead_letter("invalid_envelope", f"unknown record type {kind!r}", raw, device, mqtt_topic, ingest_ts)]
    device_id = record.get("device_id")
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        return [dead_letter("invalid_device_id", f"device_id {device_id!r} is not well-formed", raw, device,
                            mqtt_topic, ingest_ts)]
    if device_id != key:  # the state is the key's: another device's record must not touch it
        return [dead_letter("key_mismatch", f"record key {key!r} is not its device_id {device_id!r}", raw,
                            device_id, mqtt_topic, ingest_ts)]
    payload = record.get("payload")
    if kind == "status":
        return _status(device_id, payload, raw, mqtt_topic, ingest_ts, now, state)
    name = record.get("shadow", dom.CLASSIC)
    if name is None:
        name = dom.CLASSIC
    if not isinstance(name, str) or dom.validate_shadow_name(name, rules) is not None:
        bad = dom.Rejection(dom.INVALID_SHADOW_NAME, f"shadow name {name!r} is not valid")
        # Answered on the classic shadow's topic: the name cannot be a topic level.
        return [downlink(device_id, "rejected", dom.CLASSIC, bad.message_json(), None, now),
                dead_letter("schema_violation", f"{bad.code}: {bad.message}", raw, device_id, mqtt_topic, ingest_ts)]
    allowed, bucket = dom.take(decode_bucket(state.bucket(name)), now, rules)
    state.put_bucket(name, encode_bucket(bucket))
    token = payload.get("client_token") if isinstance(payload, dict) else None
    token = token if isinstance(token, str) else None
    if not allowed:
        return [downlink(device_id, "rejected", name, dom.rate_limited(token, rules).message_json(), None, now)]
    if kind == "shadow_get":
        return _device_get(device_id, name, payload, raw, mqtt_topic, ingest_ts, now, state, rules)
    return _device_update(device_id, name, payload, raw, mqtt_topic, ingest_ts, now, state, rules)


def _device_rejected(device_id: str, name: str, rejection: dom.Rejection, raw: str, mqtt_topic: str,
                     ingest_ts: int, now: int) -> list[Output]:
    out = [downlink(device_id, "rejected", name, rejection.message_json(), rejection.version, now)]
    if rejection.code in MALFORMED:
        out.append(dead_letter(_DEAD_REASON.get(rejection.code, "schema_violation"),
                               f"{rejection.code}: {rejection.message}", raw, device_id, mqtt_topic, ingest_ts))
    return out


def _device_update(device_id: str, name: str, payload: Any, raw: str, mqtt_topic: str, ingest_ts: int, now: int,
                   state: DeviceState, rules: dom.ShadowRules) -> list[Output]:
    update = dom.parse_update(payload, dom.Source(dom.DEVICE, device_id), now, rules)
    if isinstance(update, dom.Rejection):
        return _device_rejected(device_id, name, update, raw, mqtt_topic, ingest_ts, now)
    result = dom.apply_update(_load(state, device_id, name), update, rules)
    if isinstance(result, dom.Rejection):
        return _device_rejected(device_id, name, result, raw, mqtt_topic, ingest_ts, now)
    out = [downlink(device_id, "accepted", name, result.accepted, result.document.version, now)]
    out += _stored(state, result)
    if result.delta is not None:
        out.append(downlink(device_id, "delta", name, result.delta, result.document.version, now))
    return out


def _device_get(device_id: str, name: str, payload: Any, raw: str, mqtt_topic: str, ingest_ts: int, now: int,
                state: DeviceState, rules: dom.ShadowRules) -> list[Output]:
    token = dom.parse_get(payload, rules)
    if isinstance(token, dom.Rejection):
        return _device_rejected(device_id, name, token, raw, mqtt_topic, ingest_ts, now)
    doc = _load(state, device_id, name)
    answer = dom.handle_get(doc, now, token)
    if isinstance(answer, dom.Rejection):
        return _device_rejected(device_id, name, answer, raw, mqtt_topic, ingest_ts, now)
    return [downlink(device_id, "document", name, answer, doc.version, now)]


def _verdict(request_id: str, device_id: str, name: str, now: int, result: dom.Accepted | dom.Rejection,
             current: int | None) -> Output:
    if isinstance(result, dom.Rejection):
        value: dict[str, Any] = {"request_id": request_id, "device_id": device_id, "shadow": name,
                                 "status": result.http_status, "code": result.code, "message": result.message,
                                 "version": result.version if result.version is not None else current, "ts": now}
    else:
        value = {"request_id": request_id, "device_id": device_id, "shadow": name, "status": 200,
                 "version": result.document.version, "document": result.document.to_json(), "ts": now}
    return Output(VERDICT, value, device_id)


def _operator_change(device: str | None, record: dict[str, Any], raw: str, now: int, state: DeviceState,
                     rules: dom.ShadowRules) -> list[Output]:
    request_id = record.get("request_id")
    device_id = record.get("device_id")
    name = record.get("shadow", dom.CLASSIC)
    problem = None
    if not isinstance(request_id, str) or not request_id:
        problem = "request_id must be a non-empty string"
    elif not isinstance(device_id, str) or not is_valid_device_id(device_id):
        problem = f"device_id {device_id!r} is not well-formed"
    elif device_id != device:
        return [dead_letter("key_mismatch", f"record key {device!r} is not its device_id {device_id!r}", raw,
                            device_id, "", now)]
    elif not isinstance(name, str):
        problem = "shadow must be a string"
    elif not isinstance(record.get("actor"), str):
        problem = "actor must be a string"
    elif not isinstance(record.get("state"), dict) or set(record["state"]) != {dom.DESIRED}:
        problem = "state must be {\"desired\": object|null}"
    if problem is not None:
        out = [dead_letter("schema_violation", f"operator change: {problem}", raw, device, "", now)]
        if isinstance(request_id, str) and request_id and isinstance(device_id, str):
            # The API is waiting for an answer: a 400 rather than its timeout.
            out.append(Output(VERDICT, {"request_id": request_id, "device_id": device_id,
                                        "shadow": name if isinstance(name, str) else "", "status": 400,
                                        "code": dom.INVALID_REQUEST, "message": problem, "version": None, "ts": now},
                              device_id))
        return out
    assert isinstance(device_id, str) and isinstance(request_id, str) and isinstance(name, str)
    body = {"state": record["state"], "version": record.get("version"), "client_token": record.get("client_token")}
    update = dom.parse_update({k: v for k, v in body.items() if v is not None or k == "state"},
                              dom.Source(dom.OPERATOR, record["actor"]), now, rules)
    doc = _load(state, device_id, name)
    if isinstance(update, dom.Rejection):
        return [_verdict(request_id, device_id, name, now, update, doc.version)]
    result = dom.apply_update(doc, update, rules)
    out = [_verdict(request_id, device_id, name, now, result, doc.version)]
    if isinstance(result, dom.Accepted):
        out += _stored(state, result)
        if result.delta is not None:
            out.append(downlink(device_id, "delta", name, result.delta, result.document.version, now))
    return out


def _status(device_id: str, payload: Any, raw: str, mqtt_topic: str, ingest_ts: int, now: int,
            state: DeviceState) -> list[Output]:
    if not isinstance(payload, dict) or type(payload.get("online")) is not bool:
        return [dead_letter("schema_violation", "status payload needs a boolean online", raw, device_id, mqtt_topic,
                            ingest_ts)]
    text = state.connectivity()
    conn: dict[str, Any] = json.loads(text) if text else {"connected": False, "connected_since": None,
                                                           "last_seen": None, "disconnect_reason": None,
                                                           "firmware_version": None, "write_ts": 0}
    online = payload["online"]
    if online and not conn["connected"]:
        conn["connected_since"] = ingest_ts
    conn["connected"] = online
    conn["last_seen"] = max(ingest_ts, conn["last_seen"] or 0)
    if not online:
        reason = payload.get("reason")
        conn["disconnect_reason"] = reason if isinstance(reason, str) and reason else "unknown"
    firmware = payload.get("firmware_version")
    if isinstance(firmware, str) and firmware:
        conn["firmware_version"] = firmware
    # Strictly increasing per device: a replayed older status never wins, two in one ms never merge.
    conn["write_ts"] = max(conn["write_ts"] + 1, ingest_ts * 1000)
    state.put_connectivity(json.dumps(conn, separators=(",", ":")))
    out = [Output(CONNECTIVITY, {"device_id": device_id, **conn})]
    if online:
        # Every shadow with a pending delta, so an offline device converges without asking.
        for name, encoded in state.documents():
            doc = dom.decode(encoded)
            message = dom.on_connect(doc, now)
            if message is not None:
                out.append(downlink(device_id, "delta", name, message, doc.version, now))
    return out
