package rapport.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The per-task fold: dedup, event-time timers, fold and evaluate, one record at a time.
 *
 * <p>A task owns partition p of all four input topics, as one of rapport's account partitions
 * does. Its clock is the highest event time it has folded (rapport's partition stream time);
 * before an event is folded, every account timer due at or before the clock fires, in (due,
 * account) order, and the account is evaluated at its due time. Duplicates (same account and
 * event_id within the dedup window) and records that did not decode are counted and dropped.
 */
final class FoldProcessor implements Processor<byte[], Codec.Decoded, String, byte[]> {
    static final String ACCOUNTS = "accounts";
    static final String DEDUP = "dedup";
    static final String DEDUP_EXPIRY = "dedup-expiry";
    static final String TIMERS = "timers";
    static final String META = "meta";
    static final String HEALTH_SINK = "health-sink";
    static final String ALERTS_SINK = "alerts-sink";

    private static final Bytes CLOCK_KEY = Bytes.wrap("clock".getBytes(StandardCharsets.US_ASCII));
    private static final Bytes PURGED_KEY = Bytes.wrap("dedup-purged-below".getBytes(StandardCharsets.US_ASCII));
    private static final byte[] EMPTY = new byte[0];

    private final Progress progress;
    private ProcessorContext<String, byte[]> context;
    private KeyValueStore<Bytes, byte[]> accounts, dedup, dedupExpiry, timers, meta;
    private final AccountState.Writer writer = new AccountState.Writer();
    private final List<Engine.Output> outs = new ArrayList<>();

    /** Stream time of this task: the highest event time folded (0 before the first). */
    private long clock;
    /** Dedup marks of days below this are gone. */
    private int purgedBelow = Integer.MIN_VALUE;
    /** A lower bound of every due time in the timers store. */
    private long minDue = Long.MAX_VALUE;
    /** Records processed since this task last asked for a commit. */
    private boolean uncommitted;

    FoldProcessor(Progress progress) {
        this.progress = progress;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.context = context;
        accounts = context.getStateStore(ACCOUNTS);
        dedup = context.getStateStore(DEDUP);
        dedupExpiry = context.getStateStore(DEDUP_EXPIRY);
        timers = context.getStateStore(TIMERS);
        meta = context.getStateStore(META);
        byte[] c = meta.get(CLOCK_KEY);
        clock = c == null ? 0 : ByteBuffer.wrap(c).getLong();
        byte[] p = meta.get(PURGED_KEY);
        purgedBelow = p == null ? Integer.MIN_VALUE : ByteBuffer.wrap(p).getInt();
        try (KeyValueIterator<Bytes, byte[]> it = timers.all()) {
            minDue = it.hasNext() ? timerDue(it.next().key.get()) : Long.MAX_VALUE;
        }
        // Once every expected record is read, each task commits what it processed without waiting
        // for commit.interval.ms (30 s under at_least_once).
        context.schedule(Duration.ofMillis(50), PunctuationType.WALL_CLOCK_TIME, now -> {
            if (uncommitted && progress.allRead()) {
                uncommitted = false;
                context.commit();
            }
        });
    }

    @Override
    public void process(Record<byte[], Codec.Decoded> record) {
        progress.firstNanos.compareAndSet(0, System.nanoTime());
        handle(record.value());
        context.recordMetadata().ifPresent(this::advance);
        uncommitted = true;
        if (progress.read.incrementAndGet() >= progress.expect) {
            uncommitted = false;
            context.commit();
        }
    }

    private void advance(RecordMetadata m) {
        progress.positions.put(new TopicPartition(m.topic(), m.partition()), m.offset() + 1);
    }

    private void handle(Codec.Decoded d) {
        if (d == null || d.event == null) {
            progress.malformed.incrementAndGet();
            return;
        }
        Event ev = d.event;
        long stream = Math.max(clock, ev.occurredAtMs);
        int horizon = Times.dayOf(stream) - Config.DEDUP_RETENTION_DAYS;
        byte[] idKey = dedupKey(ev.accountId, ev.eventId);
        Bytes dk = Bytes.wrap(idKey);
        byte[] mark = dedup.get(dk);
        if (mark != null && ByteBuffer.wrap(mark).getInt() >= horizon) {
            progress.duplicates.incrementAndGet();
            return;
        }
        int day = Times.dayOf(ev.occurredAtMs);
        dedup.put(dk, ByteBuffer.allocate(4).putInt(day).array());
        dedupExpiry.put(Bytes.wrap(expiryKey(day, idKey)), EMPTY);

        // Timers due before this event fire first: event time, as the log says.
        fireTimers(stream);
        if (stream != clock) {
            clock = stream;
            meta.put(CLOCK_KEY, ByteBuffer.allocate(8).putLong(clock).array());
            purgeDedup(horizon);
        }
        boolean late = ev.occurredAtMs < stream - Config.ALLOWED_LATENESS_MS;
        Bytes key = accountKey(ev.accountId);
        byte[] stored = accounts.get(key);
        AccountState s = stored != null ? AccountState.decode(stored) : AccountState.create(ev.accountId, ev.occurredAtMs);
        Fold.fold(s, ev, late);
        long next = Engine.evaluate(s, stream, outs);
        reschedule(s, next);
        accounts.put(key, s.encode(writer));
        emit();
    }

    /** Fires the timers due at or before {@code upTo}, in (due, account) order; each evaluates its account at its due time. */
    private void fireTimers(long upTo) {
        while (minDue <= upTo) {
            byte[] first;
            try (KeyValueIterator<Bytes, byte[]> it = timers.range(Bytes.wrap(timerKey(minDue, "")), null)) {
                if (!it.hasNext()) {
                    minDue = Long.MAX_VALUE;
                    return;
                }
                first = it.next().key.get();
            }
            long due = timerDue(first);
            if (due > upTo) {
                minDue = due;
                return;
            }
            minDue = due;
            timers.delete(Bytes.wrap(first));
            String account = new String(first, 8, first.length - 8, StandardCharsets.UTF_8);
            Bytes key = accountKey(account);
            byte[] stored = accounts.get(key);
            if (stored == null) {
                continue;
            }
            AccountState s = AccountState.decode(stored);
            if (s.timerDueMs != due) {
                continue; // stale
            }
            s.timerDueMs = 0;
            long next = Engine.evaluate(s, due, outs);
            reschedule(s, next);
            accounts.put(key, s.encode(writer));
            progress.timersFired.incrementAndGet();
            emit();
        }
    }

    /**
     * Sets the account's timer to {@code next} lazily, as rapport does: an earlier timer already
     * set is kept (firing early only re-evaluates the account and reschedules it).
     */
    private void reschedule(AccountState s, long next) {
        long current = s.timerDueMs;
        if (current != 0 && (next == 0 || current <= next)) {
            return;
        }
        if (current != 0) {
            timers.delete(Bytes.wrap(timerKey(current, s.accountId)));
        }
        if (next != 0) {
            timers.put(Bytes.wrap(timerKey(next, s.accountId)), EMPTY);
            minDue = Math.min(minDue, next);
        }
        s.timerDueMs = next;
    }

    /** Drops the dedup marks that can no longer match: those of days before {@code horizon}. */
    private void purgeDedup(int horizon) {
        if (horizon <= purgedBelow) {
            return;
        }
        List<byte[]> gone = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = dedupExpiry.range(null, Bytes.wrap(expiryKey(horizon, EMPTY)))) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                byte[] k = kv.key.get();
                if (expiryDay(k) >= horizon) {
                    break;
                }
                gone.add(k);
            }
        }
        for (byte[] k : gone) {
            int day = expiryDay(k);
            byte[] idKey = java.util.Arrays.copyOfRange(k, 4, k.length);
            Bytes dk = Bytes.wrap(idKey);
            byte[] mark = dedup.get(dk);
            if (mark != null && ByteBuffer.wrap(mark).getInt() == day) {
                dedup.delete(dk);
            }
            dedupExpiry.delete(Bytes.wrap(k));
        }
        purgedBelow = horizon;
        meta.put(PURGED_KEY, ByteBuffer.allocate(4).putInt(horizon).array());
    }

    private void emit() {
        if (outs.isEmpty()) {
            return;
        }
        long now = context.currentSystemTimeMs();
        for (Engine.Output o : outs) {
            context.forward(new Record<>(o.accountId, o.json, now), o.alert ? ALERTS_SINK : HEALTH_SINK);
            (o.alert ? progress.alerts : progress.health).incrementAndGet();
        }
        outs.clear();
    }

    // ---- keys --------------------------------------------------------------------------------

    private static Bytes accountKey(String account) {
        return Bytes.wrap(account.getBytes(StandardCharsets.UTF_8));
    }

    private static byte[] dedupKey(String account, String eventId) {
        byte[] a = account.getBytes(StandardCharsets.UTF_8);
        byte[] e = eventId.getBytes(StandardCharsets.UTF_8);
        byte[] k = new byte[a.length + 1 + e.length];
        System.arraycopy(a, 0, k, 0, a.length);
        System.arraycopy(e, 0, k, a.length + 1, e.length);
        return k;
    }

    /** Day (sign bit flipped, big-endian, so keys sort by day) then the dedup key. */
    private static byte[] expiryKey(int day, byte[] idKey) {
        return ByteBuffer.allocate(4 + idKey.length).putInt(day ^ Integer.MIN_VALUE).put(idKey).array();
    }

    private static int expiryDay(byte[] k) {
        return ByteBuffer.wrap(k).getInt() ^ Integer.MIN_VALUE;
    }

    /** Due time (sign bit flipped, big-endian) then the account: keys sort by (due, account) as rapport's timer index does. */
    private static byte[] timerKey(long due, String account) {
        byte[] a = account.getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(8 + a.length).putLong(due ^ Long.MIN_VALUE).put(a).array();
    }

    private static long timerDue(byte[] k) {
        return ByteBuffer.wrap(k).getLong() ^ Long.MIN_VALUE;
    }
}
