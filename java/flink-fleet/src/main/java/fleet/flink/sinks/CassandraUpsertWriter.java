package fleet.flink.sinks;

import com.datastax.oss.driver.api.core.CqlSession;
import com.datastax.oss.driver.api.core.CqlSessionBuilder;
import com.datastax.oss.driver.api.core.config.DefaultDriverOption;
import com.datastax.oss.driver.api.core.config.DriverConfigLoader;
import com.datastax.oss.driver.api.core.cql.BatchStatement;
import com.datastax.oss.driver.api.core.cql.BatchableStatement;
import com.datastax.oss.driver.api.core.cql.BoundStatement;
import com.datastax.oss.driver.api.core.cql.BoundStatementBuilder;
import com.datastax.oss.driver.api.core.cql.DefaultBatchType;
import com.datastax.oss.driver.api.core.cql.ColumnDefinitions;
import com.datastax.oss.driver.api.core.cql.PreparedStatement;
import com.datastax.oss.driver.api.core.cql.Statement;
import com.datastax.oss.driver.api.core.metadata.schema.ColumnMetadata;
import com.datastax.oss.driver.api.core.metadata.schema.TableMetadata;
import com.datastax.oss.driver.api.core.type.DataType;
import com.datastax.oss.driver.api.core.type.DataTypes;
import com.datastax.oss.driver.api.core.type.codec.registry.CodecRegistry;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.groups.SinkWriterMetricGroup;
import org.apache.flink.types.Row;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

final class CassandraUpsertWriter implements SinkWriter<Row> {
    private static final long DAY_MS = 86_400_000L;

    private final CassandraUpsertSink config;
    private final CqlSession session;
    private final PreparedStatement statement;
    private final DataType[] types;
    private final CodecRegistry codecs;
    private final Semaphore permits;
    private final AtomicReference<Throwable> failure = new AtomicReference<>();
    private final ScheduledExecutorService retries;
    private final Counter written;
    private final Counter retried;
    private final Counter collapsed;
    // Rows waiting for a batch, grouped by partition key (insertion order kept: the oldest go first),
    // then by the rest of the primary key: a newer version of a row replaces the waiting one.
    private final Map<List<Object>, Map<List<Object>, BoundStatement>> pending = new LinkedHashMap<>();
    private final int[] partitionKeyMarkers;
    // Markers of the clustering columns (the rest of the primary key); null when the table's
    // metadata is unknown, then every row is kept and only the write timestamps order versions.
    private final int[] clusteringMarkers;
    private final WriteClock clock = new WriteClock();
    private int pendingRows;
    private final ProcessingTimeService timers;
    private boolean lingerScheduled;

    CassandraUpsertWriter(CassandraUpsertSink config, SinkWriterMetricGroup metrics, ProcessingTimeService timers)
            throws IOException {
        this.config = config;
        this.timers = timers;
        DriverConfigLoader loader = DriverConfigLoader.programmaticBuilder()
                .withDuration(DefaultDriverOption.REQUEST_TIMEOUT, Duration.ofMillis(config.requestTimeoutMs))
                .withInt(DefaultDriverOption.CONNECTION_MAX_REQUESTS, Math.max(1024, config.maxInFlight))
                .withBoolean(DefaultDriverOption.REQUEST_DEFAULT_IDEMPOTENCE, true)
                .build();
        CqlSessionBuilder builder = CqlSession.builder()
                .withConfigLoader(loader)
                .withLocalDatacenter(config.localDatacenter)
                .withKeyspace(config.keyspace)
                // The cluster's class loader, not the thread context one Flink sets for user code.
                .withClassLoader(CqlSession.class.getClassLoader());
        for (String point : config.contactPoints.split(",")) {
            String[] hostPort = point.trim().split(":");
            builder.addContactPoint(new InetSocketAddress(hostPort[0], Integer.parseInt(hostPort[1])));
        }
        try {
            this.session = builder.build();
            this.statement = session.prepare(config.cql);
        } catch (RuntimeException e) {
            throw new IOException("cannot connect to Cassandra at " + config.contactPoints + " or prepare: "
                    + config.cql, e);
        }
        ColumnDefinitions vars = statement.getVariableDefinitions();
        if (vars.size() != config.fields.length) {
            session.close();
            throw new IOException("the statement has " + vars.size() + " bind markers but " + config.fields.length
                    + " field indexes were given: " + config.cql);
        }
        this.types = new DataType[vars.size()];
        for (int i = 0; i < types.length; i++) {
            types[i] = vars.get(i).getType();
        }
        this.codecs = session.getContext().getCodecRegistry();
        this.partitionKeyMarkers = statement.getPartitionKeyIndices().stream().mapToInt(Integer::intValue).toArray();
        this.clusteringMarkers = clusteringMarkers(session, vars);
        this.permits = new Semaphore(config.maxInFlight);
        this.retries = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "cassandra-sink-retry");
            t.setDaemon(true);
            return t;
        });
        this.written = metrics.counter("cassandraWrites");
        this.retried = metrics.counter("cassandraRetries");
        this.collapsed = metrics.counter("cassandraVersionsCollapsed");
    }

    @Override
    public void write(Row row, Context context) throws IOException, InterruptedException {
        rethrow();
        BoundStatement bound = bind(row);
        if (config.batchSize <= 1) {
            permits.acquire();
            send(stamped(bound), 0);
            return;
        }
        Map<List<Object>, BoundStatement> partition = pending.computeIfAbsent(partitionKey(row), k -> new LinkedHashMap<>());
        List<Object> rowKey = clusteringMarkers == null ? List.of(pendingRows) : key(row, clusteringMarkers);
        if (partition.put(rowKey, bound) == null) {
            pendingRows++;
        } else {
            collapsed.inc();
        }
        if (pendingRows >= 16 * config.batchSize) {
            sendPending();
        } else if (!lingerScheduled) {
            // A partial buffer goes out after a short linger, so a slow stream is not held back
            // until the next checkpoint. (Timers run in the task thread: no locking needed.)
            lingerScheduled = true;
            timers.registerTimer(timers.getCurrentProcessingTime() + config.lingerMs, t -> {
                lingerScheduled = false;
                sendPending();
            });
        }
    }

    private List<Object> partitionKey(Row row) {
        return key(row, partitionKeyMarkers);
    }

    private List<Object> key(Row row, int[] markers) {
        Object[] key = new Object[markers.length];
        for (int i = 0; i < key.length; i++) {
            int marker = markers[i];
            key[i] = convert(row.getField(config.fields[marker]), types[marker]);
        }
        return Arrays.asList(key);
    }

    /** The markers that bind the table's clustering columns, or null if its metadata is unknown. */
    private static int[] clusteringMarkers(CqlSession session, ColumnDefinitions vars) {
        if (vars.size() == 0) {
            return null;
        }
        TableMetadata table = session.getMetadata().getKeyspace(vars.get(0).getKeyspace())
                .flatMap(k -> k.getTable(vars.get(0).getTable())).orElse(null);
        if (table == null) {
            return null;
        }
        List<Integer> markers = new ArrayList<>();
        for (ColumnMetadata column : table.getClusteringColumns().keySet()) {
            for (int i = 0; i < vars.size(); i++) {
                if (vars.get(i).getName().equals(column.getName())) {
                    markers.add(i);
                }
            }
        }
        return markers.stream().mapToInt(Integer::intValue).toArray();
    }

    /**
     * Everything buffered, as UNLOGGED batches (no atomicity, none needed: idempotent upserts) of
     * at most batchSize rows and about batchBytes, a partition's rows side by side so that
     * Cassandra applies them as one mutation.
     */
    private void sendPending() throws InterruptedException {
        if (pendingRows == 0) {
            return;
        }
        List<BatchableStatement<?>> batch = new ArrayList<>(config.batchSize);
        int bytes = 0;
        for (Map<List<Object>, BoundStatement> partition : pending.values()) {
            for (BoundStatement row : partition.values()) {
                int size = row.computeSizeInBytes(session.getContext());
                if (!batch.isEmpty() && (batch.size() >= config.batchSize || bytes + size > config.batchBytes)) {
                    sendBatch(batch);
                    batch = new ArrayList<>(config.batchSize);
                    bytes = 0;
                }
                batch.add(row);
                bytes += size;
            }
        }
        sendBatch(batch);
        pending.clear();
        pendingRows = 0;
    }

    private void sendBatch(List<BatchableStatement<?>> rows) throws InterruptedException {
        Statement<?> statement = rows.size() == 1 ? rows.get(0)
                : BatchStatement.newInstance(DefaultBatchType.UNLOGGED, rows).setIdempotent(true);
        permits.acquire();
        send(stamped(statement), 0);
    }

    /**
     * Every write carries its own timestamp, strictly greater than every earlier one of this
     * writer, fixed before the first attempt: a later version of a row always wins, also over a
     * retried earlier one. Cassandra settles two writes of one row with the same timestamp cell by
     * cell (the greater value wins), which would merge two versions into a row neither had; every
     * statement of a batch shares the batch's timestamp, so a batch never holds two versions of a
     * row (write() keeps only the newest).
     */
    private Statement<?> stamped(Statement<?> statement) {
        return statement.setQueryTimestamp(clock.next());
    }

    private BoundStatement bind(Row row) throws IOException {
        BoundStatementBuilder b = statement.boundStatementBuilder();
        for (int i = 0; i < types.length; i++) {
            Object value = convert(row.getField(config.fields[i]), types[i]);
            // Null stays unset: an upsert must not write tombstones over existing columns.
            if (value != null) {
                b = b.set(i, value, codecs.codecFor(types[i], value));
            }
        }
        return b.build();
    }

    private void send(Statement<?> bound, int attempt) {
        session.executeAsync(bound).whenComplete((rs, err) -> {
            if (err == null) {
                written.inc();
                permits.release();
            } else if (attempt < config.maxRetries) {
                retried.inc();
                long backoff = Math.min(5_000L, 100L << Math.min(attempt, 6));
                retries.schedule(() -> send(bound, attempt + 1), backoff, TimeUnit.MILLISECONDS);
            } else {
                failure.compareAndSet(null, err);
                permits.release();
            }
        });
    }

    /** Called before every checkpoint barrier and at end of input: wait for all writes. */
    @Override
    public void flush(boolean endOfInput) throws IOException, InterruptedException {
        sendPending();
        permits.acquire(config.maxInFlight);
        permits.release(config.maxInFlight);
        rethrow();
    }

    private void rethrow() throws IOException {
        Throwable t = failure.get();
        if (t != null) {
            throw new IOException("Cassandra write failed after " + config.maxRetries + " retries: " + config.cql, t);
        }
    }

    @Override
    public void close() throws Exception {
        retries.shutdownNow();
        session.close();
    }

    static Object convert(Object value, DataType type) {
        if (value == null) {
            return null;
        }
        if (type.equals(DataTypes.TIMESTAMP)) {
            if (value instanceof Number) {
                return Instant.ofEpochMilli(((Number) value).longValue());
            }
            if (value instanceof LocalDateTime) {
                return ((LocalDateTime) value).toInstant(ZoneOffset.UTC);
            }
            if (value instanceof java.sql.Timestamp) {
                return ((java.sql.Timestamp) value).toInstant();
            }
            return value;
        }
        if (type.equals(DataTypes.DATE)) {
            if (value instanceof Number) {
                return LocalDate.ofEpochDay(Math.floorDiv(((Number) value).longValue(), DAY_MS));
            }
            if (value instanceof String) {
                return LocalDate.parse((String) value);
            }
            return value;
        }
        if (value instanceof Number) {
            Number n = (Number) value;
            if (type.equals(DataTypes.INT)) {
                return n.intValue();
            }
            if (type.equals(DataTypes.BIGINT) || type.equals(DataTypes.COUNTER)) {
                return n.longValue();
            }
            if (type.equals(DataTypes.DOUBLE)) {
                return n.doubleValue();
            }
            if (type.equals(DataTypes.FLOAT)) {
                return n.floatValue();
            }
        }
        return value;
    }
}
