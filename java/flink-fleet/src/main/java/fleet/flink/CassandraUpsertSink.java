package fleet.flink;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.types.Row;

import java.io.IOException;
import java.util.Arrays;

/**
 * Writes each {@link Row} as one prepared, idempotent CQL statement (an INSERT/UPDATE upsert).
 *
 * <p>Writes are asynchronous with at most {@code maxInFlight} outstanding per subtask. Sink V2
 * calls {@link SinkWriter#flush} before every checkpoint barrier, and the writer waits there for
 * every outstanding write, so a completed checkpoint implies every record before it is in
 * Cassandra. After a failure the job replays from that checkpoint; replayed upserts write the
 * same primary keys and values again, hence exactly-once results from at-least-once writes.
 *
 * <p>With {@code batchSize > 1} rows go out as UNLOGGED batches of that many statements: one
 * request instead of many, which on a small cluster saves most of Cassandra's per-request CPU.
 * Batches are not grouped by partition, so on a large cluster keep it small (or 1).
 *
 * <p>Bind markers are filled from row fields: marker {@code i} takes field {@code fields[i]}
 * (so one field may fill two markers, e.g. a timestamp and its day). Values are converted to
 * the marker's CQL type: epoch-millisecond longs become {@code timestamp} or {@code date}.
 */
public final class CassandraUpsertSink implements Sink<Row> {
    private static final long serialVersionUID = 1L;

    final String contactPoints;
    final String localDatacenter;
    final String keyspace;
    final String cql;
    final int[] fields;
    final int maxInFlight;
    final int maxRetries;
    final long requestTimeoutMs;
    final int batchSize;

    /**
     * @param contactPoints "host:port,host:port"
     * @param fields comma-separated row field index per bind marker, e.g. "0,1,1,2"
     */
    public CassandraUpsertSink(String contactPoints, String localDatacenter, String keyspace, String cql,
                               String fields, int maxInFlight, int maxRetries, long requestTimeoutMs,
                               int batchSize) {
        this.contactPoints = contactPoints;
        this.localDatacenter = localDatacenter;
        this.keyspace = keyspace;
        this.cql = cql;
        this.fields = Arrays.stream(fields.split(",")).map(String::trim).mapToInt(Integer::parseInt).toArray();
        this.maxInFlight = maxInFlight;
        this.maxRetries = maxRetries;
        this.requestTimeoutMs = requestTimeoutMs;
        this.batchSize = batchSize;
    }

    @Override
    public SinkWriter<Row> createWriter(WriterInitContext context) throws IOException {
        return new CassandraUpsertWriter(this, context.metricGroup(), context.getProcessingTimeService());
    }
}
