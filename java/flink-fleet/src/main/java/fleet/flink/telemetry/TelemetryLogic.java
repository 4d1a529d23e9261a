package fleet.flink.telemetry;

import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;

import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Per-device dedup, lateness, gaps and 1-minute rollups: the Java twin of {@code observe} and
 * {@code on_time} in fleet/telemetry/domain.py, which is the readable spec (its module docstring
 * explains the rules; tests/unit/test_telemetry_domain.py pins them down). Names follow the Python.
 */
final class TelemetryLogic implements Serializable {
    private static final long serialVersionUID = 1L;

    static final long NO_CLOCK = -(1L << 62);

    static final String GAP_OPEN = "open";
    static final String GAP_LOST = "lost";
    static final String GAP_FILLED = "filled";

    enum Outcome { ACCEPTED, DUPLICATE, LATE }

    final long allowedLatenessMs;
    final long maxFutureSkewMs;
    final long rollupBucketMs;
    final int maxOpenGaps;

    TelemetryLogic(long allowedLatenessMs, long maxFutureSkewMs, long rollupBucketMs, int maxOpenGaps) {
        if (rollupBucketMs <= 0) {
            throw new IllegalArgumentException("rollup bucket must be positive: " + rollupBucketMs);
        }
        this.allowedLatenessMs = allowedLatenessMs;
        this.maxFutureSkewMs = maxFutureSkewMs;
        this.rollupBucketMs = rollupBucketMs;
        this.maxOpenGaps = maxOpenGaps;
    }

    // --- state -------------------------------------------------------------------------------

    /** seqs first..last were not seen; they fall between the records at afterTs and beforeTs. */
    static final class Gap {
        long first;
        long last;
        long afterTs;
        long beforeTs;
        boolean reported;

        Gap(long first, long last, long afterTs, long beforeTs, boolean reported) {
            this.first = first;
            this.last = last;
            this.afterTs = afterTs;
            this.beforeTs = beforeTs;
            this.reported = reported;
        }

        long missing() {
            return last - first + 1;
        }
    }

    static final class Agg {
        double min;
        double max;
        double sum;
        long count;

        Agg(double min, double max, double sum, long count) {
            this.min = min;
            this.max = max;
            this.sum = sum;
            this.count = count;
        }

        void add(double value) {
            if (value < min) {
                min = value;
            }
            if (value > max) {
                max = value;
            }
            sum += value;
            count++;
        }
    }

    static final class Bucket {
        final long start;
        final Map<String, Agg> aggs = new LinkedHashMap<>();
        boolean dirty = true;

        Bucket(long start) {
            this.start = start;
        }
    }

    static final class DeviceState {
        long maxSeq = -1;
        long lastTs = NO_CLOCK;
        long clock = NO_CLOCK;
        long received;
        long duplicates;
        long late;
        long lost;
        List<Gap> gaps = new ArrayList<>(0);
        final TreeMap<Long, Bucket> buckets = new TreeMap<>();

        private static final int VERSION = 1;

        /**
         * Layout: version, 7 header longs, gaps (count, then first, last, after, before, reported),
         * buckets (count, then start, dirty, aggs (count, then name, min, max, sum, count)).
         */
        byte[] encode(DataOutputSerializer out) {
            out.clear();
            try {
                out.writeByte(VERSION);
                out.writeLong(maxSeq);
                out.writeLong(lastTs);
                out.writeLong(clock);
                out.writeLong(received);
                out.writeLong(duplicates);
                out.writeLong(late);
                out.writeLong(lost);
                out.writeInt(gaps.size());
                for (Gap g : gaps) {
                    out.writeLong(g.first);
                    out.writeLong(g.last);
                    out.writeLong(g.afterTs);
                    out.writeLong(g.beforeTs);
                    out.writeBoolean(g.reported);
                }
                out.writeInt(buckets.size());
                for (Bucket b : buckets.values()) {
                    out.writeLong(b.start);
                    out.writeBoolean(b.dirty);
                    out.writeInt(b.aggs.size());
                    for (Map.Entry<String, Agg> e : b.aggs.entrySet()) {
                        Agg a = e.getValue();
                        out.writeUTF(e.getKey());
                        out.writeDouble(a.min);
                        out.writeDouble(a.max);
                        out.writeDouble(a.sum);
                        out.writeLong(a.count);
                    }
                }
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return out.getCopyOfBuffer();
        }

        static DeviceState decode(byte[] bytes, DataInputDeserializer in) {
            DeviceState s = new DeviceState();
            in.setBuffer(bytes);
            try {
                int version = in.readByte();
                if (version != VERSION) {
                    throw new IllegalStateException("unknown telemetry state version " + version);
                }
                s.maxSeq = in.readLong();
                s.lastTs = in.readLong();
                s.clock = in.readLong();
                s.received = in.readLong();
                s.duplicates = in.readLong();
                s.late = in.readLong();
                s.lost = in.readLong();
                int gaps = in.readInt();
                s.gaps = new ArrayList<>(gaps);
                for (int i = 0; i < gaps; i++) {
                    s.gaps.add(new Gap(in.readLong(), in.readLong(), in.readLong(), in.readLong(), in.readBoolean()));
                }
                int buckets = in.readInt();
                for (int i = 0; i < buckets; i++) {
                    Bucket b = new Bucket(in.readLong());
                    b.dirty = in.readBoolean();
                    int aggs = in.readInt();
                    for (int j = 0; j < aggs; j++) {
                        b.aggs.put(in.readUTF(), new Agg(in.readDouble(), in.readDouble(), in.readDouble(), in.readLong()));
                    }
                    s.buckets.put(b.start, b);
                }
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return s;
        }
    }

    // --- what one observation or timer produced -------------------------------------------------

    static final class GapReport {
        final long firstSeq;
        final long lastSeq;
        final long missing;
        final long afterTs;
        final long beforeTs;
        final String status;

        GapReport(Gap gap, String status) {
            this.firstSeq = gap.first;
            this.lastSeq = gap.last;
            this.missing = GAP_FILLED.equals(status) ? 0 : gap.missing();
            this.afterTs = gap.afterTs;
            this.beforeTs = gap.beforeTs;
            this.status = status;
        }
    }

    static final class Rollup {
        final long bucketStart;
        final String metric;
        final double min;
        final double max;
        final double sum;
        final long count;
        /** Made final by the device's clock; false for a timer's provisional value (Python's Rollup.final). */
        final boolean isFinal;

        Rollup(long bucketStart, String metric, Agg a, boolean isFinal) {
            this.bucketStart = bucketStart;
            this.metric = metric;
            this.min = a.min;
            this.max = a.max;
            this.sum = a.sum;
            this.count = a.count;
            this.isFinal = isFinal;
        }

        /** sum / count kept inside [min, max]: a rounded float sum can put it an ulp outside. */
        double avg() {
            return Math.min(Math.max(sum / count, min), max);
        }
    }

    /** Reused per record: {@link #reset()} before each observation. */
    static final class Step {
        Outcome outcome;
        final List<GapReport> gaps = new ArrayList<>();
        final List<Rollup> rollups = new ArrayList<>();
        long[] timers = new long[4];
        int timerCount;
        boolean statsChanged;

        Step reset() {
            outcome = null;
            gaps.clear();
            rollups.clear();
            timerCount = 0;
            statsChanged = false;
            return this;
        }

        void timer(long t) {
            if (timerCount == timers.length) {
                timers = Arrays.copyOf(timers, timerCount * 2);
            }
            timers[timerCount++] = t;
        }

        boolean emits() {
            return !rollups.isEmpty() || !gaps.isEmpty() || statsChanged;
        }
    }

    // --- the rules ---------------------------------------------------------------------------------

    private static int findGap(List<Gap> gaps, long seq) {
        for (int i = 0, n = gaps.size(); i < n; i++) {
            Gap g = gaps.get(i);
            if (g.first <= seq && seq <= g.last) {
                return i;
            }
        }
        return -1;
    }

    /** Apply one record to its device's state (mutated in place). */
    void observe(DeviceState state, TelemetryEnvelope.Point point, Step step) {
        long seq = point.seq;
        long ts = point.ts;
        int gapIndex = -1;
        if (seq <= state.maxSeq) {
            gapIndex = state.gaps.isEmpty() ? -1 : findGap(state.gaps, seq);
            if (gapIndex < 0) {
                state.duplicates++;
                step.outcome = Outcome.DUPLICATE;
                return;
            }
        }
        if (state.clock != NO_CLOCK && ts < state.clock - allowedLatenessMs) {
            state.late++;
            step.outcome = Outcome.LATE;
            return;
        }

        step.outcome = Outcome.ACCEPTED;
        state.received++;
        if (gapIndex >= 0) {
            fill(state, gapIndex, seq, ts, step);
        } else {
            if (state.maxSeq >= 0 && seq > state.maxSeq + 1) {
                state.gaps.add(new Gap(state.maxSeq + 1, seq - 1, state.lastTs, ts, false));
                step.timer(ts + allowedLatenessMs);
                if (state.gaps.size() > maxOpenGaps) {
                    finalizeGap(state, state.gaps.remove(0), step);
                }
            }
            state.maxSeq = seq;
            state.lastTs = ts;
        }

        long start = ts - Math.floorMod(ts, rollupBucketMs);
        Bucket bucket = state.buckets.get(start);
        if (bucket == null) {
            bucket = new Bucket(start);
            state.buckets.put(start, bucket);
            step.timer(start + rollupBucketMs + allowedLatenessMs);
        }
        bucket.dirty = true;
        Map<String, Agg> aggs = bucket.aggs;
        String[] names = point.names;
        double[] values = point.values;
        for (int i = 0; i < names.length; i++) {
            Agg agg = aggs.get(names[i]);
            if (agg == null) {
                aggs.put(names[i], new Agg(values[i], values[i], values[i], 1));
            } else {
                agg.add(values[i]);
            }
        }

        if (ts > state.clock) {
            state.clock = ts;
            closeByClock(state, step);
        }
    }

    private static void fill(DeviceState state, int index, long seq, long ts, Step step) {
        Gap gap = state.gaps.get(index);
        Gap lower = seq > gap.first ? new Gap(gap.first, seq - 1, gap.afterTs, ts, gap.reported) : null;
        Gap upper = seq < gap.last ? new Gap(seq + 1, gap.last, ts, gap.beforeTs, gap.reported) : null;
        state.gaps.remove(index);
        if (upper != null) {
            state.gaps.add(index, upper);
        }
        if (lower != null) {
            state.gaps.add(index, lower);
        }
        if (gap.reported) {
            // The stored row is keyed by first seq: rewrite it, and add a row for an upper piece.
            if (seq == gap.first) {
                step.gaps.add(new GapReport(new Gap(seq, seq, gap.afterTs, ts, false), GAP_FILLED));
            }
            if (lower != null) {
                step.gaps.add(new GapReport(lower, GAP_OPEN));
            }
            if (upper != null) {
                step.gaps.add(new GapReport(upper, GAP_OPEN));
            }
            step.statsChanged = true;
        }
    }

    private static void finalizeGap(DeviceState state, Gap gap, Step step) {
        state.lost += gap.missing();
        step.gaps.add(new GapReport(gap, GAP_LOST));
        step.statsChanged = true;
    }

    /** Publish what the device's clock has made final: buckets and gaps nothing can change now. */
    private void closeByClock(DeviceState state, Step step) {
        long horizon = state.clock - allowedLatenessMs; // records before this are late
        if (!state.gaps.isEmpty()) {
            boolean any = false;
            for (Gap g : state.gaps) {
                if (g.beforeTs < horizon) {
                    any = true;
                    break;
                }
            }
            if (any) {
                List<Gap> keep = new ArrayList<>(state.gaps.size());
                for (Gap g : state.gaps) {
                    if (g.beforeTs < horizon) {
                        finalizeGap(state, g, step);
                    } else {
                        keep.add(g);
                    }
                }
                state.gaps = keep;
            }
        }
        for (Iterator<Bucket> it = state.buckets.values().iterator(); it.hasNext(); ) {
            Bucket bucket = it.next();
            if (bucket.start + rollupBucketMs > horizon) {
                break;
            }
            it.remove();
            if (bucket.dirty) {
                rollups(bucket, step, true);
            }
            step.statsChanged = true;
        }
    }

    /** See fleet.telemetry.domain.WALL_CLOCK_SLACK_MS: the same rule, the same numbers. */
    static final long WALL_CLOCK_SLACK_MS = 2_000;

    /** The processing-time timer backing event-time timer {@code eventTimer} (fleet.telemetry.domain.wall_clock_timer). */
    long wallClockTimer(long eventTimer, long wallNow) {
        long due = Math.max(eventTimer, wallNow + allowedLatenessMs) + WALL_CLOCK_SLACK_MS;
        return Math.floorDiv(due + 999, 1000L) * 1000L;
    }

    static long wallClockNow(long timer) {
        return timer - WALL_CLOCK_SLACK_MS;
    }

    /** Fleet-wide event time reached {@code now}: provisional values for a silent device. */
    void onTime(DeviceState state, long now, Step step) {
        for (Bucket bucket : state.buckets.values()) {
            if (bucket.start + rollupBucketMs + allowedLatenessMs > now) {
                break;
            }
            if (bucket.dirty) {
                rollups(bucket, step, false);
                bucket.dirty = false;
                // Its records are counted too: without this a device that went quiet would show
                // delivery stats without its last minute until it sends again.
                step.statsChanged = true;
            }
        }
        for (Gap gap : state.gaps) {
            if (!gap.reported && gap.beforeTs + allowedLatenessMs <= now) {
                gap.reported = true;
                step.gaps.add(new GapReport(gap, GAP_OPEN));
                step.statsChanged = true;
            }
        }
    }

    private static void rollups(Bucket bucket, Step step, boolean isFinal) {
        String[] names = bucket.aggs.keySet().toArray(new String[0]);
        Arrays.sort(names, TelemetryLogic::byCodePoint);
        for (String name : names) {
            step.rollups.add(new Rollup(bucket.start, name, bucket.aggs.get(name), isFinal));
        }
    }

    /** Python's str order (by code point): String.compareTo orders by UTF-16 unit, which puts a
     *  character beyond the BMP (a surrogate pair) before U+E000..U+FFFF. */
    static int byCodePoint(String a, String b) {
        int i = 0;
        int j = 0;
        while (i < a.length() && j < b.length()) {
            int ca = a.codePointAt(i);
            int cb = b.codePointAt(j);
            if (ca != cb) {
                return Integer.compare(ca, cb);
            }
            i += Character.charCount(ca);
            j += Character.charCount(cb);
        }
        return Integer.compare(a.length() - i, b.length() - j);
    }
}
