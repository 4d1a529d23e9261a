package fleet.flink.shadow;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;

import fleet.flink.VectorFiles;
import fleet.flink.shadow.ShadowDomain.Accepted;
import fleet.flink.shadow.ShadowDomain.Document;
import fleet.flink.shadow.ShadowDomain.Rejection;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * tests/vectors/shadow/*.json through ShadowDomain: the same files, the same expected outputs as
 * the Python reference (tests/vectors/shadow_replay.py, whose output shape this mirrors, the
 * document's stored encoding between steps included). Compared as Python's JSON text, so key
 * order, and 1 against 1.0, must match too.
 */
class ShadowVectorsTest {
    private static final Path VECTORS = VectorFiles.dir("shadow");

    @TestFactory
    Stream<DynamicTest> vectors() throws IOException {
        return VectorFiles.tests(VECTORS, 6, ShadowVectorsTest::replay);
    }

    private static ShadowDomain rules(JsonNode r) {
        ShadowDomain d = ShadowDomain.defaults();
        return new ShadowDomain(r.path("max_state_bytes").asLong(d.maxStateBytes), r.path("max_depth").asLong(d.maxDepth),
                r.path("max_keys").asLong(d.maxKeys), r.path("key_pattern").asText(d.keyPattern),
                r.path("name_pattern").asText(d.namePattern),
                r.path("max_client_token_length").asLong(d.maxClientTokenLength), r.path("burst").asLong(d.burst),
                r.path("per_second").asLong(d.perSecond));
    }

    private static void replay(Path file) throws IOException {
        JsonNode vector = Json.parse(Files.readString(file));
        ShadowDomain rules = rules(vector.get("rules"));
        Document doc = Document.empty(vector.get("device_id").textValue(), vector.get("shadow_name").textValue());
        int index = 0;
        for (JsonNode step : vector.get("steps")) {
            ObjectNode actual = Json.object();
            if (step.has("update")) {
                JsonNode u = step.get("update");
                JsonNode src = u.get("source");
                Object parsed = rules.parseUpdate(u.get("payload"),
                        new ShadowDomain.Source(src.get("kind").textValue(), src.get("principal").textValue()),
                        u.get("ts").longValue());
                Object result = parsed instanceof Rejection ? parsed : rules.applyUpdate(doc, (ShadowDomain.Update) parsed);
                if (result instanceof Rejection r) {
                    rejected(actual, r);
                } else {
                    Accepted a = (Accepted) result;
                    actual.set("accepted", a.accepted);
                    actual.set("delta", a.delta);
                    actual.set("change", a.change != null ? a.change.toJson() : null);
                    actual.set("document", document(a.document));
                    doc = a.document;
                }
            } else if (step.has("get")) {
                JsonNode g = step.get("get");
                Object token = rules.parseGet(g.get("payload"));
                Object got = token instanceof Rejection ? token
                        : ShadowDomain.handleGet(doc, g.get("ts").longValue(), (String) token);
                if (got instanceof Rejection r) {
                    rejected(actual, r);
                } else {
                    actual.set("document", (JsonNode) got);
                }
            } else {
                actual.set("push", ShadowDomain.onConnect(doc, step.get("connect").get("ts").longValue()));
            }
            assertEquals(Json.dumps(step.get("expect")), Json.dumps(actual),
                    vector.get("name").textValue() + " step " + index + ": " + Json.dumps(step));
            doc = ShadowDomain.decode(ShadowDomain.encode(doc));
            index++;
        }
    }

    private static void rejected(ObjectNode out, Rejection r) {
        out.set("rejected", r.messageJson());
        out.put("http_status", r.httpStatus());
    }

    private static ObjectNode document(Document doc) {
        ObjectNode o = Json.object().put("version", doc.version);
        o.set("desired", doc.desired);
        o.set("reported", doc.reported);
        o.set("delta", doc.delta());
        o.set("metadata", doc.metadata);
        return o;
    }

    @Test
    void writesJsonAsPythonDoes() throws IOException {
        // json.dumps(separators=(",", ":"), ensure_ascii=False) of json.loads(text)
        String[][] cases = {
            {"[1,1.0,-0.0,1e16,1e15,0.0001,1e-05,1.5e-07,123456789.123,2.5e+300,100000000000000000000]",
                "[1,1.0,-0.0,1e+16,1000000000000000.0,0.0001,1e-05,1.5e-07,123456789.123,2.5e+300,100000000000000000000]"},
            {"[0.1,0.30000000000000004,5e-324,1.7976931348623157e308,1E2]",
                "[0.1,0.30000000000000004,5e-324,1.7976931348623157e+308,100.0]"},
            {"{\"a\":\"\\u00e9\\n\\t\\\"\\\\/\\u0001\\u007f\"}", "{\"a\":\"é\\n\\t\\\"\\\\/\\u0001\u007f\"}"},
        };
        for (String[] c : cases) {
            assertEquals(c[1], Json.dumps(Json.parse(c[0])), c[0]);
        }
        // Shortest round trip (Python's repr) for any double, subnormals included.
        java.util.Random random = new java.util.Random(7);
        for (int i = 0; i < 200_000; i++) {
            double d = i % 2 == 0 ? Double.longBitsToDouble(random.nextLong()) : random.nextInt(100_000) / 100.0;
            if (!Double.isFinite(d)) {
                continue;
            }
            String text = Json.floatRepr(d);
            assertEquals(d, Double.parseDouble(text), text);
            java.math.BigDecimal digits = new java.math.BigDecimal(text).stripTrailingZeros();
            int p = digits.precision();
            if (p > 1 && d != 0) {
                double shorter = new java.math.BigDecimal(d).round(new java.math.MathContext(p - 1)).doubleValue();
                assertTrue(shorter != d, "not the shortest: " + text);
            }
        }
        assertEquals("'it'", Json.repr("it"));
        assertEquals("\"it's\"", Json.repr("it's"));
        assertEquals("'a\\nb\\x01'", Json.repr("a\nb\u0001"));
        assertEquals("{'a': [1, 2.5, None, True]}", Json.repr(Json.parse("{\"a\":[1,2.5,null,true]}")));
    }
}
