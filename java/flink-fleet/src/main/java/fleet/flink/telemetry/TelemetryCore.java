package fleet.flink.telemetry;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

import java.io.IOException;
import java.io.StringWriter;
import java.io.UncheckedIOException;
import java.time.Duration;

import fleet.flink.telemetry.TelemetryEnvelope.Point;
import fleet.flink.telemetry.TelemetryEnvelope.Rejected;
import fleet.flink.telemetry.TelemetryLogic.DeviceState;
import fleet.flink.telemetry.TelemetryLogic.GapReport;
import fleet.flink.telemetry.TelemetryLogic.Rollup;
import fleet.flink.telemetry.TelemetryLogic.Step;

/**
 * The telemetry job's core in Java: per device, validate, dedup by seq, per-device lateness, gaps
 * and 1-minute rollups. A port of the Python operator in jobs/telemetry/python_core.py (TelemetryCore)
 * over fleet/telemetry/domain.py, which stay the readable reference and the spec; the job runs
 * this one by default (--core java) because the Python operator was the pipeline's largest CPU
 * cost per record.
 *
 * <p>Input: {@code Row(device_id, raw envelope JSON)} keyed by {@code Row(device_id)} (the job's
 * key_by_device). Main output: each accepted envelope as received. Side outputs, JSON text with the
 * field names of the job's ROLLUP_FIELDS, GAP_FIELDS and STATS_FIELDS, and dead-letter JSON:
 * {@link #rollupsTag()}, {@link #gapsTag()}, {@link #statsTag()}, {@link #deadLettersTag()}.
 *
 * <p>State: one byte[] per device (TelemetryLogic.DeviceState's own compact encoding), with a TTL
 * (the dedup horizon) refreshed on every write and cleaned up by RocksDB's compaction filter.
 */
public class TelemetryCore extends KeyedProcessFunction<Row, Row, String> implements ResultTypeQueryable<String> {
    private static final long serialVersionUID = 1L;

    private static final OutputTag<String> ROLLUPS = new OutputTag<>("rollups", Types.STRING);
    private static final OutputTag<String> GAPS = new OutputTag<>("gaps", Types.STRING);
    private static final OutputTag<String> STATS = new OutputTag<>("device-stats", Types.STRING);
    private static final OutputTag<String> DEAD_LETTERS = new OutputTag<>("dead-letters", Types.STRING);

    /** {device_id, bucket_start, metric, min, max, avg, sum, count} per metric of a published bucket. */
    public static OutputTag<String> rollupsTag() {
        return ROLLUPS;
    }

    /** {device_id, first_seq, last_seq, missing, after_ts, before_ts, status}. */
    public static OutputTag<String> gapsTag() {
        return GAPS;
    }

    /** {device_id, max_seq, last_ts, received, duplicates, late, lost}. */
    public static OutputTag<String> statsTag() {
        return STATS;
    }

    /** Dead-letter JSON (schemas/kafka/dead-letter.schema.json). */
    public static OutputTag<String> deadLettersTag() {
        return DEAD_LETTERS;
    }

    private final TelemetryLogic rules;
    private final long stateTtlMs;
    private final boolean wallClockTimers;

    private transient ValueState<byte[]> device;
    private transient DataOutputSerializer encodeBuffer;
    private transient DataInputDeserializer decodeBuffer;
    private transient Step step;
    private transient Counter accepted;
    private transient Counter duplicates;
    private transient Counter late;
    private transient Counter invalid;
    private transient Counter gapsLost;
    private transient Counter recordsLost;

    /** The job's rule configuration (fleet.telemetry.domain.TelemetryRules) and state TTL (all long: py4j hands Python ints over as they come). */
    public TelemetryCore(long allowedLatenessMs, long maxFutureSkewMs, long rollupBucketMs, long maxOpenGaps,
                         long stateTtlMs) {
        this(allowedLatenessMs, maxFutureSkewMs, rollupBucketMs, maxOpenGaps, stateTtlMs, true);
    }

    /** @param wallClockTimers also publish a quiet device's buckets and gaps by the wall clock. */
    public TelemetryCore(long allowedLatenessMs, long maxFutureSkewMs, long rollupBucketMs, long maxOpenGaps,
                         long stateTtlMs, boolean wallClockTimers) {
        this.rules = new TelemetryLogic(allowedLatenessMs, maxFutureSkewMs, rollupBucketMs, Math.toIntExact(maxOpenGaps));
        this.stateTtlMs = stateTtlMs;
        this.wallClockTimers = wallClockTimers;
    }

    @Override
    public void open(OpenContext openContext) throws Exception {
        StateTtlConfig ttl = StateTtlConfig.newBuilder(Duration.ofMillis(stateTtlMs))
                .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .cleanupInRocksdbCompactFilter(1000, Duration.ofDays(30))
                .build();
        ValueStateDescriptor<byte[]> descriptor =
                new ValueStateDescriptor<>("device", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
        descriptor.enableTimeToLive(ttl);
        device = getRuntimeContext().getState(descriptor);
        encodeBuffer = new DataOutputSerializer(256);
        decodeBuffer = new DataInputDeserializer();
        step = new Step();
        MetricGroup group = getRuntimeContext().getMetricGroup().addGroup("telemetry");
        accepted = group.counter("accepted");
        duplicates = group.counter("duplicates");
        late = group.counter("late");
        invalid = group.counter("invalid");
        gapsLost = group.counter("gapsLost");
        recordsLost = group.counter("recordsLost");
    }

    @Override
    public void processElement(Row in, Context ctx, Collector<String> out) throws Exception {
        String raw = (String) in.getField(1);
        Object parsed = TelemetryEnvelope.parse(raw, rules.maxFutureSkewMs);
        if (parsed instanceof Point && !((Point) parsed).deviceId.equals(in.getField(0))) {
            // Per-device state lives under the record's key: never file a record under another device.
            Point p = (Point) parsed;
            String detail = "$.device_id: '" + p.deviceId + "' but the record key is '" + in.getField(0) + "'";
            parsed = new Rejected(TelemetryEnvelope.KEY_MISMATCH, detail.length() > 300 ? detail.substring(0, 300) : detail,
                    p.deviceId, p.mqttTopic, p.ingestTs);
        }
        if (parsed instanceof Rejected) {
            invalid.inc();
            ctx.output(DEAD_LETTERS, TelemetryEnvelope.deadLetter((Rejected) parsed, raw, System.currentTimeMillis()));
            return;
        }
        Point point = (Point) parsed;
        byte[] stored = device.value();
        DeviceState state = stored != null ? DeviceState.decode(stored, decodeBuffer) : new DeviceState();
        Step step = this.step.reset();
        rules.observe(state, point, step);
        switch (step.outcome) {
            case ACCEPTED:
                accepted.inc();
                out.collect(raw);
                break;
            case DUPLICATE:
                duplicates.inc();
                break;
            default:
                late.inc();
                Rejected rejected = new Rejected(TelemetryEnvelope.LATE, "ts " + point.ts + " is " + (state.clock - point.ts)
                        + " ms behind the device's newest ts " + state.clock + " (allowed lateness "
                        + rules.allowedLatenessMs + " ms)", point.deviceId, point.mqttTopic, point.ingestTs);
                ctx.output(DEAD_LETTERS, TelemetryEnvelope.deadLetter(rejected, raw, System.currentTimeMillis()));
        }
        device.update(state.encode(encodeBuffer));
        long wallNow = step.timerCount > 0 && wallClockTimers ? ctx.timerService().currentProcessingTime() : 0;
        for (int i = 0; i < step.timerCount; i++) {
            ctx.timerService().registerEventTimeTimer(step.timers[i]);
            if (wallClockTimers) {
                ctx.timerService().registerProcessingTimeTimer(rules.wallClockTimer(step.timers[i], wallNow));
            }
        }
        if (step.emits()) {
            emit(point.deviceId, state, step, ctx);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<String> out) throws Exception {
        byte[] stored = device.value();
        if (stored == null) { // expired or never written
            return;
        }
        DeviceState state = DeviceState.decode(stored, decodeBuffer);
        Step step = this.step.reset();
        long now = ctx.timeDomain() == TimeDomain.EVENT_TIME ? timestamp : TelemetryLogic.wallClockNow(timestamp);
        rules.onTime(state, now, step);
        if (!step.rollups.isEmpty() || !step.gaps.isEmpty()) {
            device.update(state.encode(encodeBuffer));
        }
        if (step.emits()) {
            emit((String) ctx.getCurrentKey().getField(0), state, step, ctx);
        }
    }

    private void emit(String deviceId, DeviceState state, Step step, Context ctx) {
        for (Rollup r : step.rollups) {
            output(ctx, ROLLUPS, deviceId, g -> {
                g.writeNumberField("bucket_start", r.bucketStart);
                g.writeStringField("metric", r.metric);
                number(g, "min", r.min);
                number(g, "max", r.max);
                number(g, "avg", r.avg());
                number(g, "sum", r.sum);
                g.writeNumberField("count", r.count);
            });
        }
        for (GapReport gap : step.gaps) {
            if (TelemetryLogic.GAP_LOST.equals(gap.status)) {
                gapsLost.inc();
                recordsLost.inc(gap.missing);
            }
            output(ctx, GAPS, deviceId, g -> {
                g.writeNumberField("first_seq", gap.firstSeq);
                g.writeNumberField("last_seq", gap.lastSeq);
                g.writeNumberField("missing", gap.missing);
                g.writeNumberField("after_ts", gap.afterTs);
                g.writeNumberField("before_ts", gap.beforeTs);
                g.writeStringField("status", gap.status);
            });
        }
        if (step.statsChanged) {
            output(ctx, STATS, deviceId, g -> {
                g.writeNumberField("max_seq", state.maxSeq);
                g.writeNumberField("last_ts", state.clock);
                g.writeNumberField("received", state.received);
                g.writeNumberField("duplicates", state.duplicates);
                g.writeNumberField("late", state.late);
                g.writeNumberField("lost", state.lost);
            });
        }
    }

    /** The fields of one side-output JSON object, after its device_id. */
    private interface Fields {
        void write(JsonGenerator g) throws IOException;
    }

    /** {"device_id": ..., <fields>} as JSON text to a side output. */
    private static void output(Context ctx, OutputTag<String> tag, String deviceId, Fields fields) {
        StringWriter text = new StringWriter(160);
        try (JsonGenerator g = TelemetryEnvelope.generator(text)) {
            g.writeStartObject();
            g.writeStringField("device_id", deviceId);
            fields.write(g);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        ctx.output(tag, text.toString());
    }

    /** A double as orjson writes one: null when not finite (a sum of huge values can overflow). */
    private static void number(JsonGenerator g, String name, double value) throws IOException {
        if (Double.isFinite(value)) {
            g.writeNumberField(name, value);
        } else {
            g.writeNullField(name);
        }
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }
}
