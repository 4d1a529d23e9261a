package fleet.flink.sinks;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;

/**
 * JSON records from the Python operator -> typed rows for the Java sinks.
 *
 * <p>Thread-mode Python hands a string to Java far more cheaply than a Row holding a map (the
 * conversion is per field), so the telemetry core emits JSON text, already validated, and these
 * functions (chained right behind it) build the rows the Cassandra and lake sinks take.
 */
public final class Rows {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Rows() {}

    /** An accepted envelope -> Row(device_id, ts, seq, ingest_ts, metrics map, attrs JSON). */
    public static MapFunction<String, Row> envelopeToPoint() {
        return new EnvelopeToPoint();
    }

    /**
     * A flat JSON object -> Row of the named fields, in order.
     *
     * @param names comma-separated field names
     * @param types comma-separated STRING | LONG | DOUBLE, one per name
     */
    public static MapFunction<String, Row> jsonToRow(String names, String types) {
        return new JsonToRow(names.split(","), types.split(","));
    }

    static JsonNode parse(String json) {
        try {
            return JSON.readTree(json);
        } catch (IOException e) {
            throw new UncheckedIOException("not JSON: " + json, e);
        }
    }

    static final class EnvelopeToPoint implements MapFunction<String, Row>, ResultTypeQueryable<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public Row map(String raw) {
            JsonNode env = parse(raw);
            JsonNode payload = env.get("payload");
            Map<String, Double> metrics = new HashMap<>();
            for (Iterator<Map.Entry<String, JsonNode>> it = payload.get("metrics").fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                metrics.put(e.getKey(), e.getValue().asDouble());
            }
            JsonNode attrs = payload.get("attrs");
            return Row.of(env.get("device_id").asText(), payload.get("ts").asLong(), payload.get("seq").asLong(),
                    env.get("ingest_ts").asLong(), metrics, attrs == null || attrs.isNull() ? "{}" : attrs.toString());
        }

        @Override
        public TypeInformation<Row> getProducedType() {
            return Types.ROW_NAMED(new String[] {"device_id", "ts", "seq", "ingest_ts", "metrics", "attrs"},
                    Types.STRING, Types.LONG, Types.LONG, Types.LONG, Types.MAP(Types.STRING, Types.DOUBLE), Types.STRING);
        }
    }

    static final class JsonToRow implements MapFunction<String, Row>, ResultTypeQueryable<Row> {
        private static final long serialVersionUID = 1L;
        private final String[] names;
        private final String[] types;

        JsonToRow(String[] names, String[] types) {
            if (names.length != types.length) {
                throw new IllegalArgumentException("names and types differ in length");
            }
            this.names = names;
            this.types = types;
        }

        @Override
        public Row map(String json) {
            JsonNode node = parse(json);
            Row row = new Row(names.length);
            for (int i = 0; i < names.length; i++) {
                JsonNode v = node.get(names[i]);
                if (v == null || v.isNull()) {
                    continue;
                }
                switch (types[i]) {
                    case "LONG": row.setField(i, v.asLong()); break;
                    case "DOUBLE": row.setField(i, v.asDouble()); break;
                    default: row.setField(i, v.asText());
                }
            }
            return row;
        }

        @Override
        public TypeInformation<Row> getProducedType() {
            TypeInformation<?>[] fieldTypes = new TypeInformation<?>[types.length];
            for (int i = 0; i < types.length; i++) {
                fieldTypes[i] = "LONG".equals(types[i]) ? Types.LONG : "DOUBLE".equals(types[i]) ? Types.DOUBLE : Types.STRING;
            }
            return Types.ROW_NAMED(names, fieldTypes);
        }
    }
}
