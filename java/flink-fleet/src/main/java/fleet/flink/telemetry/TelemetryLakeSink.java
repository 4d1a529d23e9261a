package fleet.flink.telemetry;

import fleet.flink.sinks.ParquetLakeSink;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.types.Row;

/**
 * The telemetry lake: {@code <base>/date=YYYY-MM-DD/hour=HH/part-*.parquet}, partitioned by the
 * record's own (device) time in UTC, committed on checkpoints, hence each record exactly once
 * (fleet.flink.sinks.ParquetLakeSink with this table's schema).
 *
 * <p>Input rows (as the telemetry job emits them): device_id STRING, ts BIGINT (epoch ms),
 * seq BIGINT, ingest_ts BIGINT (epoch ms), metrics MAP&lt;STRING, DOUBLE&gt;, attrs STRING (JSON).
 * {@code ts} carries the TIMESTAMP(MILLIS, isAdjustedToUTC=true) annotation.
 */
public final class TelemetryLakeSink {
    static final String SCHEMA = "message telemetry {\n"
            + "  required binary device_id (STRING);\n"
            + "  required int64 ts (TIMESTAMP(MILLIS,true));\n"
            + "  required int64 seq;\n"
            + "  required int64 ingest_ts;\n"
            + "  optional group metrics (MAP) {\n"
            + "    repeated group key_value {\n"
            + "      required binary key (STRING);\n"
            + "      required double value;\n"
            + "    }\n"
            + "  }\n"
            + "  optional binary attrs (STRING);\n"
            + "}\n";

    private TelemetryLakeSink() {}

    /**
     * @param basePath e.g. file:///var/lake/telemetry
     * @param maxPartBytes roll a part file early once it reaches this size (bulk formats roll on
     *     every checkpoint anyway)
     */
    public static FileSink<Row> create(String basePath, long maxPartBytes) {
        return ParquetLakeSink.create(basePath, maxPartBytes, SCHEMA, "telemetry", "ts");
    }
}
