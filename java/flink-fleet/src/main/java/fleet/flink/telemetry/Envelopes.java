package fleet.flink.telemetry;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
// kafka-clients as shaded inside flink-sql-connector-kafka (the jar the cluster has).
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;

import java.nio.charset.StandardCharsets;
import java.time.Duration;

/**
 * The telemetry job's per-record work that needs no Python: keying and event time.
 *
 * <p>Records flow into the Python operator as {@code Row(device_id, raw envelope JSON)}, the
 * shape PyFlink's keyed operators take (key first), so the job keys them in Java instead of
 * through PyFlink's key_by (one Python call per record saved), and event time comes from the
 * envelope's {@code ts} through a Java timestamp assigner inside the source (per-partition
 * watermarks, no Python call either).
 */
public final class Envelopes {
    private Envelopes() {}

    /** Row(device_id, raw) type: what the sources below produce. */
    public static TypeInformation<Row> keyedType() {
        return Types.ROW(Types.STRING, Types.STRING);
    }

    /** Kafka record -> Row(key, value): the bridge keys every record by device id. */
    public static KafkaRecordDeserializationSchema<Row> kafkaDeserializer() {
        return new KafkaKeyed();
    }

    /** For sources of raw envelope strings (files, tests): Row(device_id read from the JSON, raw). */
    public static MapFunction<String, Row> keyFromJson() {
        return new KeyFromJson();
    }

    /** Bounded out-of-orderness on the envelope's ts, with idleness, for Row(device_id, raw). */
    public static WatermarkStrategy<Row> payloadTimeWatermarks(long outOfOrdernessMs, long idlenessMs) {
        return WatermarkStrategy.<Row>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrdernessMs))
                .withTimestampAssigner(new PayloadTs())
                .withIdleness(Duration.ofMillis(idlenessMs));
    }

    /** Same, on the Kafka record timestamp (the bridge's produce time). */
    public static WatermarkStrategy<Row> recordTimeWatermarks(long outOfOrdernessMs, long idlenessMs) {
        return WatermarkStrategy.<Row>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrdernessMs))
                .withIdleness(Duration.ofMillis(idlenessMs));
    }

    static final class KafkaKeyed implements KafkaRecordDeserializationSchema<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
            if (record.value() == null) {
                return; // a tombstone carries no telemetry
            }
            String value = new String(record.value(), StandardCharsets.UTF_8);
            String key = record.key() != null ? new String(record.key(), StandardCharsets.UTF_8) : deviceId(value);
            out.collect(Row.of(key, value));
        }

        @Override
        public TypeInformation<Row> getProducedType() {
            return keyedType();
        }
    }

    static final class KeyFromJson implements MapFunction<String, Row>, ResultTypeQueryable<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public Row map(String raw) {
            return Row.of(deviceId(raw), raw);
        }

        @Override
        public TypeInformation<Row> getProducedType() {
            return keyedType();
        }
    }

    static final class PayloadTs implements SerializableTimestampAssigner<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public long extractTimestamp(Row row, long recordTimestamp) {
            long ts = topLevelTs((String) row.getField(1));
            return ts >= 0 ? ts : recordTimestamp;
        }
    }

    private static final String DEVICE_ID = "\"device_id\":\"";
    private static final String TS = "\"ts\":";

    /** The device_id string value, or "" (the Python core then dead-letters the record). */
    static String deviceId(String json) {
        int at = json.indexOf(DEVICE_ID);
        if (at < 0) {
            return "";
        }
        int start = at + DEVICE_ID.length();
        int end = json.indexOf('"', start);
        return end > start ? json.substring(start, end) : "";
    }

    /** The first "ts": number (the envelope's own ts precedes the payload), or -1. */
    static long topLevelTs(String json) {
        int at = json.indexOf(TS);
        if (at < 0) {
            return -1;
        }
        int i = at + TS.length();
        while (i < json.length() && json.charAt(i) == ' ') {
            i++;
        }
        long value = 0;
        int digits = 0;
        for (; i < json.length() && digits < 18; i++, digits++) {
            char c = json.charAt(i);
            if (c < '0' || c > '9') {
                break;
            }
            value = value * 10 + (c - '0');
        }
        return digits > 0 ? value : -1;
    }
}
