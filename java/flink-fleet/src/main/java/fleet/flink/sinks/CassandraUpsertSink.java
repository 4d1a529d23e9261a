package fleet.flink.sinks;

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
 * <p>Versions of one row (a provisional then a final rollup, successive stats) must replace each
 * other whole: each write carries its own write timestamp, strictly increasing per writer and fixed
 * before the first attempt (so a retried older version loses to a newer one), and a batch holds at
 * most one version of a row (a waiting row is replaced by its newer version). Upstream the rows of
 * one key come from one keyed subtask, so one writer orders all versions of a row.
 *
 * <p>With {@code batchSize > 1} rows are buffered for up to {@code lingerMs} (or until a checkpoint,
 * or until {@code 16 * batchSize} rows wait) and go out as UNLOGGED batches of at most
 * {@code batchSize} statements and about {@code batchBytes} bytes, with the rows of one partition
 * kept together: Cassandra applies a partition's rows in a batch as one mutation (one commit-log
 * entry, one memtable update), which is most of the saving; the request count is the rest. Keep
 * {@code batchBytes} under the cluster's {@code batch_size_fail_threshold} (50 KiB by default).
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
    final long lingerMs;
    final int batchBytes;

    /**
     * @param contactPoints "host:port,host:port"
     * @param fields comma-separated row field index per bind marker, e.g. "0,1,1,2"
     */
    public CassandraUpsertSink(String contactPoints, String localDatacenter, String keyspace, String cql,
                               String fields, int maxInFlight, int maxRetries, long requestTimeoutMs,
                               int batchSize) {
        this(contactPoints, localDatacenter, keyspace, cql, fields, maxInFlight, maxRetries, requestTimeoutMs,
                batchSize, 100, 24 * 1024);
    }

    /**
     * @param lingerMs how long a partial batch may wait for more rows
     * @param batchBytes the encoded size a batch stays under (a bigger single row goes alone)
     */
    public CassandraUpsertSink(String contactPoints, String localDatacenter, String keyspace, String cql,
                               String fields, int maxInFlight, int maxRetries, long requestTimeoutMs,
                               int batchSize, long lingerMs, int batchBytes) {
        this.contactPoints = contactPoints;
        this.localDatacenter = localDatacenter;
        this.keyspace = keyspace;
        this.cql = cql;
        this.fields = Arrays.stream(fields.split(",")).map(String::trim).mapToInt(Integer::parseInt).toArray();
        this.maxInFlight = maxInFlight;
        this.maxRetries = maxRetries;
        this.requestTimeoutMs = requestTimeoutMs;
        this.batchSize = batchSize;
        this.lingerMs = lingerMs;
        this.batchBytes = batchBytes;
    }

    @Override
    public SinkWriter<Row> createWriter(WriterInitContext context) throws IOException {
        return new CassandraUpsertWriter(this, context.metricGroup(), context.getProcessingTimeService());
    }
}
