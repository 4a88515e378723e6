package rapport.peer;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * Event time: a record's timestamp is its event's {@code occurred_at}, so that a task takes the
 * records of its four input partitions in event-time order, as rapport's time-ordered merge does.
 * Records that did not decode keep the partition's time (they only need to be counted).
 */
public final class EventTimeExtractor implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        if (record.value() instanceof Codec.Decoded d && d.event != null) {
            // Kafka Streams drops records with negative timestamps; events before 1970 are clamped.
            return Math.max(d.event.occurredAtMs, 0L);
        }
        return Math.max(partitionTime, 0L);
    }
}
