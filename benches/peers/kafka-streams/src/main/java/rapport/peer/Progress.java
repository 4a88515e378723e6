package rapport.peer;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.TopicPartition;

/** Counters shared by every task of the instance, and the input positions the final commit must cover. */
final class Progress {
    final long expect;
    final AtomicLong read = new AtomicLong();
    final AtomicLong malformed = new AtomicLong();
    final AtomicLong duplicates = new AtomicLong();
    final AtomicLong health = new AtomicLong();
    final AtomicLong alerts = new AtomicLong();
    final AtomicLong timersFired = new AtomicLong();
    /** System.nanoTime() of the first record processed; 0 before. */
    final AtomicLong firstNanos = new AtomicLong();
    /** Per input partition, the offset after the last record processed. */
    final Map<TopicPartition, Long> positions = new ConcurrentHashMap<>();

    Progress(long expect) {
        this.expect = expect;
    }

    boolean allRead() {
        return read.get() >= expect;
    }
}
