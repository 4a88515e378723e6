package rapport.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;

/**
 * Per-account state: the fields of rapport's {@code rapport.v1.AccountState} (proto/rapport/v1/state.proto)
 * with the same bounds, stored in the state store in a compact binary form.
 */
final class AccountState {
    static final int VERSION = 1;
    static final int BUCKET_DAYS = 90;
    static final int MAX_TRACKED = 64;
    static final int ARR_HISTORY_DAYS = 400;
    static final int SCORE_DAYS = 31;
    static final int MAX_OPEN_DEALS = 16;
    static final int EPOCH_DAY = 18_262;
    static final int ADOPTION_DAYS = 30;

    static final class DayBucket {
        int day; // offset from baseDay
        int usageEvents, emailsOut, emailOpens, emailClicks, emailReplies, emailBad;
        int calls, meetingsHeld, meetingsMissed, sentimentMilliSum, sentimentN, riskMentions, outcomeEvents;
    }

    static final class OpenDeal {
        String dealId, kind, stage;
        double amount;
        int closeDay;
    }

    static final class ArrChange {
        long atMs;
        double arrAfter;

        ArrChange(long atMs, double arrAfter) {
            this.atMs = atMs;
            this.arrAfter = arrAfter;
        }
    }

    static final class OpenAlert {
        String rule, severity;
        long episodeStartMs, openedMs;
        int openedScore;
    }

    static final class Cooldown {
        String rule;
        long untilMs;

        Cooldown(String rule, long untilMs) {
            this.rule = rule;
            this.untilMs = untilMs;
        }
    }

    String accountId = "";
    long firstSeenMs, maxEventMs;
    int baseDay;
    final ArrayList<DayBucket> days = new ArrayList<>();
    final IntList userHash = new IntList(), userDay = new IntList(), featureHash = new IntList(), featureDay = new IntList();
    long lastUsageMs, lastEmailMs, lastCallMs, lastDealMs;
    long negativeCallMs;
    String negativeCallDetail = "";
    long emailRiskMs;
    String emailRiskDetail = "";
    long dealLossMs;
    String dealLossDetail = "";
    final ArrayList<String> riskTopics = new ArrayList<>();
    final LongList riskTopicMs = new LongList();
    final ArrayList<OpenDeal> openDeals = new ArrayList<>();
    double arr;
    final ArrayList<ArrChange> arrChanges = new ArrayList<>();
    boolean hasArr;
    boolean scored;
    int emittedScore;
    final IntList emittedComponents = new IntList();
    int emitSeq;
    final IntList scoreDay = new IntList(), scoreMax = new IntList(), scoreMin = new IntList();
    int currentScore;
    final ArrayList<OpenAlert> openAlerts = new ArrayList<>();
    final ArrayList<Cooldown> cooldowns = new ArrayList<>();
    long timerDueMs;
    String plan = "", industry = "";
    long attrsMs;

    static AccountState create(String accountId, long firstSeenMs) {
        AccountState s = new AccountState();
        s.accountId = accountId;
        s.firstSeenMs = firstSeenMs;
        return s;
    }

    // ---- day buckets (domain/state.rs) ---------------------------------------------------

    /** The bucket for {@code day}, created if needed; null when older than the kept window. */
    DayBucket bucket(int day, int latestDay) {
        int oldest = latestDay - (BUCKET_DAYS - 1);
        if (day < oldest) {
            return null;
        }
        if (days.isEmpty()) {
            baseDay = day;
        }
        if (day < baseDay) {
            int shift = baseDay - day;
            for (DayBucket b : days) {
                b.day += shift;
            }
            baseDay = day;
        }
        int off = day - baseDay;
        int lo = 0, hi = days.size();
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            int d = days.get(mid).day;
            if (d < off) {
                lo = mid + 1;
            } else if (d > off) {
                hi = mid;
            } else {
                return days.get(mid);
            }
        }
        DayBucket b = new DayBucket();
        b.day = off;
        days.add(lo, b);
        return b;
    }

    void pruneBuckets(int latestDay) {
        int oldest = latestDay - (BUCKET_DAYS - 1);
        if (days.isEmpty() || baseDay >= oldest) {
            return;
        }
        int cut = oldest - baseDay;
        days.removeIf(b -> b.day < cut);
        if (!days.isEmpty()) {
            int first = days.get(0).day;
            for (DayBucket b : days) {
                b.day -= first;
            }
            baseDay += first;
        } else {
            baseDay = oldest;
        }
    }

    static int relDay(int day) {
        return day - EPOCH_DAY;
    }

    static void pruneTracked(IntList hashes, IntList days, int since) {
        int i = 0;
        while (i < hashes.size) {
            if (days.get(i) < since) {
                hashes.swapRemove(i);
                days.swapRemove(i);
            } else {
                i++;
            }
        }
    }

    static void touch(IntList hashes, IntList days, int hash, int day) {
        for (int i = 0; i < hashes.size; i++) {
            if (hashes.get(i) == hash) {
                if (days.get(i) < day) {
                    days.set(i, day);
                }
                return;
            }
        }
        if (hashes.size >= MAX_TRACKED) {
            int mi = 0;
            for (int i = 1; i < days.size; i++) {
                if (days.get(i) < days.get(mi)) {
                    mi = i;
                }
            }
            if (days.get(mi) >= day) {
                return;
            }
            hashes.swapRemove(mi);
            days.swapRemove(mi);
        }
        hashes.add(hash);
        days.add(day);
    }

    static int activeSince(IntList days, int sinceDay) {
        int n = 0;
        for (int i = 0; i < days.size; i++) {
            if (days.get(i) >= sinceDay) {
                n++;
            }
        }
        return n;
    }

    // ---- small primitive lists -------------------------------------------------------------

    static final class IntList {
        int[] a = new int[4];
        int size;

        int get(int i) {
            return a[i];
        }

        void set(int i, int v) {
            a[i] = v;
        }

        void add(int v) {
            if (size == a.length) {
                a = java.util.Arrays.copyOf(a, size * 2);
            }
            a[size++] = v;
        }

        void swapRemove(int i) {
            a[i] = a[--size];
        }

        /** Removes the first n elements. */
        void drain(int n) {
            System.arraycopy(a, n, a, 0, size - n);
            size -= n;
        }

        void clear() {
            size = 0;
        }
    }

    static final class LongList {
        long[] a = new long[4];
        int size;

        long get(int i) {
            return a[i];
        }

        void set(int i, long v) {
            a[i] = v;
        }

        void add(long v) {
            if (size == a.length) {
                a = java.util.Arrays.copyOf(a, size * 2);
            }
            a[size++] = v;
        }

        void swapRemove(int i) {
            a[i] = a[--size];
        }
    }

    // ---- serialization ---------------------------------------------------------------------

    byte[] encode(Writer w) {
        w.reset();
        w.varint(VERSION);
        w.str(accountId);
        w.long8(firstSeenMs).long8(maxEventMs).varint(baseDay);
        w.varint(days.size());
        for (DayBucket b : days) {
            w.varint(b.day).varint(b.usageEvents).varint(b.emailsOut).varint(b.emailOpens).varint(b.emailClicks)
                    .varint(b.emailReplies).varint(b.emailBad).varint(b.calls).varint(b.meetingsHeld)
                    .varint(b.meetingsMissed).varint(b.sentimentMilliSum).varint(b.sentimentN)
                    .varint(b.riskMentions).varint(b.outcomeEvents);
        }
        w.ints(userHash).ints(userDay).ints(featureHash).ints(featureDay);
        w.long8(lastUsageMs).long8(lastEmailMs).long8(lastCallMs).long8(lastDealMs);
        w.long8(negativeCallMs).str(negativeCallDetail).long8(emailRiskMs).str(emailRiskDetail);
        w.long8(dealLossMs).str(dealLossDetail);
        w.varint(riskTopics.size());
        for (int i = 0; i < riskTopics.size(); i++) {
            w.str(riskTopics.get(i)).long8(riskTopicMs.get(i));
        }
        w.varint(openDeals.size());
        for (OpenDeal d : openDeals) {
            w.str(d.dealId).str(d.kind).str(d.stage).dbl(d.amount).varint(d.closeDay);
        }
        w.dbl(arr);
        w.varint(arrChanges.size());
        for (ArrChange c : arrChanges) {
            w.long8(c.atMs).dbl(c.arrAfter);
        }
        w.varint(hasArr ? 1 : 0).varint(scored ? 1 : 0).varint(emittedScore).ints(emittedComponents).varint(emitSeq);
        w.ints(scoreDay).ints(scoreMax).ints(scoreMin).varint(currentScore);
        w.varint(openAlerts.size());
        for (OpenAlert a : openAlerts) {
            w.str(a.rule).str(a.severity).long8(a.episodeStartMs).long8(a.openedMs).varint(a.openedScore);
        }
        w.varint(cooldowns.size());
        for (Cooldown c : cooldowns) {
            w.str(c.rule).long8(c.untilMs);
        }
        w.long8(timerDueMs).str(plan).str(industry).long8(attrsMs);
        return w.toBytes();
    }

    static AccountState decode(byte[] bytes) {
        ByteBuffer r = ByteBuffer.wrap(bytes);
        int version = varint(r);
        if (version != VERSION) {
            throw new IllegalStateException("stored account state has version " + version + ", this build reads " + VERSION);
        }
        AccountState s = new AccountState();
        s.accountId = str(r);
        s.firstSeenMs = r.getLong();
        s.maxEventMs = r.getLong();
        s.baseDay = varint(r);
        int n = varint(r);
        for (int i = 0; i < n; i++) {
            DayBucket b = new DayBucket();
            b.day = varint(r);
            b.usageEvents = varint(r);
            b.emailsOut = varint(r);
            b.emailOpens = varint(r);
            b.emailClicks = varint(r);
            b.emailReplies = varint(r);
            b.emailBad = varint(r);
            b.calls = varint(r);
            b.meetingsHeld = varint(r);
            b.meetingsMissed = varint(r);
            b.sentimentMilliSum = varint(r);
            b.sentimentN = varint(r);
            b.riskMentions = varint(r);
            b.outcomeEvents = varint(r);
            s.days.add(b);
        }
        ints(r, s.userHash);
        ints(r, s.userDay);
        ints(r, s.featureHash);
        ints(r, s.featureDay);
        s.lastUsageMs = r.getLong();
        s.lastEmailMs = r.getLong();
        s.lastCallMs = r.getLong();
        s.lastDealMs = r.getLong();
        s.negativeCallMs = r.getLong();
        s.negativeCallDetail = str(r);
        s.emailRiskMs = r.getLong();
        s.emailRiskDetail = str(r);
        s.dealLossMs = r.getLong();
        s.dealLossDetail = str(r);
        n = varint(r);
        for (int i = 0; i < n; i++) {
            s.riskTopics.add(str(r));
            s.riskTopicMs.add(r.getLong());
        }
        n = varint(r);
        for (int i = 0; i < n; i++) {
            OpenDeal d = new OpenDeal();
            d.dealId = str(r);
            d.kind = str(r);
            d.stage = str(r);
            d.amount = r.getDouble();
            d.closeDay = varint(r);
            s.openDeals.add(d);
        }
        s.arr = r.getDouble();
        n = varint(r);
        for (int i = 0; i < n; i++) {
            s.arrChanges.add(new ArrChange(r.getLong(), r.getDouble()));
        }
        s.hasArr = varint(r) != 0;
        s.scored = varint(r) != 0;
        s.emittedScore = varint(r);
        ints(r, s.emittedComponents);
        s.emitSeq = varint(r);
        ints(r, s.scoreDay);
        ints(r, s.scoreMax);
        ints(r, s.scoreMin);
        s.currentScore = varint(r);
        n = varint(r);
        for (int i = 0; i < n; i++) {
            OpenAlert a = new OpenAlert();
            a.rule = str(r);
            a.severity = str(r);
            a.episodeStartMs = r.getLong();
            a.openedMs = r.getLong();
            a.openedScore = varint(r);
            s.openAlerts.add(a);
        }
        n = varint(r);
        for (int i = 0; i < n; i++) {
            s.cooldowns.add(new Cooldown(str(r), r.getLong()));
        }
        s.timerDueMs = r.getLong();
        s.plan = str(r);
        s.industry = str(r);
        s.attrsMs = r.getLong();
        return s;
    }

    private static int varint(ByteBuffer r) {
        int shift = 0;
        int raw = 0;
        while (true) {
            byte b = r.get();
            raw |= (b & 0x7f) << shift;
            if (b >= 0) {
                break;
            }
            shift += 7;
        }
        return (raw >>> 1) ^ -(raw & 1);
    }

    private static String str(ByteBuffer r) {
        int n = varint(r);
        if (n == 0) {
            return "";
        }
        String s = new String(r.array(), r.position(), n, StandardCharsets.UTF_8);
        r.position(r.position() + n);
        return s;
    }

    private static void ints(ByteBuffer r, IntList into) {
        int n = varint(r);
        for (int i = 0; i < n; i++) {
            into.add(varint(r));
        }
    }

    /** A reusable output buffer for encoding states (zigzag varints, fixed longs and doubles, UTF-8 strings). */
    static final class Writer {
        private byte[] buf = new byte[2048];
        private int pos;

        void reset() {
            pos = 0;
        }

        private void ensure(int n) {
            if (pos + n > buf.length) {
                buf = java.util.Arrays.copyOf(buf, Math.max(buf.length * 2, pos + n));
            }
        }

        Writer varint(int v) {
            ensure(5);
            int z = (v << 1) ^ (v >> 31);
            while ((z & ~0x7f) != 0) {
                buf[pos++] = (byte) ((z & 0x7f) | 0x80);
                z >>>= 7;
            }
            buf[pos++] = (byte) z;
            return this;
        }

        Writer long8(long v) {
            ensure(8);
            for (int i = 7; i >= 0; i--) {
                buf[pos + i] = (byte) v;
                v >>>= 8;
            }
            pos += 8;
            return this;
        }

        Writer dbl(double v) {
            return long8(Double.doubleToRawLongBits(v));
        }

        Writer str(String s) {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            varint(b.length);
            ensure(b.length);
            System.arraycopy(b, 0, buf, pos, b.length);
            pos += b.length;
            return this;
        }

        Writer ints(IntList l) {
            varint(l.size);
            for (int i = 0; i < l.size; i++) {
                varint(l.get(i));
            }
            return this;
        }

        byte[] toBytes() {
            return java.util.Arrays.copyOf(buf, pos);
        }
    }
}
