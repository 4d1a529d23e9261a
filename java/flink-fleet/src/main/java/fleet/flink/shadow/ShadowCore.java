package fleet.flink.shadow;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import fleet.flink.shadow.ShadowLogic.Output;

/**
 * The shadow job's core in Java: per device, shadow updates, gets, connectivity and operator
 * changes. A port of the Python operator (jobs/shadow/core.py over jobs/shadow/logic.py and
 * fleet/shadow/domain.py, which stay the readable reference and the spec); the same records in,
 * the same records out (the pipeline tests run both on the same input).
 *
 * <p>Input: {@code Row(device_id, raw JSON)} keyed by {@code Row(device_id)}. Main output: the
 * downlink, {@code Row(device_id, value)}. Side outputs: verdicts and dead letters (the same Row
 * shape), and the Cassandra rows of the job's SHADOW_FIELDS, HISTORY_FIELDS and CONNECTIVITY_FIELDS.
 *
 * <p>State per device, as the Python core's (strings, so either is easy to inspect): MapState
 * shadow name -> fleet.shadow.domain.encode(document) (the same text), MapState shadow name ->
 * "milli_tokens,updated_at", and the connectivity JSON.
 */
public class ShadowCore extends KeyedProcessFunction<Row, Row, Row> implements ResultTypeQueryable<Row> {
    private static final long serialVersionUID = 1L;

    private static final TypeInformation<String> S = Types.STRING;
    private static final TypeInformation<Long> L = Types.LONG;
    static final TypeInformation<Row> KAFKA_TYPE = Types.ROW_NAMED(new String[]{"device_id", "value"}, S, S);
    static final TypeInformation<Row> SHADOW_TYPE = Types.ROW_NAMED(ShadowLogic.SHADOW_FIELDS, S, S, L, S, S, S, L, L);
    static final TypeInformation<Row> HISTORY_TYPE =
            Types.ROW_NAMED(ShadowLogic.HISTORY_FIELDS, S, S, L, L, S, S, S, S, S, S, L);
    static final TypeInformation<Row> CONNECTIVITY_TYPE =
            Types.ROW_NAMED(ShadowLogic.CONNECTIVITY_FIELDS, S, Types.BOOLEAN, L, L, S, S, L);

    // The ids of the Python core's tags (jobs/shadow/records.py).
    private static final OutputTag<Row> VERDICTS = new OutputTag<>("shadow-verdicts", KAFKA_TYPE);
    private static final OutputTag<Row> DEAD_LETTERS = new OutputTag<>("dead-letters", KAFKA_TYPE);
    private static final OutputTag<Row> SHADOWS = new OutputTag<>("shadows", SHADOW_TYPE);
    private static final OutputTag<Row> HISTORY = new OutputTag<>("shadow-history", HISTORY_TYPE);
    private static final OutputTag<Row> CONNECTIVITY = new OutputTag<>("device-connectivity", CONNECTIVITY_TYPE);

    public static OutputTag<Row> verdictsTag() {
        return VERDICTS;
    }

    public static OutputTag<Row> deadLettersTag() {
        return DEAD_LETTERS;
    }

    public static OutputTag<Row> shadowsTag() {
        return SHADOWS;
    }

    public static OutputTag<Row> historyTag() {
        return HISTORY;
    }

    public static OutputTag<Row> connectivityTag() {
        return CONNECTIVITY;
    }

    private final ShadowLogic logic;

    private transient MapState<String, String> documents;
    private transient MapState<String, String> buckets;
    private transient ValueState<String> connectivity;
    private transient ShadowLogic.DeviceState state;
    private transient Counter records;
    private transient Counter deadLetters;

    /** fleet.shadow.domain.ShadowRules' fields, in order (all long: py4j hands Python ints over as they come). */
    public ShadowCore(long maxStateBytes, long maxDepth, long maxKeys, String keyPattern, String namePattern,
                      long maxClientTokenLength, long burst, long perSecond) {
        this.logic = new ShadowLogic(new ShadowDomain(maxStateBytes, maxDepth, maxKeys, keyPattern, namePattern,
                maxClientTokenLength, burst, perSecond));
    }

    @Override
    public void open(OpenContext openContext) throws Exception {
        documents = getRuntimeContext().getMapState(new MapStateDescriptor<>("documents", S, S));
        buckets = getRuntimeContext().getMapState(new MapStateDescriptor<>("buckets", S, S));
        connectivity = getRuntimeContext().getState(new ValueStateDescriptor<>("connectivity", S));
        state = new ShadowLogic.DeviceState() {
            @Override
            public String document(String name) throws Exception {
                return documents.get(name);
            }

            @Override
            public void putDocument(String name, String encoded) throws Exception {
                documents.put(name, encoded);
            }

            @Override
            public Iterable<Map.Entry<String, String>> documents() throws Exception {
                List<Map.Entry<String, String>> all = new ArrayList<>();
                for (Map.Entry<String, String> e : documents.entries()) {
                    all.add(Map.entry(e.getKey(), e.getValue()));
                }
                return all;
            }

            @Override
            public String bucket(String name) throws Exception {
                return buckets.get(name);
            }

            @Override
            public void putBucket(String name, String encoded) throws Exception {
                buckets.put(name, encoded);
            }

            @Override
            public String connectivity() throws Exception {
                return connectivity.value();
            }

            @Override
            public void putConnectivity(String encoded) throws Exception {
                connectivity.update(encoded);
            }
        };
        MetricGroup group = getRuntimeContext().getMetricGroup().addGroup("shadow");
        records = group.counter("records");
        deadLetters = group.counter("deadLetters");
    }

    @Override
    public void processElement(Row in, Context ctx, Collector<Row> out) throws Exception {
        String key = (String) ctx.getCurrentKey().getField(0);
        String raw = (String) in.getField(1);
        long now = System.currentTimeMillis();
        List<Output> outputs;
        try {
            outputs = logic.handle(key, raw, now, state);
        } catch (Exception e) { // a bug must dead-letter the record, not stop every device's shadows
            outputs = List.of(ShadowLogic.deadLetter("invalid_envelope", "shadow job error: " + e.getClass().getSimpleName()
                    + ": " + e.getMessage(), raw != null ? raw : "", key, "", now));
        }
        records.inc();
        for (Output o : outputs) {
            switch (o.kind) {
                case DOWNLINK -> out.collect(Row.of(o.key, Json.dumps(o.value)));
                case VERDICT -> ctx.output(VERDICTS, Row.of(o.key, Json.dumps(o.value)));
                case DEAD_LETTER -> {
                    deadLetters.inc();
                    ctx.output(DEAD_LETTERS, Row.of(o.key, Json.dumps(o.value)));
                }
                case SHADOW -> ctx.output(SHADOWS, row(ShadowLogic.SHADOW_FIELDS, o.value));
                case HISTORY -> ctx.output(HISTORY, row(ShadowLogic.HISTORY_FIELDS, o.value));
                case CONNECTIVITY -> ctx.output(CONNECTIVITY, row(ShadowLogic.CONNECTIVITY_FIELDS, o.value));
                default -> throw new IllegalStateException("unknown output " + o.kind);
            }
        }
    }

    /** The row of ``fields`` (strings, longs, booleans or nulls) from the output's JSON object. */
    static Row row(String[] fields, ObjectNode value) {
        Object[] values = new Object[fields.length];
        for (int i = 0; i < fields.length; i++) {
            JsonNode v = value.get(fields[i]);
            values[i] = v == null || v.isNull() ? null : v.isTextual() ? v.textValue() : v.isBoolean() ? (Object) v.booleanValue()
                    : (Object) v.longValue();
        }
        return Row.of(values);
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return KAFKA_TYPE;
    }
}
