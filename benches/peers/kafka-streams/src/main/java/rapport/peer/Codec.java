package rapport.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.google.protobuf.CodedInputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * Input records to validated events, with rapport's rules (src/codec): JSON (first non-whitespace
 * byte '{' or '['), Confluent Schema Registry framing (magic byte 0, 4-byte schema id, for
 * protobuf the message-index varints), or plain protobuf {@code rapport.v1.Event}. A record that
 * fails is a {@link Decoded} with the rejection reason code.
 */
final class Codec {
    enum Format { JSON, PROTOBUF, AUTO }

    /** A decoded record: an event, or the reason it was refused. */
    static final class Decoded {
        final Event event;
        final String reason;

        Decoded(Event event, String reason) {
            this.event = event;
            this.reason = reason;
        }
    }

    static final class Rejected extends Exception {
        final String reason;

        Rejected(String reason) {
            super(reason, null, false, false);
            this.reason = reason;
        }
    }

    private static final JsonFactory JSON = JsonFactory.builder()
            .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(128).build())
            .build();

    private final Format format;

    Codec(Format format) {
        this.format = format;
    }

    Decoded decode(byte[] bytes) {
        try {
            return new Decoded(decodeOrThrow(bytes), null);
        } catch (Rejected r) {
            return new Decoded(null, r.reason);
        }
    }

    Event decodeOrThrow(byte[] bytes) throws Rejected {
        if (bytes == null || bytes.length == 0) {
            throw new Rejected("empty");
        }
        if (bytes.length > Config.MAX_RECORD_BYTES) {
            throw new Rejected("too_large");
        }
        switch (format) {
            case JSON:
                if (firstNonWs(bytes, 0) < 0) {
                    throw new Rejected("empty");
                }
                return json(bytes, 0);
            case PROTOBUF:
                return bytes[0] == 0 ? confluent(bytes) : proto(bytes, 0);
            default:
                if (firstNonWs(bytes, 0) < 0) {
                    throw new Rejected("empty");
                }
                return bytes[0] == 0 ? confluent(bytes) : unframed(bytes, 0);
        }
    }

    private static boolean isWs(byte b) {
        return b == ' ' || b == '\t' || b == '\n' || b == '\r';
    }

    private static int firstNonWs(byte[] b, int from) {
        for (int i = from; i < b.length; i++) {
            if (!isWs(b[i])) {
                return i;
            }
        }
        return -1;
    }

    private static Event unframed(byte[] bytes, int off) throws Rejected {
        int start = firstNonWs(bytes, off);
        if (start < 0) {
            throw new Rejected("empty");
        }
        if (bytes[start] != '{' && bytes[start] != '[') {
            return proto(bytes, off);
        }
        if (start == off) {
            return json(bytes, off);
        }
        // Whitespace then '{': JSON nearly always, but a protobuf Event with a 123-byte event_id
        // also starts "\n{". Try JSON first, then protobuf; report the JSON problem.
        try {
            return json(bytes, off);
        } catch (Rejected jsonErr) {
            try {
                return proto(bytes, off);
            } catch (Rejected ignored) {
                throw jsonErr;
            }
        }
    }

    private static Event confluent(byte[] bytes) throws Rejected {
        if (bytes.length <= 5) {
            throw new Rejected("bad_framing");
        }
        int i = firstNonWs(bytes, 5);
        if (i >= 0 && (bytes[i] == '{' || bytes[i] == '[')) {
            return unframed(bytes, 5);
        }
        int[] pos = {5};
        long count = zigzag(bytes, pos);
        if (count < 0 || count > bytes.length - pos[0]) {
            throw new Rejected("bad_framing");
        }
        for (long k = 0; k < count; k++) {
            if (zigzag(bytes, pos) < 0) {
                throw new Rejected("bad_framing");
            }
        }
        if (pos[0] >= bytes.length) {
            throw new Rejected("bad_framing");
        }
        return proto(bytes, pos[0]);
    }

    /** One Confluent message-index value: a zigzag varint that must fit 32 bits. */
    private static long zigzag(byte[] b, int[] pos) throws Rejected {
        long v = 0;
        int shift = 0;
        while (true) {
            if (pos[0] >= b.length || shift > 63) {
                throw new Rejected("bad_framing");
            }
            byte x = b[pos[0]++];
            v |= (long) (x & 0x7f) << shift;
            if ((x & 0x80) == 0) {
                break;
            }
            shift += 7;
        }
        long n = (v >>> 1) ^ -(v & 1);
        if (n < Integer.MIN_VALUE || n > Integer.MAX_VALUE) {
            throw new Rejected("bad_framing");
        }
        return n;
    }

    // ---- JSON ------------------------------------------------------------------------------

    private static void checkUtf8(byte[] bytes, int off) throws Rejected {
        for (int i = off; i < bytes.length; i++) {
            if (bytes[i] < 0) {
                try {
                    StandardCharsets.UTF_8.newDecoder()
                            .onMalformedInput(CodingErrorAction.REPORT)
                            .onUnmappableCharacter(CodingErrorAction.REPORT)
                            .decode(ByteBuffer.wrap(bytes, off, bytes.length - off));
                } catch (CharacterCodingException e) {
                    throw new Rejected("invalid_utf8");
                }
                return;
            }
        }
    }

    private static Event json(byte[] bytes, int off) throws Rejected {
        checkUtf8(bytes, off);
        Raw raw = new Raw(false);
        try (JsonParser p = JSON.createParser(bytes, off, bytes.length - off)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                throw new Rejected("wrong_type");
            }
            while (true) {
                JsonToken t = p.nextToken();
                if (t == JsonToken.END_OBJECT) {
                    break;
                }
                String name = p.currentName();
                JsonToken v = p.nextToken();
                switch (name) {
                    case "event_id": raw.eventId = str(p, v); break;
                    case "account_id": raw.accountId = str(p, v); break;
                    case "occurred_at": raw.occurredAt = str(p, v); break;
                    case "type": raw.type = str(p, v); break;
                    case "user_id": raw.userId = str(p, v); break;
                    case "feature": raw.feature = str(p, v); break;
                    case "quantity": raw.quantity = num(p, v); break;
                    case "contact_id": raw.contactId = str(p, v); break;
                    case "direction": raw.direction = str(p, v); break;
                    case "action": raw.action = str(p, v); break;
                    case "campaign": raw.campaign = str(p, v); break;
                    case "duration_s": raw.durationS = num(p, v); break;
                    case "outcome": raw.outcome = str(p, v); break;
                    case "sentiment": raw.sentiment = num(p, v); break;
                    case "topics": raw.topics = topics(p, v); break;
                    case "deal_id": raw.dealId = str(p, v); break;
                    case "kind": raw.kind = str(p, v); break;
                    case "stage": raw.stage = str(p, v); break;
                    case "amount": raw.amount = num(p, v); break;
                    case "currency": raw.currency = str(p, v); break;
                    case "close_date": raw.closeDate = str(p, v); break;
                    case "plan": raw.plan = str(p, v); break;
                    case "industry": raw.industry = str(p, v); break;
                    default: p.skipChildren(); // unknown fields are ignored
                }
            }
            if (p.nextToken() != null) {
                throw new Rejected("not_json");
            }
        } catch (Rejected r) {
            throw r;
        } catch (IOException | RuntimeException e) {
            throw new Rejected("not_json");
        }
        return validate(raw);
    }

    private static String str(JsonParser p, JsonToken v) throws IOException, Rejected {
        if (v == JsonToken.VALUE_NULL) {
            return null;
        }
        if (v != JsonToken.VALUE_STRING) {
            throw new Rejected("wrong_type");
        }
        return p.getText();
    }

    private static Double num(JsonParser p, JsonToken v) throws IOException, Rejected {
        if (v == JsonToken.VALUE_NULL) {
            return null;
        }
        if (v != JsonToken.VALUE_NUMBER_INT && v != JsonToken.VALUE_NUMBER_FLOAT) {
            throw new Rejected("wrong_type");
        }
        return p.getDoubleValue();
    }

    private static List<String> topics(JsonParser p, JsonToken v) throws IOException, Rejected {
        if (v == JsonToken.VALUE_NULL) {
            return List.of();
        }
        if (v != JsonToken.START_ARRAY) {
            throw new Rejected("wrong_type");
        }
        List<String> out = new ArrayList<>(4);
        JsonToken t;
        while ((t = p.nextToken()) != JsonToken.END_ARRAY) {
            String s = str(p, t);
            if (s != null && !s.isEmpty()) {
                out.add(s.toLowerCase(Locale.ROOT));
            }
        }
        return out;
    }

    // ---- protobuf --------------------------------------------------------------------------

    private static Event proto(byte[] bytes, int off) throws Rejected {
        Raw raw = new Raw(true);
        try {
            CodedInputStream in = CodedInputStream.newInstance(bytes, off, bytes.length - off);
            int bodyField = 0;
            while (true) {
                int tag = in.readTag();
                if (tag == 0) {
                    break;
                }
                int field = tag >>> 3, wt = tag & 7;
                switch (field) {
                    case 1: raw.eventId = text(in, wt); break;
                    case 2: raw.accountId = text(in, wt); break;
                    case 3: raw.occurredAt = text(in, wt); break;
                    case 10: case 11: case 12: case 13: {
                        if (wt != 2) {
                            throw new Rejected("bad_protobuf");
                        }
                        if (field != bodyField) {
                            raw.clearBody();
                            bodyField = field;
                        }
                        int len = in.readRawVarint32();
                        if (len < 0) {
                            throw new Rejected("bad_protobuf");
                        }
                        int limit = in.pushLimit(len);
                        body(in, field, raw);
                        in.checkLastTagWas(0);
                        in.popLimit(limit);
                        break;
                    }
                    default:
                        if (!in.skipField(tag)) {
                            throw new Rejected("bad_protobuf");
                        }
                }
            }
            raw.type = switch (bodyField) {
                case 10 -> "product_usage";
                case 11 -> "email";
                case 12 -> "call";
                case 13 -> "deal";
                default -> null;
            };
        } catch (Rejected r) {
            throw r;
        } catch (IOException | RuntimeException e) {
            throw new Rejected(e.getMessage() != null && e.getMessage().contains("UTF-8") ? "invalid_utf8" : "bad_protobuf");
        }
        return validate(raw);
    }

    private static String text(CodedInputStream in, int wt) throws IOException, Rejected {
        if (wt != 2) {
            throw new Rejected("bad_protobuf");
        }
        String s = in.readStringRequireUtf8();
        return s.isEmpty() ? null : s;
    }

    private static double dbl(CodedInputStream in, int wt) throws IOException, Rejected {
        if (wt != 1) {
            throw new Rejected("bad_protobuf");
        }
        return in.readDouble();
    }

    private static void body(CodedInputStream in, int which, Raw raw) throws IOException, Rejected {
        while (true) {
            int tag = in.readTag();
            if (tag == 0) {
                return;
            }
            int f = tag >>> 3, wt = tag & 7;
            boolean known = true;
            switch (which) {
                case 10:
                    switch (f) {
                        case 1 -> raw.userId = text(in, wt);
                        case 2 -> raw.feature = text(in, wt);
                        case 3 -> raw.quantity = dbl(in, wt);
                        default -> known = false;
                    }
                    break;
                case 11:
                    switch (f) {
                        case 1 -> raw.contactId = text(in, wt);
                        case 2 -> raw.direction = text(in, wt);
                        case 3 -> raw.action = text(in, wt);
                        case 4 -> raw.campaign = text(in, wt);
                        default -> known = false;
                    }
                    break;
                case 12:
                    switch (f) {
                        case 1 -> raw.contactId = text(in, wt);
                        case 2 -> raw.direction = text(in, wt);
                        case 3 -> raw.durationS = dbl(in, wt);
                        case 4 -> raw.outcome = text(in, wt);
                        case 5 -> raw.sentiment = dbl(in, wt);
                        case 6 -> {
                            String t = text(in, wt);
                            if (t != null) {
                                if (raw.topics.isEmpty()) {
                                    raw.topics = new ArrayList<>(4);
                                }
                                raw.topics.add(t.toLowerCase(Locale.ROOT));
                            }
                        }
                        default -> known = false;
                    }
                    break;
                default:
                    switch (f) {
                        case 1 -> raw.dealId = text(in, wt);
                        case 2 -> raw.kind = text(in, wt);
                        case 3 -> raw.stage = text(in, wt);
                        case 4 -> raw.amount = dbl(in, wt);
                        case 5 -> raw.currency = text(in, wt);
                        case 6 -> raw.closeDate = text(in, wt);
                        case 7 -> raw.plan = text(in, wt);
                        case 8 -> raw.industry = text(in, wt);
                        default -> known = false;
                    }
            }
            if (!known && !in.skipField(tag)) {
                throw new Rejected("bad_protobuf");
            }
        }
    }

    // ---- validation (codec/mod.rs `validate`) ------------------------------------------------

    /** Every field optional and unvalidated; empty strings count as absent. */
    private static final class Raw {
        final boolean proto;
        String eventId, accountId, occurredAt, type;
        String userId, feature;
        Double quantity;
        String contactId, direction, action, campaign, outcome;
        Double durationS, sentiment;
        List<String> topics = List.of();
        String dealId, kind, stage, currency, closeDate, plan, industry;
        Double amount;

        Raw(boolean proto) {
            this.proto = proto;
        }

        void clearBody() {
            userId = feature = contactId = direction = action = campaign = outcome = null;
            dealId = kind = stage = currency = closeDate = plan = industry = null;
            quantity = durationS = sentiment = amount = null;
            topics = List.of();
        }
    }

    private static String present(String s) {
        return s == null || s.isEmpty() ? null : s;
    }

    private static int utf8Len(String s) {
        int n = 0;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c < 0x80) {
                n++;
            } else if (c < 0x800) {
                n += 2;
            } else if (Character.isHighSurrogate(c)) {
                n += 4;
                i++;
            } else {
                n += 3;
            }
        }
        return n;
    }

    private static String requiredId(String s) throws Rejected {
        s = present(s);
        if (s == null) {
            throw new Rejected("missing_field");
        }
        return checkId(s);
    }

    private static String checkId(String s) throws Rejected {
        if (s != null && s.length() * 3 > Config.MAX_ID_BYTES && utf8Len(s) > Config.MAX_ID_BYTES) {
            throw new Rejected("field_too_long");
        }
        return s;
    }

    private static int optionalEnum(String s, String[] names) throws Rejected {
        s = present(s);
        if (s == null) {
            return -1;
        }
        int i = Event.indexOf(names, s);
        if (i < 0) {
            throw new Rejected("unknown_enum");
        }
        return i;
    }

    private static int requiredEnum(String s, String[] names) throws Rejected {
        if (present(s) == null) {
            throw new Rejected("missing_field");
        }
        return optionalEnum(s, names);
    }

    private static final String[] DIRECTIONS = {"inbound", "outbound"};

    private static Double finite(Double v) throws Rejected {
        if (v != null && !Double.isFinite(v)) {
            throw new Rejected("non_finite");
        }
        return v;
    }

    private static Double nonNegative(Double v) throws Rejected {
        v = finite(v);
        if (v != null && v < 0.0) {
            throw new Rejected("out_of_range");
        }
        return v;
    }

    private static Event validate(Raw raw) throws Rejected {
        Event e = new Event();
        e.eventId = requiredId(raw.eventId);
        e.accountId = requiredId(raw.accountId);
        String at = present(raw.occurredAt);
        if (at == null) {
            throw new Rejected("missing_field");
        }
        long ms = Times.parseRfc3339(at);
        if (ms == Long.MIN_VALUE) {
            throw new Rejected("bad_timestamp");
        }
        e.occurredAtMs = ms;
        String type = present(raw.type);
        if (type == null) {
            throw new Rejected("missing_field");
        }
        switch (type) {
            case "product_usage": {
                e.type = Event.USAGE;
                e.userId = checkId(present(raw.userId));
                e.feature = present(raw.feature);
                Double q = nonNegative(raw.quantity);
                e.quantity = q == null ? 1.0 : q;
                break;
            }
            case "email": {
                e.type = Event.EMAIL;
                e.action = requiredEnum(raw.action, Event.ACTIONS);
                e.contactId = checkId(present(raw.contactId));
                e.direction = optionalEnum(raw.direction, DIRECTIONS);
                e.campaign = present(raw.campaign);
                break;
            }
            case "call": {
                e.type = Event.CALL;
                Double s = finite(raw.sentiment);
                if (s != null && !(s >= -1.0 && s <= 1.0)) {
                    throw new Rejected("out_of_range");
                }
                e.contactId = checkId(present(raw.contactId));
                e.direction = optionalEnum(raw.direction, DIRECTIONS);
                Double d = nonNegative(raw.durationS);
                if (d != null) {
                    e.hasDuration = true;
                    e.durationS = d;
                }
                e.outcome = optionalEnum(raw.outcome, Event.OUTCOMES);
                if (s != null) {
                    e.hasSentiment = true;
                    e.sentiment = s;
                }
                e.topics = raw.topics;
                break;
            }
            case "deal": {
                e.type = Event.DEAL;
                e.dealId = requiredId(raw.dealId);
                e.kind = requiredEnum(raw.kind, Event.KINDS);
                String stage = present(raw.stage);
                if (stage == null) {
                    throw new Rejected("missing_field");
                }
                if (stage.equals("closed_won")) {
                    e.closedWon = true;
                } else if (stage.equals("closed_lost")) {
                    e.closedLost = true;
                } else {
                    e.openStage = stage;
                }
                String cd = present(raw.closeDate);
                if (cd != null) {
                    int day = Times.parseDateDay(cd);
                    if (day == Integer.MIN_VALUE) {
                        throw new Rejected("bad_timestamp");
                    }
                    e.hasCloseDay = true;
                    e.closeDay = day;
                }
                Double a = nonNegative(raw.amount);
                if (a != null) {
                    e.hasAmount = true;
                    e.amount = a;
                }
                e.currency = present(raw.currency);
                e.plan = checkId(present(raw.plan));
                e.industry = checkId(present(raw.industry));
                break;
            }
            default:
                throw new Rejected("unknown_type");
        }
        return e;
    }
}
