package fleet.flink.shadow;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;

import fleet.flink.shadow.ShadowDomain.Accepted;
import fleet.flink.shadow.ShadowDomain.Document;
import fleet.flink.shadow.ShadowDomain.Rejection;
import fleet.flink.shadow.ShadowDomain.Source;
import fleet.flink.shadow.ShadowDomain.TokenBucket;
import fleet.flink.shadow.ShadowDomain.Update;

/**
 * The shadow job's per-record work: the Java twin of jobs/shadow/logic.py ({@code handle}), which is
 * the readable reference (its docstring explains the routing, the dead letters and the times).
 * One input record + a device's state -> outputs, with the same kinds, keys and JSON.
 */
final class ShadowLogic implements Serializable {
    private static final long serialVersionUID = 1L;

    static final String SOURCE = "shadow-job";

    enum Kind { DOWNLINK, VERDICT, SHADOW, HISTORY, CONNECTIVITY, DEAD_LETTER }

    static final String[] SHADOW_FIELDS = {"device_id", "name", "version", "desired", "reported", "metadata", "updated_at",
        "write_ts"};
    static final String[] HISTORY_FIELDS = {"device_id", "name", "version", "ts", "source_kind", "actor", "client_token",
        "patch", "desired", "reported", "write_ts"};
    static final String[] CONNECTIVITY_FIELDS = {"device_id", "connected", "connected_since", "last_seen",
        "disconnect_reason", "firmware_version", "write_ts"};

    /** Domain rejections of device input that mean a malformed request (dead-lettered as well). */
    private static final Set<String> MALFORMED = Set.of(ShadowDomain.INVALID_REQUEST, ShadowDomain.INVALID_SHADOW_NAME,
            ShadowDomain.FORBIDDEN_SECTION, ShadowDomain.INVALID_KEY, ShadowDomain.TOO_DEEP, ShadowDomain.INVALID_VALUE,
            ShadowDomain.TOO_MANY_KEYS, ShadowDomain.STATE_TOO_LARGE);
    private static final Map<String, String> DEAD_REASON = Map.of(ShadowDomain.TOO_DEEP, "too_deep",
            ShadowDomain.TOO_MANY_KEYS, "payload_too_large", ShadowDomain.STATE_TOO_LARGE, "payload_too_large");

    private static final long US_PER_VERSION = 1_000_000L;
    /** fleet.contract.topics.DEVICE_ID_PATTERN (fullmatch). */
    private static final Pattern DEVICE_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9_-]{0,63}");

    /** One device's keyed state: documents and token buckets per shadow name, connectivity. */
    interface DeviceState {
        String document(String name) throws Exception;

        void putDocument(String name, String encoded) throws Exception;

        Iterable<Map.Entry<String, String>> documents() throws Exception;

        String bucket(String name) throws Exception;

        void putBucket(String name, String encoded) throws Exception;

        String connectivity() throws Exception;

        void putConnectivity(String encoded) throws Exception;
    }

    /** DOWNLINK / VERDICT / DEAD_LETTER: the record; SHADOW / HISTORY / CONNECTIVITY: the row's fields by name. */
    static final class Output {
        final Kind kind;
        final ObjectNode value;
        /** The Kafka key (device id); null when unknown. */
        final String key;

        Output(Kind kind, ObjectNode value, String key) {
            this.kind = kind;
            this.value = value;
            this.key = key;
        }
    }

    final ShadowDomain rules;

    ShadowLogic(ShadowDomain rules) {
        this.rules = rules;
    }

    // --- helpers -----------------------------------------------------------------------------------

    static boolean isValidDeviceId(String id) {
        return id != null && DEVICE_ID.matcher(id).matches();
    }

    static long shadowWriteTs(long version, long updatedAt) {
        return version * US_PER_VERSION + Math.floorMod(updatedAt, US_PER_VERSION);
    }

    static String shadowTopicSuffix(String kind, String shadow) {
        return shadow.isEmpty() ? "shadow/" + kind : "shadow/name/" + shadow + "/" + kind;
    }

    static Output deadLetter(String reason, String detail, String raw, String deviceId, String mqttTopic, long ingestTs) {
        byte[] bytes = raw.getBytes(StandardCharsets.UTF_8);
        ObjectNode v = Json.object().put("type", "dead-letter").put("reason", reason).put("detail", detail)
                .put("source", SOURCE).put("mqtt_topic", mqttTopic).put("device_id", deviceId).put("ingest_ts", ingestTs)
                .put("raw_b64", Base64.getEncoder().encodeToString(bytes)).put("raw_size", bytes.length)
                .put("raw_truncated", false);
        return new Output(Kind.DEAD_LETTER, v, deviceId);
    }

    static Output downlink(String deviceId, String kind, String name, ObjectNode payload, Long version, long now) {
        ObjectNode v = Json.object().put("device_id", deviceId).put("suffix", shadowTopicSuffix(kind, name));
        v.set("payload", payload);
        v.put("id", name + "@" + (version != null ? version.toString() : "-") + ":" + kind).put("created_at", now)
                .putNull("expires_at");
        return new Output(Kind.DOWNLINK, v, deviceId);
    }

    private static Document load(DeviceState state, String deviceId, String name) throws Exception {
        String text = state.document(name);
        return text != null ? ShadowDomain.decode(text) : Document.empty(deviceId, name);
    }

    /** Store an accepted change: Flink state, then the Cassandra shadow and history rows. */
    private static void stored(DeviceState state, Accepted accepted, List<Output> out) throws Exception {
        ShadowDomain.Change change = accepted.change;
        if (change == null) {
            return;
        }
        Document doc = accepted.document;
        state.putDocument(doc.name, ShadowDomain.encode(doc));
        long ts = doc.updatedAt != null ? doc.updatedAt : change.ts;
        long writeTs = shadowWriteTs(doc.version, ts);
        out.add(new Output(Kind.SHADOW, Json.object().put("device_id", doc.deviceId).put("name", doc.name)
                .put("version", doc.version).put("desired", Json.dumps(doc.desired))
                .put("reported", Json.dumps(doc.reported)).put("metadata", Json.dumps(doc.metadata))
                .put("updated_at", ts).put("write_ts", writeTs), null));
        out.add(new Output(Kind.HISTORY, Json.object().put("device_id", change.deviceId).put("name", change.shadowName)
                .put("version", change.version).put("ts", change.ts).put("source_kind", change.sourceKind)
                .put("actor", change.actor).put("client_token", change.clientToken)
                .put("patch", Json.dumps(change.patch)).put("desired", Json.dumps(change.desired))
                .put("reported", Json.dumps(change.reported)).put("write_ts", writeTs), null));
    }

    private static String str(JsonNode v) {
        return v != null && v.isTextual() ? v.textValue() : null;
    }

    // --- the entry point ---------------------------------------------------------------------------

    /** Everything one input record causes. Never throws on bad input: that becomes dead letters. */
    List<Output> handle(String key, String raw, long now, DeviceState state) throws Exception {
        List<Output> out = new ArrayList<>(4);
        String device = key != null && !key.isEmpty() && isValidDeviceId(key) ? key : null;
        JsonNode record;
        try {
            record = Json.parse(raw);
        } catch (Exception e) {
            String message = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage().split("\n", 2)[0];
            out.add(deadLetter("invalid_json", "not JSON: " + message, raw, device, "", now));
            return out;
        }
        if (!record.isObject()) {
            out.add(deadLetter("invalid_envelope", "not a JSON object", raw, device, "", now));
            return out;
        }
        JsonNode kindNode = Json.get(record, "type");
        if (kindNode == null && record.has("request_id")) {
            operatorChange(device, record, raw, now, state, out);
            return out;
        }
        String topic = str(record.get("mqtt_topic"));
        String mqttTopic = topic != null ? topic : "";
        JsonNode ingested = record.get("ingest_ts");
        long ingestTs = ingested != null && ingested.isIntegralNumber() && ingested.canConvertToLong() ? ingested.longValue() : now;
        String kind = str(kindNode);
        if (!"shadow_update".equals(kind) && !"shadow_get".equals(kind) && !"status".equals(kind)) {
            out.add(deadLetter("invalid_envelope", "unknown record type " + Json.repr(kindNode), raw, device, mqttTopic,
                    ingestTs));
            return out;
        }
        JsonNode idNode = record.get("device_id");
        String deviceId = str(idNode);
        if (deviceId == null || !isValidDeviceId(deviceId)) {
            out.add(deadLetter("invalid_device_id", "device_id " + Json.repr(idNode) + " is not well-formed", raw, device,
                    mqttTopic, ingestTs));
            return out;
        }
        if (!deviceId.equals(key)) { // the state is the key's: another device's record must not touch it
            out.add(deadLetter("key_mismatch", "record key " + Json.repr(key) + " is not its device_id "
                    + Json.repr(deviceId), raw, deviceId, mqttTopic, ingestTs));
            return out;
        }
        JsonNode payload = record.get("payload");
        if ("status".equals(kind)) {
            status(deviceId, payload, raw, mqttTopic, ingestTs, now, state, out);
            return out;
        }
        JsonNode nameNode = Json.get(record, "shadow");
        String name = nameNode == null ? ShadowDomain.CLASSIC : str(nameNode);
        if (name == null || rules.validateShadowName(name) != null) {
            Rejection bad = new Rejection(ShadowDomain.INVALID_SHADOW_NAME,
                    "shadow name " + Json.repr(nameNode) + " is not valid");
            // Answered on the classic shadow's topic: the name cannot be a topic level.
            out.add(downlink(deviceId, "rejected", ShadowDomain.CLASSIC, bad.messageJson(), null, now));
            out.add(deadLetter("schema_violation", bad.code + ": " + bad.message, raw, deviceId, mqttTopic, ingestTs));
            return out;
        }
        boolean[] allowed = new boolean[1];
        TokenBucket bucket = rules.take(TokenBucket.decode(state.bucket(name)), now, allowed);
        state.putBucket(name, bucket.encode());
        String token = payload != null && payload.isObject() ? str(payload.get("client_token")) : null;
        if (!allowed[0]) {
            out.add(downlink(deviceId, "rejected", name, rules.rateLimited(token).messageJson(), null, now));
            return out;
        }
        if ("shadow_get".equals(kind)) {
            deviceGet(deviceId, name, payload, raw, mqttTopic, ingestTs, now, state, out);
        } else {
            deviceUpdate(deviceId, name, payload, raw, mqttTopic, ingestTs, now, state, out);
        }
        return out;
    }

    private static void deviceRejected(String deviceId, String name, Rejection rejection, String raw, String mqttTopic,
                                       long ingestTs, long now, List<Output> out) {
        out.add(downlink(deviceId, "rejected", name, rejection.messageJson(), rejection.version, now));
        if (MALFORMED.contains(rejection.code)) {
            out.add(deadLetter(DEAD_REASON.getOrDefault(rejection.code, "schema_violation"),
                    rejection.code + ": " + rejection.message, raw, deviceId, mqttTopic, ingestTs));
        }
    }

    private void deviceUpdate(String deviceId, String name, JsonNode payload, String raw, String mqttTopic, long ingestTs,
                              long now, DeviceState state, List<Output> out) throws Exception {
        Object update = rules.parseUpdate(payload, new Source(ShadowDomain.DEVICE, deviceId), now);
        if (update instanceof Rejection r) {
            deviceRejected(deviceId, name, r, raw, mqttTopic, ingestTs, now, out);
            return;
        }
        Object result = rules.applyUpdate(load(state, deviceId, name), (Update) update);
        if (result instanceof Rejection r) {
            deviceRejected(deviceId, name, r, raw, mqttTopic, ingestTs, now, out);
            return;
        }
        Accepted a = (Accepted) result;
        out.add(downlink(deviceId, "accepted", name, a.accepted, a.document.version, now));
        stored(state, a, out);
        if (a.delta != null) {
            out.add(downlink(deviceId, "delta", name, a.delta, a.document.version, now));
        }
    }

    private void deviceGet(String deviceId, String name, JsonNode payload, String raw, String mqttTopic, long ingestTs,
                           long now, DeviceState state, List<Output> out) throws Exception {
        Object token = rules.parseGet(payload);
        if (token instanceof Rejection r) {
            deviceRejected(deviceId, name, r, raw, mqttTopic, ingestTs, now, out);
            return;
        }
        Document doc = load(state, deviceId, name);
        Object answer = ShadowDomain.handleGet(doc, now, (String) token);
        if (answer instanceof Rejection r) {
            deviceRejected(deviceId, name, r, raw, mqttTopic, ingestTs, now, out);
            return;
        }
        out.add(downlink(deviceId, "document", name, (ObjectNode) answer, doc.version, now));
    }

    private static Output verdict(String requestId, String deviceId, String name, long now, Object result, Long current) {
        ObjectNode v = Json.object().put("request_id", requestId).put("device_id", deviceId).put("shadow", name);
        if (result instanceof Rejection r) {
            v.put("status", r.httpStatus()).put("code", r.code).put("message", r.message)
                    .put("version", r.version != null ? r.version : current).put("ts", now);
        } else {
            Accepted a = (Accepted) result;
            v.put("status", 200).put("version", a.document.version);
            v.set("document", a.document.toJson());
            v.put("ts", now);
        }
        return new Output(Kind.VERDICT, v, deviceId);
    }

    private void operatorChange(String device, JsonNode record, String raw, long now, DeviceState state,
                                List<Output> out) throws Exception {
        JsonNode requestNode = record.get("request_id");
        JsonNode idNode = record.get("device_id");
        String requestId = str(requestNode);
        String deviceId = str(idNode);
        // record.get("shadow", CLASSIC): an explicit null is not the classic shadow here.
        JsonNode nameNode = record.has("shadow") ? record.get("shadow") : Json.NODES.textNode(ShadowDomain.CLASSIC);
        String name = str(nameNode);
        JsonNode stateNode = record.get("state");
        String problem = null;
        if (requestId == null || requestId.isEmpty()) {
            problem = "request_id must be a non-empty string";
        } else if (deviceId == null || !isValidDeviceId(deviceId)) {
            problem = "device_id " + Json.repr(idNode) + " is not well-formed";
        } else if (!deviceId.equals(device)) {
            out.add(deadLetter("key_mismatch", "record key " + Json.repr(device) + " is not its device_id "
                    + Json.repr(deviceId), raw, deviceId, "", now));
            return;
        } else if (name == null) {
            problem = "shadow must be a string";
        } else if (str(record.get("actor")) == null) {
            problem = "actor must be a string";
        } else if (stateNode == null || !stateNode.isObject() || stateNode.size() != 1 || !stateNode.has(ShadowDomain.DESIRED)) {
            problem = "state must be {\"desired\": object|null}";
        }
        if (problem != null) {
            out.add(deadLetter("schema_violation", "operator change: " + problem, raw, device, "", now));
            if (requestId != null && !requestId.isEmpty() && deviceId != null) {
                // The API is waiting for an answer: a 400 rather than its timeout.
                out.add(new Output(Kind.VERDICT, Json.object().put("request_id", requestId).put("device_id", deviceId)
                        .put("shadow", name != null ? name : "").put("status", 400)
                        .put("code", ShadowDomain.INVALID_REQUEST).put("message", problem).putNull("version")
                        .put("ts", now), deviceId));
            }
            return;
        }
        ObjectNode body = Json.object();
        body.set("state", stateNode);
        JsonNode version = Json.get(record, "version");
        if (version != null) {
            body.set("version", version);
        }
        JsonNode token = Json.get(record, "client_token");
        if (token != null) {
            body.set("client_token", token);
        }
        Object update = rules.parseUpdate(body, new Source(ShadowDomain.OPERATOR, str(record.get("actor"))), now);
        Document doc = load(state, deviceId, name);
        if (update instanceof Rejection) {
            out.add(verdict(requestId, deviceId, name, now, update, doc.version));
            return;
        }
        Object result = rules.applyUpdate(doc, (Update) update);
        out.add(verdict(requestId, deviceId, name, now, result, doc.version));
        if (result instanceof Accepted a) {
            stored(state, a, out);
            if (a.delta != null) {
                out.add(downlink(deviceId, "delta", name, a.delta, a.document.version, now));
            }
        }
    }

    private static void status(String deviceId, JsonNode payload, String raw, String mqttTopic, long ingestTs, long now,
                               DeviceState state, List<Output> out) throws Exception {
        JsonNode online = payload != null && payload.isObject() ? payload.get("online") : null;
        if (online == null || !online.isBoolean()) {
            out.add(deadLetter("schema_violation", "status payload needs a boolean online", raw, deviceId, mqttTopic,
                    ingestTs));
            return;
        }
        String text = state.connectivity();
        ObjectNode conn;
        if (text != null && !text.isEmpty()) {
            conn = (ObjectNode) Json.parse(text);
        } else {
            conn = Json.object().put("connected", false).putNull("connected_since").putNull("last_seen")
                    .putNull("disconnect_reason").putNull("firmware_version").put("write_ts", 0L);
        }
        boolean isOnline = online.booleanValue();
        if (isOnline && !conn.get("connected").booleanValue()) {
            conn.put("connected_since", ingestTs);
        }
        conn.put("connected", isOnline);
        JsonNode lastSeen = Json.get(conn, "last_seen");
        conn.put("last_seen", Math.max(ingestTs, lastSeen != null ? lastSeen.longValue() : 0));
        if (!isOnline) {
            String reason = str(payload.get("reason"));
            conn.put("disconnect_reason", reason != null && !reason.isEmpty() ? reason : "unknown");
        }
        String firmware = str(payload.get("firmware_version"));
        if (firmware != null && !firmware.isEmpty()) {
            conn.put("firmware_version", firmware);
        }
        // Strictly increasing per device: a replayed older status never wins, two in one ms never merge.
        conn.put("write_ts", Math.max(conn.get("write_ts").longValue() + 1, ingestTs * 1000));
        state.putConnectivity(Json.dumps(conn));
        ObjectNode row = Json.object().put("device_id", deviceId);
        row.setAll(conn);
        out.add(new Output(Kind.CONNECTIVITY, row, null));
        if (isOnline) {
            // Every shadow with a pending delta, so an offline device converges without asking.
            for (Map.Entry<String, String> e : state.documents()) {
                Document doc = ShadowDomain.decode(e.getValue());
                ObjectNode message = ShadowDomain.onConnect(doc, now);
                if (message != null) {
                    out.add(downlink(deviceId, "delta", e.getKey(), message, doc.version, now));
                }
            }
        }
    }
}
