package fleet.flink.shadow;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import fleet.flink.VectorFiles;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * tests/vectors/shadow_job/*.json through ShadowLogic.handle: for each record, the same outputs
 * in the same order, each the exact JSON text the Python core (jobs/shadow/logic.py) writes
 * (tests/vectors/shadow_job_replay.py generates them). The state carries over per key, in memory.
 */
class ShadowLogicVectorsTest {
    private static final Path VECTORS = VectorFiles.dir("shadow_job");

    /** logic.MemoryState */
    static final class MemoryState implements ShadowLogic.DeviceState {
        final Map<String, String> docs = new LinkedHashMap<>();
        final Map<String, String> buckets = new HashMap<>();
        String conn;

        @Override
        public String document(String name) {
            return docs.get(name);
        }

        @Override
        public void putDocument(String name, String encoded) {
            docs.put(name, encoded);
        }

        @Override
        public Iterable<Map.Entry<String, String>> documents() {
            return new ArrayList<>(docs.entrySet());
        }

        @Override
        public String bucket(String name) {
            return buckets.get(name);
        }

        @Override
        public void putBucket(String name, String encoded) {
            buckets.put(name, encoded);
        }

        @Override
        public String connectivity() {
            return conn;
        }

        @Override
        public void putConnectivity(String encoded) {
            conn = encoded;
        }
    }

    @TestFactory
    Stream<DynamicTest> vectors() throws IOException {
        return VectorFiles.tests(VECTORS, 4, ShadowLogicVectorsTest::replay);
    }

    private static void replay(Path file) throws Exception {
        JsonNode vector = Json.parse(Files.readString(file));
        ShadowLogic logic = new ShadowLogic(ShadowDomain.defaults());
        Map<String, MemoryState> states = new HashMap<>();
        int index = 0;
        for (JsonNode step : vector.get("steps")) {
            String key = step.get("key").isNull() ? null : step.get("key").textValue();
            MemoryState state = states.computeIfAbsent(key == null ? "\0none" : key, k -> new MemoryState());
            List<ShadowLogic.Output> outputs = logic.handle(key, step.get("raw").textValue(), step.get("now").longValue(), state);
            List<String> actual = new ArrayList<>();
            for (ShadowLogic.Output o : outputs) {
                actual.add(o.kind.name().toLowerCase() + " " + o.key + " " + comparable(Json.dumps(o.value)));
            }
            List<String> expected = new ArrayList<>();
            for (JsonNode o : step.get("expect")) {
                expected.add(o.get("kind").textValue() + " " + (o.get("key").isNull() ? null : o.get("key").textValue())
                        + " " + comparable(o.get("text").textValue()));
            }
            assertEquals(String.join("\n", expected), String.join("\n", actual),
                    vector.get("name").textValue() + " step " + index + ": " + step.get("raw"));
            // The Cassandra rows: each field must also convert to the row types.
            for (ShadowLogic.Output o : outputs) {
                if (o.kind == ShadowLogic.Kind.SHADOW) {
                    ShadowCore.row(ShadowLogic.SHADOW_FIELDS, o.value);
                }
            }
            index++;
        }
    }

    /** The text, but for an invalid-JSON dead letter's detail: the parsers word their errors differently. */
    private static String comparable(String text) throws IOException {
        JsonNode node = Json.parse(text);
        if (node.isObject() && "invalid_json".equals(node.path("reason").asText())) {
            ObjectNode copy = ((ObjectNode) node).deepCopy();
            copy.put("detail", node.get("detail").textValue().split(":", 2)[0]);
            return Json.dumps(copy);
        }
        return text;
    }
}
