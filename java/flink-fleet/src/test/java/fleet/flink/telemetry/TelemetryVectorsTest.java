package fleet.flink.telemetry;

import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.JsonNodeFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.stream.Stream;

import fleet.flink.VectorFiles;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * tests/vectors/telemetry/*.json through TelemetryEnvelope and TelemetryLogic: the same files,
 * the same expected outputs as the Python reference (tests/vectors/replay.py, whose output shape
 * this mirrors, state round trip between steps included).
 */
class TelemetryVectorsTest {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
    private static final Path VECTORS = VectorFiles.dir("telemetry");

    @TestFactory
    Stream<DynamicTest> vectors() throws IOException {
        return VectorFiles.tests(VECTORS, 10, TelemetryVectorsTest::replay);
    }

    private static void replay(Path file) throws IOException {
        JsonNode vector = JSON.readTree(file.toFile());
        JsonNode r = vector.get("rules");
        TelemetryLogic logic = new TelemetryLogic(r.get("allowed_lateness_ms").longValue(),
                r.get("max_future_skew_ms").longValue(), r.get("rollup_bucket_ms").longValue(),
                r.get("max_open_gaps").intValue());
        TelemetryLogic.DeviceState state = new TelemetryLogic.DeviceState();
        TelemetryLogic.Step step = new TelemetryLogic.Step();
        DataOutputSerializer out = new DataOutputSerializer(256);
        DataInputDeserializer in = new DataInputDeserializer();
        int index = 0;
        for (JsonNode input : vector.get("steps")) {
            JsonNode actual;
            step.reset();
            if (input.has("on_time")) {
                logic.onTime(state, input.get("on_time").longValue(), step);
                actual = output(step, state);
            } else {
                Object parsed = TelemetryEnvelope.parse(input.get("envelope").textValue(), logic.maxFutureSkewMs);
                if (parsed instanceof TelemetryEnvelope.Rejected rejected) {
                    actual = rejection(rejected);
                } else {
                    logic.observe(state, (TelemetryEnvelope.Point) parsed, step);
                    actual = output(step, state);
                }
            }
            // As text: JsonNode equality tells an int node from a long one holding the same number.
            assertEquals(input.get("expect").toString(), actual.toString(), vector.get("name").textValue() + " step " + index + ": " + input);
            // What Flink stores between records: the state must survive its encoding.
            state = TelemetryLogic.DeviceState.decode(state.encode(out), in);
            index++;
        }
    }

    private static JsonNode rejection(TelemetryEnvelope.Rejected r) {
        ObjectNode o = NODES.objectNode();
        o.put("rejected", r.reason);
        if (r.detail.startsWith("$")) {
            o.put("field", r.detail.split(":", 2)[0]);
        } else {
            o.putNull("field");
        }
        return o;
    }

    private static JsonNode output(TelemetryLogic.Step step, TelemetryLogic.DeviceState state) {
        ObjectNode o = NODES.objectNode();
        if (step.outcome == null) {
            o.putNull("outcome");
        } else {
            o.put("outcome", step.outcome.name().toLowerCase());
        }
        ArrayNode rollups = o.putArray("rollups");
        for (TelemetryLogic.Rollup x : step.rollups) {
            // "final" is not on the Java Rollup: final rollups come from the clock, provisional ones from timers.
            rollups.addObject().put("bucket_start", x.bucketStart).put("metric", x.metric).put("min", x.min)
                    .put("max", x.max).put("sum", x.sum).put("count", x.count).put("avg", x.avg())
                    .put("final", x.isFinal);
        }
        ArrayNode gaps = o.putArray("gaps");
        for (TelemetryLogic.GapReport g : step.gaps) {
            gaps.addObject().put("first_seq", g.firstSeq).put("last_seq", g.lastSeq).put("missing", g.missing)
                    .put("after_ts", g.afterTs).put("before_ts", g.beforeTs).put("status", g.status);
        }
        ArrayNode timers = o.putArray("timers");
        for (int i = 0; i < step.timerCount; i++) {
            timers.add(step.timers[i]);
        }
        o.put("stats_changed", step.statsChanged);
        o.putObject("counters").put("received", state.received).put("duplicates", state.duplicates)
                .put("late", state.late).put("lost", state.lost);
        return o;
    }
}
