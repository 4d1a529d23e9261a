package fleet.flink.shadow;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.Serializable;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Iterator;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * The device shadow rules: the Java twin of fleet/shadow/domain.py, which is the readable spec
 * (its module docstring explains the rules; tests/vectors/shadow pins them down for both). Names
 * and the order of checks follow the Python line by line; messages are the same text.
 *
 * <p>JSON values are Jackson trees treated as immutable: every function builds new objects and
 * may share unchanged subtrees between them, but never changes a node it was given.
 */
final class ShadowDomain implements Serializable {
    private static final long serialVersionUID = 1L;

    static final String INVALID_REQUEST = "invalid_request";
    static final String INVALID_SHADOW_NAME = "invalid_shadow_name";
    static final String FORBIDDEN_SECTION = "forbidden_section";
    static final String VERSION_CONFLICT = "version_conflict";
    static final String INVALID_KEY = "invalid_key";
    static final String TOO_DEEP = "too_deep";
    static final String INVALID_VALUE = "invalid_value";
    static final String TOO_MANY_KEYS = "too_many_keys";
    static final String STATE_TOO_LARGE = "state_too_large";
    static final String NOT_FOUND = "not_found";
    static final String RATE_LIMITED = "rate_limited";

    static int httpStatus(String code) {
        return switch (code) {
            case FORBIDDEN_SECTION -> 403;
            case VERSION_CONFLICT -> 409;
            case TOO_MANY_KEYS, STATE_TOO_LARGE -> 413;
            case NOT_FOUND -> 404;
            case RATE_LIMITED -> 429;
            default -> 400;
        };
    }

    static final String DESIRED = "desired";
    static final String REPORTED = "reported";
    static final String[] SECTIONS = {DESIRED, REPORTED};
    static final String DEVICE = "device";
    static final String OPERATOR = "operator";
    static final String CLASSIC = "";

    // --- the rules (ShadowRules) ---------------------------------------------------------------

    final long maxStateBytes;
    final int maxDepth;
    final long maxKeys;
    final String keyPattern;
    final String namePattern;
    final int maxClientTokenLength;
    final long burst;
    final long perSecond;
    private final Pattern keyRe;
    private final Pattern nameRe;

    ShadowDomain(long maxStateBytes, long maxDepth, long maxKeys, String keyPattern, String namePattern,
                 long maxClientTokenLength, long burst, long perSecond) {
        this.maxStateBytes = maxStateBytes;
        this.maxDepth = Math.toIntExact(maxDepth);
        this.maxKeys = maxKeys;
        this.keyPattern = keyPattern;
        this.namePattern = namePattern;
        this.maxClientTokenLength = Math.toIntExact(maxClientTokenLength);
        this.burst = burst;
        this.perSecond = perSecond;
        this.keyRe = Pattern.compile(keyPattern);
        this.nameRe = Pattern.compile(namePattern);
    }

    /** ShadowRules() */
    static ShadowDomain defaults() {
        return new ShadowDomain(8192, 6, 256, "[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}", "[A-Za-z0-9:_-]{1,64}", 64, 20, 10);
    }

    // --- JSON helpers ---------------------------------------------------------------------------

    static long jsonSize(JsonNode obj) {
        return Json.dumps(obj).getBytes(StandardCharsets.UTF_8).length;
    }

    /** Equality of JSON values: numbers by value (1 == 1.0), but a boolean is never a number. */
    static boolean jsonEqual(JsonNode a, JsonNode b) {
        if (a.isBoolean() || b.isBoolean()) {
            return a.isBoolean() && b.isBoolean() && a.booleanValue() == b.booleanValue();
        }
        if (a.isNumber() && b.isNumber()) {
            if (a.isIntegralNumber() && b.isIntegralNumber()) {
                return a.bigIntegerValue().equals(b.bigIntegerValue());
            }
            if (!a.isIntegralNumber() && !b.isIntegralNumber()) {
                return a.doubleValue() == b.doubleValue();
            }
            double d = a.isIntegralNumber() ? b.doubleValue() : a.doubleValue();
            BigInteger i = a.isIntegralNumber() ? a.bigIntegerValue() : b.bigIntegerValue();
            return Double.isFinite(d) && new BigDecimal(d).compareTo(new BigDecimal(i)) == 0;
        }
        if (a.isObject() && b.isObject()) {
            if (a.size() != b.size()) {
                return false;
            }
            for (Iterator<Map.Entry<String, JsonNode>> it = a.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                JsonNode other = b.get(e.getKey());
                if (other == null || !jsonEqual(e.getValue(), other)) {
                    return false;
                }
            }
            return true;
        }
        if (a.isArray() && b.isArray()) {
            if (a.size() != b.size()) {
                return false;
            }
            for (int i = 0; i < a.size(); i++) {
                if (!jsonEqual(a.get(i), b.get(i))) {
                    return false;
                }
            }
            return true;
        }
        if (a.isTextual() && b.isTextual()) {
            return a.textValue().equals(b.textValue());
        }
        return a.isNull() && b.isNull();
    }

    private static ObjectNode copyOf(JsonNode obj) {
        ObjectNode out = Json.object();
        out.setAll((ObjectNode) obj);
        return out;
    }

    private static ObjectNode asObject(JsonNode v) {
        return v != null && v.isObject() ? (ObjectNode) v : Json.object();
    }

    /** ``patch`` merged into ``target``: null deletes, objects merge, the rest replaces; no empty objects left. */
    static ObjectNode merge(JsonNode target, JsonNode patch) {
        ObjectNode result = copyOf(target);
        for (Iterator<Map.Entry<String, JsonNode>> it = patch.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String key = e.getKey();
            JsonNode value = e.getValue();
            if (value.isNull()) {
                result.remove(key);
            } else if (value.isObject()) {
                ObjectNode sub = merge(asObject(result.get(key)), value);
                if (sub.size() > 0) {
                    result.set(key, sub);
                } else {
                    result.remove(key);
                }
            } else {
                result.set(key, value);
            }
        }
        return result;
    }

    /** The smallest merge patch p with merge(old, p) == new. */
    static ObjectNode diff(JsonNode old, JsonNode now) {
        ObjectNode patch = Json.object();
        for (Iterator<Map.Entry<String, JsonNode>> it = now.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String key = e.getKey();
            JsonNode value = e.getValue();
            JsonNode before = old.get(key);
            if (before == null) {
                patch.set(key, value);
            } else if (value.isObject() && before.isObject()) {
                ObjectNode sub = diff(before, value);
                if (sub.size() > 0) {
                    patch.set(key, sub);
                }
            } else if (!jsonEqual(before, value)) {
                patch.set(key, value);
            }
        }
        for (Iterator<String> it = old.fieldNames(); it.hasNext(); ) {
            String key = it.next();
            if (!now.has(key)) {
                patch.putNull(key);
            }
        }
        return patch;
    }

    /** Every desired field that differs from reported, recursively (desired-only fields included). */
    static ObjectNode computeDelta(JsonNode desired, JsonNode reported) {
        ObjectNode delta = Json.object();
        for (Iterator<Map.Entry<String, JsonNode>> it = desired.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            JsonNode want = e.getValue();
            JsonNode have = reported.get(e.getKey());
            if (have == null) {
                delta.set(e.getKey(), want);
            } else if (want.isObject() && have.isObject()) {
                ObjectNode sub = computeDelta(want, have);
                if (sub.size() > 0) {
                    delta.set(e.getKey(), sub);
                }
            } else if (!jsonEqual(want, have)) {
                delta.set(e.getKey(), want);
            }
        }
        return delta;
    }

    /** The metadata patch for an effective patch: each written leaf becomes ts, deletions stay null. */
    static ObjectNode stamp(JsonNode patch, long ts) {
        ObjectNode out = Json.object();
        for (Iterator<Map.Entry<String, JsonNode>> it = patch.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            JsonNode v = e.getValue();
            if (v.isNull()) {
                out.putNull(e.getKey());
            } else if (v.isObject()) {
                out.set(e.getKey(), stamp(v, ts));
            } else {
                out.put(e.getKey(), ts);
            }
        }
        return out;
    }

    /** The part of a metadata tree covering the keys of ``shape``. */
    static ObjectNode mask(JsonNode metadata, JsonNode shape) {
        ObjectNode out = Json.object();
        for (Iterator<Map.Entry<String, JsonNode>> it = shape.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            JsonNode meta = metadata.get(e.getKey());
            if (meta == null) {
                continue;
            }
            out.set(e.getKey(), e.getValue().isObject() && meta.isObject() ? mask(meta, e.getValue()) : meta);
        }
        return out;
    }

    /** Nesting levels of objects and arrays: a scalar is 0, {"a": 1} is 1. */
    static int depth(JsonNode value) {
        if (value.isContainerNode()) {
            int max = 0;
            for (JsonNode v : value) {
                max = Math.max(max, depth(v));
            }
            return 1 + max;
        }
        return 0;
    }

    /** Keys of every object at every level (objects inside arrays too). */
    static long countKeys(JsonNode value) {
        long n = value.isObject() ? value.size() : 0;
        if (value.isContainerNode()) {
            for (JsonNode v : value) {
                n += countKeys(v);
            }
        }
        return n;
    }

    // --- records ----------------------------------------------------------------------------------

    static final class Source {
        final String kind;
        final String principal;

        Source(String kind, String principal) {
            this.kind = kind;
            this.principal = principal;
        }
    }

    static final class Update {
        /** Section name -> object, or NullNode to clear it. */
        final ObjectNode state;
        final Source source;
        final long ts;
        final BigInteger version;
        final String clientToken;

        Update(ObjectNode state, Source source, long ts, BigInteger version, String clientToken) {
            this.state = state;
            this.source = source;
            this.ts = ts;
            this.version = version;
            this.clientToken = clientToken;
        }
    }

    /** Why a request was refused. */
    static final class Rejection {
        final String code;
        final String message;
        final String clientToken;
        final Long version;

        Rejection(String code, String message, String clientToken, Long version) {
            this.code = code;
            this.message = message;
            this.clientToken = clientToken;
            this.version = version;
        }

        Rejection(String code, String message, String clientToken) {
            this(code, message, clientToken, null);
        }

        Rejection(String code, String message) {
            this(code, message, null, null);
        }

        Rejection withToken(String token) {
            return new Rejection(code, message, token, version);
        }

        int httpStatus() {
            return ShadowDomain.httpStatus(code);
        }

        /** The payload of .../shadow/rejected. */
        ObjectNode messageJson() {
            ObjectNode out = Json.object().put("code", code).put("message", message);
            if (version != null) {
                out.put("version", version);
            }
            if (clientToken != null) {
                out.put("client_token", clientToken);
            }
            return out;
        }
    }

    static final class Document {
        final String deviceId;
        final String name;
        final ObjectNode desired;
        final ObjectNode reported;
        /** {"desired": tree of ts, "reported": tree of ts} */
        final ObjectNode metadata;
        final long version;
        final Long updatedAt;

        Document(String deviceId, String name, ObjectNode desired, ObjectNode reported, ObjectNode metadata,
                 long version, Long updatedAt) {
            this.deviceId = deviceId;
            this.name = name;
            this.desired = desired;
            this.reported = reported;
            this.metadata = metadata;
            this.version = version;
            this.updatedAt = updatedAt;
        }

        static Document empty(String deviceId, String name) {
            ObjectNode metadata = Json.object();
            metadata.putObject(DESIRED);
            metadata.putObject(REPORTED);
            return new Document(deviceId, name, Json.object(), Json.object(), metadata, 0, null);
        }

        boolean exists() {
            return version > 0;
        }

        ObjectNode delta() {
            return computeDelta(desired, reported);
        }

        JsonNode section(String s) {
            return DESIRED.equals(s) ? desired : reported;
        }

        JsonNode metadataOf(String s) {
            JsonNode m = metadata.get(s);
            return m != null ? m : Json.object();
        }

        /** The document as the API and shadow/document show it. */
        ObjectNode toJson() {
            ObjectNode out = Json.object().put("device_id", deviceId).put("name", name).put("version", version);
            ObjectNode state = out.putObject("state");
            state.set(DESIRED, desired);
            state.set(REPORTED, reported);
            state.set("delta", delta());
            out.set("metadata", metadata);
            if (updatedAt == null) {
                out.putNull("updated_at");
            } else {
                out.put("updated_at", updatedAt);
            }
            return out;
        }
    }

    /** One accepted version, for the history. */
    static final class Change {
        final String deviceId;
        final String shadowName;
        final long version;
        final String sourceKind;
        final String actor;
        final long ts;
        final String clientToken;
        final ObjectNode patch;
        final ObjectNode desired;
        final ObjectNode reported;

        Change(String deviceId, String shadowName, long version, String sourceKind, String actor, long ts,
               String clientToken, ObjectNode patch, ObjectNode desired, ObjectNode reported) {
            this.deviceId = deviceId;
            this.shadowName = shadowName;
            this.version = version;
            this.sourceKind = sourceKind;
            this.actor = actor;
            this.ts = ts;
            this.clientToken = clientToken;
            this.patch = patch;
            this.desired = desired;
            this.reported = reported;
        }

        ObjectNode toJson() {
            ObjectNode out = Json.object().put("device_id", deviceId).put("shadow_name", shadowName)
                    .put("version", version).put("source_kind", sourceKind).put("actor", actor).put("ts", ts)
                    .put("client_token", clientToken);
            out.set("patch", patch);
            out.set(DESIRED, desired);
            out.set(REPORTED, reported);
            return out;
        }
    }

    static final class Accepted {
        final Document document;
        final ObjectNode accepted;
        /** null when no delta is due */
        final ObjectNode delta;
        /** null for a no-op */
        final Change change;

        Accepted(Document document, ObjectNode accepted, ObjectNode delta, Change change) {
            this.document = document;
            this.accepted = accepted;
            this.delta = delta;
            this.change = change;
        }
    }

    // --- encoding (what the job stores) ---------------------------------------------------------

    static String encode(Document doc) {
        ObjectNode out = Json.object().put("device_id", doc.deviceId).put("name", doc.name);
        out.set(DESIRED, doc.desired);
        out.set(REPORTED, doc.reported);
        out.set("metadata", doc.metadata);
        out.put("version", doc.version);
        if (doc.updatedAt == null) {
            out.putNull("updated_at");
        } else {
            out.put("updated_at", doc.updatedAt);
        }
        return Json.dumps(out);
    }

    static Document decode(String text) {
        JsonNode raw;
        try {
            raw = Json.parse(text);
        } catch (Exception e) {
            throw new IllegalStateException("a stored shadow document is not JSON", e);
        }
        JsonNode updated = raw.get("updated_at");
        return new Document(raw.get("device_id").textValue(), raw.get("name").textValue(), (ObjectNode) raw.get(DESIRED),
                (ObjectNode) raw.get(REPORTED), (ObjectNode) raw.get("metadata"), raw.get("version").longValue(),
                updated == null || updated.isNull() ? null : updated.longValue());
    }

    // --- validation -------------------------------------------------------------------------------

    Rejection validateShadowName(String name) {
        if (CLASSIC.equals(name) || (name != null && nameRe.matcher(name).matches())) {
            return null;
        }
        return new Rejection(INVALID_SHADOW_NAME, "shadow name " + Json.repr(name) + " does not match " + namePattern);
    }

    private Rejection checkToken(JsonNode token) {
        if (token == null || token.isNull()) {
            return null;
        }
        if (!token.isTextual() || !lengthOk(token.textValue())) {
            return new Rejection(INVALID_REQUEST, "client_token must be a string of 1-" + maxClientTokenLength + " characters");
        }
        return null;
    }

    private boolean lengthOk(String token) {
        int n = token.codePointCount(0, token.length());
        return 1 <= n && n <= maxClientTokenLength;
    }

    private static String text(JsonNode v) {
        return v == null || v.isNull() ? null : v.textValue();
    }

    /** parse_update: returns an Update or a Rejection. */
    Object parseUpdate(JsonNode payload, Source source, long ts) {
        if (payload == null || !payload.isObject()) {
            return new Rejection(INVALID_REQUEST, "the update is not a JSON object");
        }
        JsonNode tokenNode = payload.get("client_token");
        Rejection bad = checkToken(tokenNode);
        if (bad != null) {
            return bad;
        }
        String token = text(tokenNode);
        String unknown = null;
        for (Iterator<String> it = payload.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (!k.equals("state") && !k.equals("version") && !k.equals("client_token") && !k.equals("ts")
                    && (unknown == null || k.compareTo(unknown) < 0)) {
                unknown = k;  // sorted(...)[0]: the smallest, by code point (UTF-16 order agrees below U+D800)
            }
        }
        if (unknown != null) {
            return new Rejection(INVALID_REQUEST, "unknown field " + Json.repr(unknown), token);
        }
        JsonNode state = payload.get("state");
        if (state == null || !state.isObject() || state.size() == 0) {
            return new Rejection(INVALID_REQUEST, "state must be an object with desired and/or reported", token);
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = state.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String section = e.getKey();
            if (!DESIRED.equals(section) && !REPORTED.equals(section)) {
                return new Rejection(INVALID_REQUEST, "state." + section + " is not a section (desired, reported)", token);
            }
            if (!e.getValue().isNull() && !e.getValue().isObject()) {
                return new Rejection(INVALID_REQUEST, "state." + section + " must be an object or null", token);
            }
        }
        JsonNode version = payload.get("version");
        BigInteger v = null;
        if (version != null && !version.isNull()) {
            if (!version.isIntegralNumber() || version.bigIntegerValue().signum() < 0) {
                return new Rejection(INVALID_REQUEST, "version must be an integer >= 0", token);
            }
            v = version.bigIntegerValue();
        }
        return new Update(copyOf(state), source, ts, v, token);
    }

    /** parse_get: the client token (null when absent) as a String, or a Rejection. */
    Object parseGet(JsonNode payload) {
        if (payload == null || payload.isNull()) {
            return null;
        }
        boolean extra = false;
        if (payload.isObject()) {
            for (Iterator<String> it = payload.fieldNames(); it.hasNext(); ) {
                String k = it.next();
                extra |= !k.equals("client_token") && !k.equals("ts");
            }
        }
        if (!payload.isObject() || extra) {
            return new Rejection(INVALID_REQUEST, "a get is {} or {\"client_token\": ...}");
        }
        JsonNode token = payload.get("client_token");
        Rejection bad = checkToken(token);
        return bad != null ? bad : text(token);
    }

    private Rejection checkPatch(JsonNode patch, String path) {
        if (depth(patch) > maxDepth) {
            return new Rejection(TOO_DEEP, path + " nests deeper than " + maxDepth + " levels");
        }
        return checkKeys(patch, path, true);
    }

    private Rejection checkKeys(JsonNode value, String path, boolean policed) {
        if (value.isObject()) {
            for (Iterator<Map.Entry<String, JsonNode>> it = value.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                String key = e.getKey();
                if (policed && !keyRe.matcher(key).matches()) {
                    return new Rejection(INVALID_KEY, path + ": key " + Json.repr(key) + " does not match " + keyPattern);
                }
                Rejection bad = checkKeys(e.getValue(), path + "." + key, policed);
                if (bad != null) {
                    return bad;
                }
            }
            return null;
        }
        if (value.isArray()) {
            // Arrays are values, replaced whole: the keys of objects inside them are not field names.
            for (int i = 0; i < value.size(); i++) {
                Rejection bad = checkKeys(value.get(i), path + "[" + i + "]", false);
                if (bad != null) {
                    return bad;
                }
            }
            return null;
        }
        if (value.isNull() || value.isTextual() || value.isBoolean() || value.isIntegralNumber()) {
            return null;
        }
        if (value.isNumber() && Double.isFinite(value.doubleValue())) {
            return null;
        }
        return new Rejection(INVALID_VALUE, path + ": " + Json.repr(value) + " is not a JSON value");
    }

    // --- the operations ---------------------------------------------------------------------------

    /** apply_update: an Accepted or a Rejection (the document is then unchanged). */
    Object applyUpdate(Document doc, Update update) {
        String token = update.clientToken;
        Rejection bad = validateShadowName(doc.name);
        if (bad != null) {
            return bad.withToken(token);
        }
        if (token != null && !lengthOk(token)) {
            return new Rejection(INVALID_REQUEST, "client_token must be a string of 1-" + maxClientTokenLength + " characters");
        }
        if (update.state.size() == 0) {
            return new Rejection(INVALID_REQUEST, "state must name desired and/or reported", token);
        }
        String kind = update.source.kind;
        String allowed = DEVICE.equals(kind) ? REPORTED : OPERATOR.equals(kind) ? DESIRED : null;
        if (allowed == null) {
            return new Rejection(INVALID_REQUEST, "unknown source kind " + Json.repr(kind), token);
        }
        for (Iterator<String> it = update.state.fieldNames(); it.hasNext(); ) {
            String section = it.next();
            if (!DESIRED.equals(section) && !REPORTED.equals(section)) {
                return new Rejection(INVALID_REQUEST, "state." + section + " is not a section (desired, reported)", token);
            }
            if (!section.equals(allowed)) {
                return new Rejection(FORBIDDEN_SECTION, "updates from a " + kind + " may write only state." + allowed, token);
            }
        }
        if (update.version != null && !update.version.equals(BigInteger.valueOf(doc.version))) {
            return new Rejection(VERSION_CONFLICT, "version " + update.version + " is not the current version " + doc.version,
                    token, doc.version);
        }
        ObjectNode newDesired = doc.desired;
        ObjectNode newReported = doc.reported;
        for (Iterator<Map.Entry<String, JsonNode>> it = update.state.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String section = e.getKey();
            JsonNode patch = e.getValue();
            ObjectNode merged;
            if (patch.isNull()) {
                merged = Json.object();
            } else if (!patch.isObject()) {
                return new Rejection(INVALID_REQUEST, "state." + section + " must be an object or null", token);
            } else {
                bad = checkPatch(patch, "state." + section);
                if (bad != null) {
                    return bad.withToken(token);
                }
                merged = merge(DESIRED.equals(section) ? newDesired : newReported, patch);
            }
            if (DESIRED.equals(section)) {
                newDesired = merged;
            } else {
                newReported = merged;
            }
        }
        if (countKeys(newDesired) > maxKeys) {
            return new Rejection(TOO_MANY_KEYS, "state.desired would hold more than " + maxKeys + " keys", token);
        }
        if (countKeys(newReported) > maxKeys) {
            return new Rejection(TOO_MANY_KEYS, "state.reported would hold more than " + maxKeys + " keys", token);
        }
        long size = jsonSize(newDesired) + jsonSize(newReported);
        if (size > maxStateBytes) {
            return new Rejection(STATE_TOO_LARGE,
                    "desired + reported would be " + size + " bytes, more than " + maxStateBytes, token);
        }

        ObjectNode effective = Json.object();
        ObjectNode d = diff(doc.desired, newDesired);
        if (d.size() > 0) {
            effective.set(DESIRED, d);
        }
        ObjectNode r = diff(doc.reported, newReported);
        if (r.size() > 0) {
            effective.set(REPORTED, r);
        }
        if (effective.size() == 0) {
            ObjectNode accepted = Json.object().put("version", doc.version);
            accepted.putObject("state");
            accepted.putObject("metadata");
            accepted.put("timestamp", update.ts).put("changed", false);
            if (token != null) {
                accepted.put("client_token", token);
            }
            return new Accepted(doc, accepted, null, null);
        }

        ObjectNode metadata = Json.object();
        for (String s : SECTIONS) {
            JsonNode p = effective.get(s);
            metadata.set(s, p != null ? merge(asObject(doc.metadata.get(s)), stamp(p, update.ts)) : doc.metadataOf(s));
        }
        long version = doc.version + 1;
        Document next = new Document(doc.deviceId, doc.name, newDesired, newReported, metadata, version, update.ts);
        ObjectNode accepted = Json.object().put("version", version);
        accepted.set("state", effective);
        ObjectNode stamps = accepted.putObject("metadata");
        for (Iterator<Map.Entry<String, JsonNode>> it = effective.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            stamps.set(e.getKey(), stamp(e.getValue(), update.ts));
        }
        accepted.put("timestamp", update.ts).put("changed", true);
        if (token != null) {
            accepted.put("client_token", token);
        }
        ObjectNode delta = effective.has(DESIRED) ? deltaMessage(next, update.ts) : null;
        Change change = new Change(doc.deviceId, doc.name, version, update.source.kind, update.source.principal, update.ts,
                token, effective, newDesired, newReported);
        return new Accepted(next, accepted, delta, change);
    }

    /** The payload of .../shadow/delta for the document as it is, or null if nothing differs. */
    static ObjectNode deltaMessage(Document doc, long ts) {
        ObjectNode delta = doc.delta();
        if (delta.size() == 0) {
            return null;
        }
        ObjectNode out = Json.object().put("version", doc.version);
        out.set("state", delta);
        out.set("metadata", mask(doc.metadataOf(DESIRED), delta));
        out.put("timestamp", ts);
        return out;
    }

    /** The payload of .../shadow/document. */
    static ObjectNode documentMessage(Document doc, long ts, String clientToken) {
        ObjectNode out = Json.object().put("version", doc.version);
        ObjectNode state = out.putObject("state");
        state.set(DESIRED, doc.desired);
        state.set(REPORTED, doc.reported);
        state.set("delta", doc.delta());
        out.set("metadata", doc.metadata);
        out.put("timestamp", ts);
        if (clientToken != null) {
            out.put("client_token", clientToken);
        }
        return out;
    }

    /** handle_get: the document message (ObjectNode) or a not_found Rejection. */
    static Object handleGet(Document doc, long ts, String clientToken) {
        if (!doc.exists()) {
            return new Rejection(NOT_FOUND, "no shadow " + Json.repr(doc.name) + " for device " + doc.deviceId, clientToken, 0L);
        }
        return documentMessage(doc, ts, clientToken);
    }

    static ObjectNode onConnect(Document doc, long ts) {
        return doc.exists() ? deltaMessage(doc, ts) : null;
    }

    // --- request rate per device -------------------------------------------------------------------

    /** In thousandths of a request. */
    static final class TokenBucket {
        final long milliTokens;
        final long updatedAt;

        TokenBucket(long milliTokens, long updatedAt) {
            this.milliTokens = milliTokens;
            this.updatedAt = updatedAt;
        }

        String encode() {
            return milliTokens + "," + updatedAt;
        }

        static TokenBucket decode(String text) {
            if (text == null || text.isEmpty()) {
                return null;
            }
            int comma = text.indexOf(',');
            return new TokenBucket(Long.parseLong(text.substring(0, comma)), Long.parseLong(text.substring(comma + 1)));
        }
    }

    /** take: the new bucket; {@code allowed[0]} says whether the request may pass. */
    TokenBucket take(TokenBucket bucket, long now, boolean[] allowed) {
        long full = burst * 1000;
        long tokens;
        long last;
        if (bucket == null) {
            tokens = full;
            last = now;
        } else {
            long elapsed = Math.max(0, now - bucket.updatedAt);
            tokens = Math.min(full, bucket.milliTokens + elapsed * perSecond);
            last = Math.max(now, bucket.updatedAt);
        }
        if (tokens >= 1000) {
            allowed[0] = true;
            return new TokenBucket(tokens - 1000, last);
        }
        allowed[0] = false;
        return new TokenBucket(tokens, last);
    }

    Rejection rateLimited(String clientToken) {
        return new Rejection(RATE_LIMITED, "more than " + perSecond + " requests a second (burst " + burst + ")", clientToken);
    }
}
