package fleet.flink.telemetry;

import org.apache.flink.api.common.serialization.BulkWriter;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.core.fs.Path;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.formats.parquet.ParquetBuilder;
import org.apache.flink.formats.parquet.ParquetWriterFactory;
import org.apache.flink.streaming.api.functions.sink.filesystem.BucketAssigner;
import org.apache.flink.streaming.api.functions.sink.filesystem.OutputFileConfig;
import org.apache.flink.streaming.api.functions.sink.filesystem.PartFileInfo;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.SimpleVersionedStringSerializer;
import org.apache.flink.streaming.api.functions.sink.filesystem.rollingpolicies.CheckpointRollingPolicy;
import org.apache.flink.types.Row;
import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.column.ParquetProperties;
import org.apache.parquet.hadoop.ParquetWriter;
import org.apache.parquet.hadoop.api.WriteSupport;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;
import org.apache.parquet.io.OutputFile;
import org.apache.parquet.io.api.Binary;
import org.apache.parquet.io.api.RecordConsumer;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.MessageTypeParser;

import java.io.IOException;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.HashMap;
import java.util.Map;

/**
 * The telemetry lake: {@code <base>/date=YYYY-MM-DD/hour=HH/part-*.parquet}, partitioned by the
 * record's own (device) time in UTC, committed on checkpoints (Flink's FileSink two-phase commit:
 * a file becomes visible only once the checkpoint that covers it completes, and a restore
 * discards what was written after that checkpoint), hence each record exactly once.
 *
 * <p>Input rows (as the telemetry job emits them): device_id STRING, ts BIGINT (epoch ms),
 * seq BIGINT, ingest_ts BIGINT (epoch ms), metrics MAP&lt;STRING, DOUBLE&gt;, attrs STRING (JSON).
 * The Parquet schema is written here rather than derived, so {@code ts} carries the
 * TIMESTAMP(MILLIS, isAdjustedToUTC=true) annotation that pyarrow, DuckDB, Spark and Trino read
 * as a UTC timestamp (Flink's RowData writer only writes zone-less timestamps).
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
        return FileSink.forBulkFormat(new Path(basePath), writerFactory())
                .withBucketAssigner(new HourPartitions())
                .withRollingPolicy(new CheckpointOrSize(maxPartBytes))
                .withOutputFileConfig(OutputFileConfig.builder().withPartPrefix("part").withPartSuffix(".parquet").build())
                .build();
    }

    static BulkWriter.Factory<Row> writerFactory() {
        return new ParquetWriterFactory<>((ParquetBuilder<Row>) out -> new Builder(out)
                .withCompressionCodec(CompressionCodecName.SNAPPY)
                .withWriterVersion(ParquetProperties.WriterVersion.PARQUET_1_0)
                .withDictionaryEncoding(true)
                .build());
    }

    /** date=YYYY-MM-DD/hour=HH of the record's ts, in UTC. */
    static final class HourPartitions implements BucketAssigner<Row, String> {
        private static final long serialVersionUID = 1L;
        private static final DateTimeFormatter FORMAT =
                DateTimeFormatter.ofPattern("'date='yyyy-MM-dd'/hour='HH").withZone(ZoneOffset.UTC);
        // Records of one hour share a bucket id: format once per hour, not per record.
        private transient long cachedHour = Long.MIN_VALUE;
        private transient String cachedId;

        @Override
        public String getBucketId(Row row, Context context) {
            long ts = ((Number) row.getField(1)).longValue();
            long hour = Math.floorDiv(ts, 3_600_000L);
            if (hour != cachedHour || cachedId == null) {
                cachedId = FORMAT.format(Instant.ofEpochMilli(hour * 3_600_000L));
                cachedHour = hour;
            }
            return cachedId;
        }

        @Override
        public SimpleVersionedSerializer<String> getSerializer() {
            return SimpleVersionedStringSerializer.INSTANCE;
        }
    }

    /** Roll on every checkpoint (required for bulk formats) and when a part file grows too big. */
    static final class CheckpointOrSize extends CheckpointRollingPolicy<Row, String> {
        private static final long serialVersionUID = 1L;
        private final long maxPartBytes;

        CheckpointOrSize(long maxPartBytes) {
            this.maxPartBytes = maxPartBytes;
        }

        @Override
        public boolean shouldRollOnEvent(PartFileInfo<String> partFileState, Row element) throws IOException {
            return partFileState.getSize() >= maxPartBytes;
        }

        @Override
        public boolean shouldRollOnProcessingTime(PartFileInfo<String> partFileState, long currentTime) {
            return false;
        }
    }

    static final class Builder extends ParquetWriter.Builder<Row, Builder> {
        Builder(OutputFile file) {
            super(file);
        }

        @Override
        protected Builder self() {
            return this;
        }

        @Override
        protected WriteSupport<Row> getWriteSupport(Configuration conf) {
            return new RowWriteSupport();
        }
    }

    static final class RowWriteSupport extends WriteSupport<Row> {
        private final MessageType schema = MessageTypeParser.parseMessageType(SCHEMA);
        private RecordConsumer out;

        @Override
        public WriteContext init(Configuration configuration) {
            Map<String, String> meta = new HashMap<>();
            meta.put("fleet.table", "telemetry");
            return new WriteContext(schema, meta);
        }

        @Override
        public void prepareForWrite(RecordConsumer recordConsumer) {
            this.out = recordConsumer;
        }

        @Override
        public void write(Row row) {
            out.startMessage();
            string(0, "device_id", (String) row.getField(0));
            int64(1, "ts", ((Number) row.getField(1)).longValue());
            int64(2, "seq", ((Number) row.getField(2)).longValue());
            int64(3, "ingest_ts", ((Number) row.getField(3)).longValue());
            @SuppressWarnings("unchecked")
            Map<String, ? extends Number> metrics = (Map<String, ? extends Number>) row.getField(4);
            if (metrics != null) {
                out.startField("metrics", 4);
                out.startGroup();
                if (!metrics.isEmpty()) {
                    out.startField("key_value", 0);
                    for (Map.Entry<String, ? extends Number> e : metrics.entrySet()) {
                        out.startGroup();
                        string(0, "key", e.getKey());
                        out.startField("value", 1);
                        out.addDouble(e.getValue().doubleValue());
                        out.endField("value", 1);
                        out.endGroup();
                    }
                    out.endField("key_value", 0);
                }
                out.endGroup();
                out.endField("metrics", 4);
            }
            Object attrs = row.getField(5);
            if (attrs != null) {
                string(5, "attrs", attrs.toString());
            }
            out.endMessage();
        }

        private void string(int index, String name, String value) {
            out.startField(name, index);
            out.addBinary(Binary.fromString(value));
            out.endField(name, index);
        }

        private void int64(int index, String name, long value) {
            out.startField(name, index);
            out.addLong(value);
            out.endField(name, index);
        }
    }
}
