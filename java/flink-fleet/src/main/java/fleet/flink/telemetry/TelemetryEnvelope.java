package fleet.flink.telemetry;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonProcessingException;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.JsonNodeFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.NumericNode;

import java.io.IOException;
import java.io.StringWriter;
import java.io.UncheckedIOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Iterator;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * Envelope validation and dead-letter records: the Java twin of {@code parse_envelope} and
 * {@code dead_letter} in fleet/telemetry/domain.py (the spec; same checks, same order, same
 * reason codes, details naming the same field).
 *
 * <p>JSON is parsed the way the Python core's orjson does where it matters: trailing content, an
 * empty document and a number that overflows a double are invalid JSON; an integer literal beyond
 * 64 bits is a float (never a valid ts/seq/ingest_ts).
 */
final class TelemetryEnvelope {
    private TelemetryEnvelope() {}

    static final String SOURCE = "telemetry-job";
    static final String INVALID_JSON = "invalid_json";
    static final String INVALID_ENVELOPE = "invalid_envelope";
    static final String TS_IN_FUTURE = "ts_in_future";
    static final String LATE = "late";
    static final String KEY_MISMATCH = "key_mismatch";

    // Bounds from schemas/mqtt/telemetry.schema.json (as fleet.telemetry.domain).
    static final long MIN_TS = 946684800000L;
    static final long MAX_TS = 4102444800000L;
    static final long MAX_SEQ = 9007199254740991L;
    static final int MAX_METRICS = 256;
    static final double MAX_ABS_METRIC = 1e300;

    /** fleet.contract.topics.DEVICE_ID_PATTERN, matched against the whole id (as is_valid_device_id's fullmatch). */
    static final Pattern DEVICE_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9_-]{0,63}");

    private static final BigInteger U64_MAX = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);

    private static final ObjectMapper JSON = new ObjectMapper()
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .setNodeFactory(new FiniteNodeFactory());
    private static final JsonFactory FACTORY = JSON.getFactory();

    /** orjson rejects a number that overflows a double ("number is infinity when parsed as double"). */
    private static final class FiniteNodeFactory extends JsonNodeFactory {
        private static final long serialVersionUID = 1L;

        FiniteNodeFactory() {
            super(false);
        }

        @Override
        public NumericNode numberNode(double v) {
            if (Double.isInfinite(v)) {
                throw new NumberOverflow();
            }
            return super.numberNode(v);
        }
    }

    private static final class NumberOverflow extends RuntimeException {
        private static final long serialVersionUID = 1L;

        NumberOverflow() {
            super("number is infinity when parsed as double", null, false, false);
        }
    }

    /** One accepted telemetry sample. */
    static final class Point {
        final String deviceId;
        final long ts;
        final long seq;
        final long ingestTs;
        final String[] names;
        final double[] values;
        final String mqttTopic;

        Point(String deviceId, long ts, long seq, long ingestTs, String[] names, double[] values, String mqttTopic) {
            this.deviceId = deviceId;
            this.ts = ts;
            this.seq = seq;
            this.ingestTs = ingestTs;
            this.names = names;
            this.values = values;
            this.mqttTopic = mqttTopic;
        }
    }

    /** A record that goes to dead-letter ({@code ingestTs} null: the time of rejection is used). */
    static final class Rejected {
        final String reason;
        final String detail;
        final String deviceId;
        final String mqttTopic;
        final Long ingestTs;

        Rejected(String reason, String detail, String deviceId, String mqttTopic, Long ingestTs) {
            this.reason = reason;
            this.detail = detail;
            this.deviceId = deviceId;
            this.mqttTopic = mqttTopic;
            this.ingestTs = ingestTs;
        }
    }

    /** Point or Rejected. */
    static Object parse(String raw, long maxFutureSkewMs) {
        JsonNode env;
        try {
            env = JSON.readTree(raw);
        } catch (JsonProcessingException e) {
            return new Rejected(INVALID_JSON, "not valid JSON: " + e.getOriginalMessage(), null, "", null);
        } catch (NumberOverflow e) {
            return new Rejected(INVALID_JSON, "not valid JSON: " + e.getMessage(), null, "", null);
        }
        if (env == null || env.isMissingNode()) {
            return new Rejected(INVALID_JSON, "not valid JSON: Input is a zero-length, empty document", null, "", null);
        }
        if (!env.isObject()) {
            return new Rejected(INVALID_ENVELOPE, "$: the record is not a JSON object", null, "", null);
        }
        JsonNode idNode = env.get("device_id");
        JsonNode topicNode = env.get("mqtt_topic");
        String topic = topicNode != null && topicNode.isTextual() ? topicNode.textValue() : "";
        if (idNode == null || !idNode.isTextual() || !DEVICE_ID.matcher(idNode.textValue()).matches()) {
            return new Rejected(INVALID_ENVELOPE, cut("$.device_id: not a valid device id: " + repr(idNode)), null, topic,
                    null);
        }
        String deviceId = idNode.textValue();
        JsonNode ingestNode = env.get("ingest_ts");
        Long rejectIngest = isInt(ingestNode) ? asLong(ingestNode) : null;

        JsonNode type = env.get("type");
        if (type == null || !type.isTextual() || !"telemetry".equals(type.textValue())) {
            return new Rejected(INVALID_ENVELOPE, cut("$.type: expected 'telemetry', got " + repr(type)), deviceId, topic,
                    rejectIngest);
        }
        if (rejectIngest == null) {
            return new Rejected(INVALID_ENVELOPE, "$.ingest_ts: must be an integer (epoch ms)", deviceId, topic, null);
        }
        long ingestTs = rejectIngest;
        JsonNode payload = env.get("payload");
        if (payload == null || !payload.isObject()) {
            return new Rejected(INVALID_ENVELOPE, "$.payload: must be an object", deviceId, topic, rejectIngest);
        }
        JsonNode tsNode = payload.get("ts");
        if (!isInt(tsNode) || !tsNode.canConvertToLong() || tsNode.longValue() < MIN_TS || tsNode.longValue() > MAX_TS) {
            return new Rejected(INVALID_ENVELOPE, cut("$.payload.ts: must be an integer epoch ms in [" + MIN_TS + ", "
                    + MAX_TS + "], got " + repr(tsNode)), deviceId, topic, rejectIngest);
        }
        long ts = tsNode.longValue();
        if (ts > saturatedAdd(ingestTs, maxFutureSkewMs)) {
            return new Rejected(TS_IN_FUTURE, "$.payload.ts: " + ts + " is " + (ts - ingestTs) + " ms ahead of ingest time "
                    + ingestTs + " (limit " + maxFutureSkewMs + " ms)", deviceId, topic, rejectIngest);
        }
        JsonNode seqNode = payload.get("seq");
        if (!isInt(seqNode) || !seqNode.canConvertToLong() || seqNode.longValue() < 0 || seqNode.longValue() > MAX_SEQ) {
            return new Rejected(INVALID_ENVELOPE, cut("$.payload.seq: must be an integer in [0, " + MAX_SEQ + "], got "
                    + repr(seqNode)), deviceId, topic, rejectIngest);
        }
        long seq = seqNode.longValue();
        JsonNode metrics = payload.get("metrics");
        if (metrics == null || !metrics.isObject()) {
            return new Rejected(INVALID_ENVELOPE, "$.payload.metrics: must be an object of numbers", deviceId, topic,
                    rejectIngest);
        }
        int n = metrics.size();
        if (n > MAX_METRICS) {
            return new Rejected(INVALID_ENVELOPE, "$.payload.metrics: " + n + " metrics, the limit is " + MAX_METRICS,
                    deviceId, topic, rejectIngest);
        }
        String[] names = new String[n];
        double[] values = new double[n];
        int i = 0;
        for (Iterator<Map.Entry<String, JsonNode>> it = metrics.fields(); it.hasNext(); i++) {
            Map.Entry<String, JsonNode> e = it.next();
            JsonNode v = e.getValue();
            double d = v.isNumber() ? v.doubleValue() : Double.NaN;
            if (!(d >= -MAX_ABS_METRIC && d <= MAX_ABS_METRIC)) { // also NaN: not a number at all
                return new Rejected(INVALID_ENVELOPE, cut("$.payload.metrics." + e.getKey() + ": must be a finite number, got "
                        + repr(v)), deviceId, topic, rejectIngest);
            }
            names[i] = e.getKey();
            values[i] = d;
        }
        JsonNode attrs = payload.get("attrs");
        if (attrs != null && !attrs.isNull() && !attrs.isObject()) {
            return new Rejected(INVALID_ENVELOPE, "$.payload.attrs: must be an object", deviceId, topic, rejectIngest);
        }
        // The accepted record is emitted as received, so the attrs need no re-serialising here.
        return new Point(deviceId, ts, seq, ingestTs, names, values, topic);
    }

    /** An integer as orjson reads one: an integral literal within 64 bits (beyond, orjson makes a float). */
    private static boolean isInt(JsonNode node) {
        if (node == null || !node.isIntegralNumber()) {
            return false;
        }
        if (node.canConvertToLong()) {
            return true;
        }
        BigInteger big = node.bigIntegerValue();
        return big.signum() > 0 && big.compareTo(U64_MAX) <= 0;
    }

    /** isInt() values as a long; the unsigned 64-bit range above Long.MAX_VALUE saturates. */
    private static long asLong(JsonNode node) {
        return node.canConvertToLong() ? node.longValue() : Long.MAX_VALUE;
    }

    private static long saturatedAdd(long a, long b) {
        long r = a + b;
        return ((a ^ r) & (b ^ r)) < 0 ? (a < 0 ? Long.MIN_VALUE : Long.MAX_VALUE) : r;
    }

    /** Python's repr of the decoded value, closely enough for a detail text. */
    static String repr(JsonNode node) {
        if (node == null || node.isNull() || node.isMissingNode()) {
            return "None";
        }
        if (node.isBoolean()) {
            return node.booleanValue() ? "True" : "False";
        }
        if (node.isTextual()) {
            return "'" + node.textValue().replace("\\", "\\\\").replace("'", "\\'") + "'";
        }
        return node.toString();
    }

    /** Python's {@code text[:300]} (not splitting a surrogate pair). */
    static String cut(String text) {
        if (text.length() <= 300) {
            return text;
        }
        int end = Character.isHighSurrogate(text.charAt(299)) ? 299 : 300;
        return text.substring(0, end);
    }

    // --- output JSON -------------------------------------------------------------------------

    /** The dead-letter record (schemas/kafka/dead-letter.schema.json), as {@code dom.dead_letter}. */
    static String deadLetter(Rejected r, String raw, long nowMs) {
        byte[] bytes = raw.getBytes(StandardCharsets.UTF_8);
        StringWriter out = new StringWriter(bytes.length * 4 / 3 + 256);
        try (JsonGenerator g = FACTORY.createGenerator(out)) {
            g.writeStartObject();
            g.writeStringField("type", "dead-letter");
            g.writeStringField("reason", r.reason);
            g.writeStringField("detail", r.detail);
            g.writeStringField("source", SOURCE);
            g.writeStringField("mqtt_topic", r.mqttTopic);
            g.writeStringField("device_id", r.deviceId); // null -> JSON null
            g.writeNumberField("ingest_ts", r.ingestTs != null ? r.ingestTs : nowMs);
            g.writeStringField("raw_b64", Base64.getEncoder().encodeToString(bytes));
            g.writeNumberField("raw_size", bytes.length);
            g.writeBooleanField("raw_truncated", false);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toString();
    }

    static JsonGenerator generator(StringWriter out) {
        try {
            return FACTORY.createGenerator(out);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
