package rapport.peer;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.Stores;

/**
 * rapport's account fold as a Kafka Streams application: four co-partitioned input topics, one
 * processor with persistent RocksDB stores (account states, dedup marks, timers), and the health
 * scores and churn alerts in rapport's JSON on two output topics. Runs until {@code --expect}
 * records are processed and committed, prints one JSON line and exits.
 */
public final class Main {
    private static final String USAGE = "usage: --bootstrap HOST:PORT --application-id ID --product-usage-topic T --email-topic T"
            + " --call-topic T --deal-topic T --health-topic T --alerts-topic T --guarantee at_least_once|exactly_once_v2"
            + " --state-dir DIR --expect N [--threads K] [--format json|protobuf|auto] [--timeout SECONDS]";

    static final class Failure extends Exception {
        Failure(String sentence) {
            super(sentence);
        }
    }

    private Main() {}

    public static void main(String[] args) {
        try {
            System.exit(run(args));
        } catch (Failure f) {
            System.err.println(f.getMessage());
            System.exit(1);
        } catch (Exception e) {
            System.err.println("The Kafka Streams peer failed: " + e + ".");
            System.exit(1);
        }
    }

    private static Map<String, String> parse(String[] args) throws Failure {
        Set<String> known = Set.of("bootstrap", "application-id", "product-usage-topic", "email-topic", "call-topic", "deal-topic",
                "health-topic", "alerts-topic", "guarantee", "state-dir", "expect", "threads", "format", "timeout");
        Map<String, String> m = new HashMap<>();
        m.put("threads", "1");
        m.put("format", "auto");
        m.put("timeout", "600");
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            if (!a.startsWith("--") || !known.contains(a.substring(2))) {
                throw new Failure("Unknown argument " + a + "; " + USAGE);
            }
            if (i + 1 >= args.length) {
                throw new Failure("Argument " + a + " needs a value; " + USAGE);
            }
            m.put(a.substring(2), args[++i]);
        }
        for (String k : known) {
            if (!m.containsKey(k)) {
                throw new Failure("Argument --" + k + " is missing; " + USAGE);
            }
        }
        return m;
    }

    private static long number(Map<String, String> a, String key, long min) throws Failure {
        try {
            long v = Long.parseLong(a.get(key));
            if (v < min) {
                throw new NumberFormatException();
            }
            return v;
        } catch (NumberFormatException e) {
            throw new Failure("--" + key + " must be a whole number of at least " + min + ", not '" + a.get(key) + "'.");
        }
    }

    static int run(String[] args) throws Exception {
        Map<String, String> a = parse(args);
        String guarantee = a.get("guarantee");
        if (!guarantee.equals(StreamsConfig.AT_LEAST_ONCE) && !guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2)) {
            throw new Failure("--guarantee must be at_least_once or exactly_once_v2, not '" + guarantee + "'.");
        }
        Codec.Format format = switch (a.get("format")) {
            case "json" -> Codec.Format.JSON;
            case "protobuf" -> Codec.Format.PROTOBUF;
            case "auto" -> Codec.Format.AUTO;
            default -> throw new Failure("--format must be json, protobuf or auto, not '" + a.get("format") + "'.");
        };
        long expect = number(a, "expect", 1);
        int threads = (int) number(a, "threads", 1);
        long timeoutS = number(a, "timeout", 1);
        List<String> inputs = List.of(a.get("product-usage-topic"), a.get("email-topic"), a.get("call-topic"), a.get("deal-topic"));
        String health = a.get("health-topic"), alerts = a.get("alerts-topic");
        String appId = a.get("application-id");

        Properties adminProps = new Properties();
        adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        adminProps.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 10000);
        adminProps.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 15000);
        try (Admin admin = Admin.create(adminProps)) {
            checkTopics(admin, inputs, health, alerts, a.get("bootstrap"));

            Progress progress = new Progress(expect);
            Topology topology = topology(inputs, health, alerts, format, progress);
            Properties p = new Properties();
            p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
            p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
            p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
            p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
            p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
            p.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, EventTimeExtractor.class);
            p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
            p.put("processing.exception.handler.global.enabled", true);
            // commit.interval.ms stays at its default: 30000 ms under at_least_once, 100 ms under exactly_once_v2.

            AtomicReference<Throwable> failure = new AtomicReference<>();
            KafkaStreams streams = new KafkaStreams(topology, p);
            streams.setUncaughtExceptionHandler(e -> {
                failure.compareAndSet(null, e);
                return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            streams.start();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
            try {
                while (!progress.allRead()) {
                    watch(streams, failure, deadline, progress);
                    Thread.sleep(5);
                }
                Map<TopicPartition, Long> positions = new HashMap<>(progress.positions);
                long doneNanos;
                while (true) {
                    if (committed(admin, appId, positions)) {
                        doneNanos = System.nanoTime();
                        break;
                    }
                    watch(streams, failure, deadline, progress);
                    Thread.sleep(10);
                }
                double seconds = (doneNanos - progress.firstNanos.get()) / 1e9;
                if (!streams.close(Duration.ofSeconds(60))) {
                    throw new Failure("Kafka Streams did not shut down within 60 seconds.");
                }
                System.out.printf("{\"records\":%d,\"seconds\":%.3f,\"alerts\":%d,\"health\":%d}%n",
                        progress.read.get(), seconds, progress.alerts.get(), progress.health.get());
                System.out.flush();
                return 0;
            } finally {
                streams.close(Duration.ofSeconds(30));
            }
        }
    }

    private static void watch(KafkaStreams streams, AtomicReference<Throwable> failure, long deadline, Progress progress)
            throws Failure {
        Throwable f = failure.get();
        if (f != null) {
            Throwable root = f;
            while (root.getCause() != null && root.getCause() != root) {
                root = root.getCause();
            }
            throw new Failure("A stream thread failed: " + root + ".");
        }
        KafkaStreams.State state = streams.state();
        if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING) {
            throw new Failure("Kafka Streams stopped (state " + state + ") before all expected records were processed.");
        }
        if (System.nanoTime() > deadline) {
            throw new Failure("Timed out: " + progress.read.get() + " of the " + progress.expect
                    + " expected records were processed (see --expect and --timeout).");
        }
    }

    /** Whether the group's committed offsets cover every position processed. */
    private static boolean committed(Admin admin, String group, Map<TopicPartition, Long> positions)
            throws InterruptedException, ExecutionException {
        Map<TopicPartition, OffsetAndMetadata> c = admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        for (Map.Entry<TopicPartition, Long> e : positions.entrySet()) {
            OffsetAndMetadata o = c.get(e.getKey());
            if (o == null || o.offset() < e.getValue()) {
                return false;
            }
        }
        return true;
    }

    private static void checkTopics(Admin admin, List<String> inputs, String health, String alerts, String bootstrap)
            throws Exception {
        List<String> all = new ArrayList<>(inputs);
        all.add(health);
        all.add(alerts);
        Map<String, Integer> partitions = new HashMap<>();
        for (String t : all) {
            try {
                TopicDescription d = admin.describeTopics(List.of(t)).allTopicNames().get(20, TimeUnit.SECONDS).get(t);
                partitions.put(t, d.partitions().size());
            } catch (ExecutionException e) {
                if (e.getCause() instanceof UnknownTopicOrPartitionException) {
                    throw new Failure("Topic " + t + " does not exist on " + bootstrap + "; create it first.");
                }
                throw new Failure("Cannot describe topic " + t + " on " + bootstrap + ": " + e.getCause().getMessage());
            } catch (java.util.concurrent.TimeoutException e) {
                throw new Failure("No Kafka broker answered at " + bootstrap + " within 20 seconds.");
            }
        }
        int n = partitions.get(inputs.get(0));
        for (String t : inputs) {
            if (partitions.get(t) != n) {
                throw new Failure("The input topics must be co-partitioned, but " + inputs.get(0) + " has " + n + " partitions and "
                        + t + " has " + partitions.get(t) + ".");
            }
        }
    }

    static Topology topology(List<String> inputs, String health, String alerts, Codec.Format format, Progress progress) {
        Topology t = new Topology();
        t.addSource("events", new ByteArrayDeserializer(), new EventDeserializer(format), inputs.toArray(new String[0]));
        t.addProcessor("fold", () -> new FoldProcessor(progress), "events");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.ACCOUNTS), Serdes.Bytes(),
                Serdes.ByteArray()).withCachingEnabled(), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.DEDUP), Serdes.Bytes(),
                Serdes.ByteArray()), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.DEDUP_EXPIRY), Serdes.Bytes(),
                Serdes.ByteArray()), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.TIMERS), Serdes.Bytes(),
                Serdes.ByteArray()), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.META), Serdes.Bytes(),
                Serdes.ByteArray()).withCachingEnabled(), "fold");
        t.addSink(FoldProcessor.HEALTH_SINK, health, new StringSerializer(), new ByteArraySerializer(), "fold");
        t.addSink(FoldProcessor.ALERTS_SINK, alerts, new StringSerializer(), new ByteArraySerializer(), "fold");
        return t;
    }
}
