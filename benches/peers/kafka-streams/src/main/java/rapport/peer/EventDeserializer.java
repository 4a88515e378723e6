package rapport.peer;

import org.apache.kafka.common.serialization.Deserializer;

/** Input values to {@link Codec.Decoded}: never throws, so a malformed record reaches the processor and is counted there. */
final class EventDeserializer implements Deserializer<Codec.Decoded> {
    private final Codec codec;

    EventDeserializer(Codec.Format format) {
        this.codec = new Codec(format);
    }

    @Override
    public Codec.Decoded deserialize(String topic, byte[] data) {
        return codec.decode(data);
    }
}
