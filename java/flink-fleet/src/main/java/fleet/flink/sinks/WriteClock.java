package fleet.flink.sinks;

/**
 * Write timestamps (microseconds since the epoch, as Cassandra's) that never repeat and never go
 * back within one writer, even when the wall clock does or when many writes share a microsecond.
 */
final class WriteClock {
    private long last = Long.MIN_VALUE;

    long next() {
        return next(System.currentTimeMillis() * 1000L);
    }

    long next(long nowMicros) {
        last = Math.max(nowMicros, last + 1);
        return last;
    }
}
