package fleet.flink.sinks;

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
import org.apache.parquet.schema.GroupType;
import org.apache.parquet.schema.LogicalTypeAnnotation;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.MessageTypeParser;
import org.apache.parquet.schema.PrimitiveType;
import org.apache.parquet.schema.Type;

import java.io.IOException;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A lake table: {@code <base>/date=YYYY-MM-DD/hour=HH/part-*.parquet}, partitioned by one epoch-ms
 * column of the record in UTC, committed on checkpoints (Flink's FileSink two-phase commit: a file
 * becomes visible only once the checkpoint that covers it completes, and a restore discards what
 * was written after that checkpoint), hence each record exactly once.
 *
 * <p>The Parquet schema is given as a message type and written as given, so a timestamp column
 * carries the TIMESTAMP(MILLIS, isAdjustedToUTC=true) annotation that pyarrow, DuckDB, Spark and
 * Trino read as a UTC timestamp (Flink's RowData writer only writes zone-less timestamps). Row
 * field i fills top-level column i; trailing row fields beyond the schema's are not written.
 * Supported columns: binary (any Object, as its toString), int64, int32, double, boolean, and a
 * MAP group of primitive keys and values (a java.util.Map). A null fills an optional column with
 * nothing and fails a required one.
 */
public final class ParquetLakeSink {
    private ParquetLakeSink() {}

    /**
     * @param basePath the table root, e.g. file:///var/lake/telemetry
     * @param maxPartBytes roll a part file early once it reaches this size (bulk formats roll on
     *     every checkpoint anyway)
     * @param schema the Parquet message type, e.g. "message t { required int64 ts (TIMESTAMP(MILLIS,true)); }"
     * @param table written to each file's footer as {@code fleet.table}
     * @param partitionColumn the epoch-ms column whose UTC hour is the record's partition
     */
    public static FileSink<Row> create(String basePath, long maxPartBytes, String schema, String table,
                                       String partitionColumn) {
        int tsField = MessageTypeParser.parseMessageType(schema).getFieldIndex(partitionColumn);
        return FileSink.forBulkFormat(new Path(basePath), writerFactory(schema, table))
                .withBucketAssigner(new HourPartitions(tsField))
                .withRollingPolicy(new CheckpointOrSize(maxPartBytes))
                .withOutputFileConfig(OutputFileConfig.builder().withPartPrefix("part").withPartSuffix(".parquet").build())
                .build();
    }

    static BulkWriter.Factory<Row> writerFactory(String schema, String table) {
        return new ParquetWriterFactory<>((ParquetBuilder<Row>) out -> new Builder(out, schema, table)
                .withCompressionCodec(CompressionCodecName.SNAPPY)
                .withWriterVersion(ParquetProperties.WriterVersion.PARQUET_1_0)
                .withDictionaryEncoding(true)
                .build());
    }

    /** date=YYYY-MM-DD/hour=HH of the row's epoch-ms field {@code tsField}, in UTC. */
    static final class HourPartitions implements BucketAssigner<Row, String> {
        private static final long serialVersionUID = 1L;
        private static final DateTimeFormatter FORMAT =
                DateTimeFormatter.ofPattern("'date='yyyy-MM-dd'/hour='HH").withZone(ZoneOffset.UTC);
        private final int tsField;
        // Records of one hour share a bucket id: format once per hour, not per record.
        private transient long cachedHour = Long.MIN_VALUE;
        private transient String cachedId;

        HourPartitions(int tsField) {
            this.tsField = tsField;
        }

        @Override
        public String getBucketId(Row row, Context context) {
            long ts = ((Number) row.getField(tsField)).longValue();
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
        private final String schema;
        private final String table;

        Builder(OutputFile file, String schema, String table) {
            super(file);
            this.schema = schema;
            this.table = table;
        }

        @Override
        protected Builder self() {
            return this;
        }

        @Override
        protected WriteSupport<Row> getWriteSupport(Configuration conf) {
            return new RowWriteSupport(MessageTypeParser.parseMessageType(schema), table);
        }
    }

    /** Writes Row field i as column i of the schema, following the schema's types. */
    static final class RowWriteSupport extends WriteSupport<Row> {
        private final MessageType schema;
        private final String table;
        private RecordConsumer out;

        RowWriteSupport(MessageType schema, String table) {
            this.schema = schema;
            this.table = table;
            for (Type column : schema.getFields()) {
                if (!column.isPrimitive() && !isMap(column)) {
                    throw new IllegalArgumentException("unsupported lake column " + column);
                }
            }
        }

        @Override
        public WriteContext init(Configuration configuration) {
            Map<String, String> meta = new HashMap<>();
            meta.put("fleet.table", table);
            return new WriteContext(schema, meta);
        }

        @Override
        public void prepareForWrite(RecordConsumer recordConsumer) {
            this.out = recordConsumer;
        }

        @Override
        public void write(Row row) {
            out.startMessage();
            List<Type> columns = schema.getFields();
            for (int i = 0; i < columns.size(); i++) {
                Type column = columns.get(i);
                Object value = row.getField(i);
                if (value == null) {
                    if (column.isRepetition(Type.Repetition.REQUIRED)) {
                        throw new IllegalArgumentException("lake column " + column.getName() + " is required, got null");
                    }
                    continue;
                }
                out.startField(column.getName(), i);
                if (column.isPrimitive()) {
                    primitive(column.asPrimitiveType(), value);
                } else {
                    map(column.asGroupType(), (Map<?, ?>) value);
                }
                out.endField(column.getName(), i);
            }
            out.endMessage();
        }

        /** MAP group: an empty map is the group without its repeated key_value field. */
        private void map(GroupType column, Map<?, ?> value) {
            out.startGroup();
            if (!value.isEmpty()) {
                GroupType entry = column.getType(0).asGroupType();
                PrimitiveType keyType = entry.getType(0).asPrimitiveType();
                PrimitiveType valueType = entry.getType(1).asPrimitiveType();
                out.startField(entry.getName(), 0);
                for (Map.Entry<?, ?> e : value.entrySet()) {
                    out.startGroup();
                    out.startField(keyType.getName(), 0);
                    primitive(keyType, e.getKey());
                    out.endField(keyType.getName(), 0);
                    if (e.getValue() != null) {
                        out.startField(valueType.getName(), 1);
                        primitive(valueType, e.getValue());
                        out.endField(valueType.getName(), 1);
                    }
                    out.endGroup();
                }
                out.endField(entry.getName(), 0);
            }
            out.endGroup();
        }

        private void primitive(PrimitiveType type, Object value) {
            switch (type.getPrimitiveTypeName()) {
                case BINARY -> out.addBinary(Binary.fromString(value.toString()));
                case INT64 -> out.addLong(((Number) value).longValue());
                case INT32 -> out.addInteger(((Number) value).intValue());
                case DOUBLE -> out.addDouble(((Number) value).doubleValue());
                case BOOLEAN -> out.addBoolean((Boolean) value);
                default -> throw new IllegalArgumentException("unsupported lake column type " + type);
            }
        }

        private static boolean isMap(Type column) {
            if (column.isPrimitive()
                    || !(column.getLogicalTypeAnnotation() instanceof LogicalTypeAnnotation.MapLogicalTypeAnnotation)) {
                return false;
            }
            GroupType group = column.asGroupType();
            if (group.getFieldCount() != 1 || group.getType(0).isPrimitive()) {
                return false;
            }
            GroupType entry = group.getType(0).asGroupType();
            return entry.getFieldCount() == 2 && entry.getType(0).isPrimitive() && entry.getType(1).isPrimitive();
        }
    }
}
