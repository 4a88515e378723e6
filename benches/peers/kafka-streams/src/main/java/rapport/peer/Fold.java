package rapport.peer;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import rapport.peer.AccountState.ArrChange;
import rapport.peer.AccountState.DayBucket;
import rapport.peer.AccountState.OpenDeal;

/** {@code fold(state, event)}: rapport's domain/fold.rs, the only way an account's state changes. */
final class Fold {
    static final int MAX_RISK_TOPICS = 8;
    static final int MAX_ARR_CHANGES = 48;
    static final int MAX_STAGE_BYTES = 64;

    private Fold() {}

    static void fold(AccountState s, Event ev, boolean late) {
        long t = ev.occurredAtMs;
        if (s.firstSeenMs == 0 || t < s.firstSeenMs) {
            s.firstSeenMs = t;
        }
        if (t > s.maxEventMs) {
            if (Times.dayOf(t) != Times.dayOf(s.maxEventMs)) {
                int since = AccountState.relDay(Times.dayOf(t) - (AccountState.ADOPTION_DAYS - 1));
                AccountState.pruneTracked(s.userHash, s.userDay, since);
                AccountState.pruneTracked(s.featureHash, s.featureDay, since);
            }
            s.maxEventMs = t;
            s.pruneBuckets(Times.dayOf(t));
        }
        int day = Times.dayOf(t);
        int latestDay = Times.dayOf(s.maxEventMs);
        switch (ev.type) {
            case Event.USAGE -> usage(s, ev, t, day, latestDay);
            case Event.EMAIL -> email(s, ev, t, day, latestDay, late);
            case Event.CALL -> call(s, ev, t, day, latestDay, late);
            default -> deal(s, ev, t, late);
        }
    }

    private static void usage(AccountState s, Event u, long t, int day, int latestDay) {
        DayBucket b = s.bucket(day, latestDay);
        if (b != null) {
            b.usageEvents++;
        }
        boolean recent = day > latestDay - AccountState.ADOPTION_DAYS;
        if (u.userId != null && recent) {
            AccountState.touch(s.userHash, s.userDay, Hashes.idHash(u.userId), AccountState.relDay(day));
        }
        if (u.feature != null && recent) {
            AccountState.touch(s.featureHash, s.featureDay, Hashes.idHash(u.feature), AccountState.relDay(day));
        }
        s.lastUsageMs = Math.max(s.lastUsageMs, t);
    }

    private static void email(AccountState s, Event e, long t, int day, int latestDay, boolean late) {
        boolean inbound = e.direction == Event.INBOUND;
        DayBucket b = s.bucket(day, latestDay);
        if (b != null) {
            switch (e.action) {
                case Event.SENT, Event.DELIVERED -> {
                    if (inbound) {
                        b.emailReplies++;
                    } else if (e.action == Event.SENT) {
                        b.emailsOut++;
                    }
                }
                case Event.OPENED -> b.emailOpens++;
                case Event.CLICKED -> b.emailClicks++;
                case Event.REPLIED -> b.emailReplies++;
                default -> b.emailBad++;
            }
        }
        boolean bad = e.action == Event.BOUNCED || e.action == Event.UNSUBSCRIBED || e.action == Event.COMPLAINED;
        if (bad && !late && t >= s.emailRiskMs) {
            s.emailRiskMs = t;
            String who = e.contactId != null ? e.contactId : "a contact";
            s.emailRiskDetail = "Email to " + who + " " + Event.ACTIONS[e.action] + ".";
        }
        s.lastEmailMs = Math.max(s.lastEmailMs, t);
    }

    private static void call(AccountState s, Event c, long t, int day, int latestDay, boolean late) {
        List<String> risky = new ArrayList<>(2);
        for (String topic : c.topics) {
            if (Config.RISK_TOPICS.contains(topic)) {
                risky.add(topic);
            }
        }
        boolean reached = c.outcome != Event.NO_ANSWER && c.outcome != Event.VOICEMAIL;
        DayBucket b = s.bucket(day, latestDay);
        if (b != null) {
            if (reached) {
                b.calls++;
            }
            if (c.outcome == Event.MEETING_HELD) {
                b.meetingsHeld++;
            } else if (c.outcome == Event.MEETING_CANCELLED || c.outcome == Event.MEETING_NO_SHOW) {
                b.meetingsMissed++;
            }
            if (c.hasSentiment) {
                b.sentimentMilliSum += (int) Num.round(c.sentiment * 1000.0);
                b.sentimentN++;
            }
            b.riskMentions += risky.size();
        }
        for (String topic : risky) {
            int i = s.riskTopics.indexOf(topic);
            if (i >= 0) {
                s.riskTopicMs.set(i, Math.max(s.riskTopicMs.get(i), t));
            } else {
                if (s.riskTopics.size() >= MAX_RISK_TOPICS) {
                    int mi = 0;
                    for (int k = 1; k < s.riskTopicMs.size; k++) {
                        if (s.riskTopicMs.get(k) < s.riskTopicMs.get(mi)) {
                            mi = k;
                        }
                    }
                    swapRemove(s.riskTopics, mi);
                    s.riskTopicMs.swapRemove(mi);
                }
                s.riskTopics.add(topic);
                s.riskTopicMs.add(t);
            }
        }
        boolean negative = (c.hasSentiment && c.sentiment <= Config.NEGATIVE_CALL_SENTIMENT_AT_MOST) || !risky.isEmpty();
        if (negative && !late && t >= s.negativeCallMs) {
            s.negativeCallMs = t;
            StringBuilder d = new StringBuilder();
            if (c.hasSentiment) {
                d.append("Call sentiment ").append(Num.fmt(c.sentiment, 2));
            } else {
                d.append("Call");
            }
            if (!risky.isEmpty()) {
                d.append(" with risk topics: ").append(String.join(", ", risky));
            }
            d.append('.');
            s.negativeCallDetail = d.toString();
        }
        s.lastCallMs = Math.max(s.lastCallMs, t);
    }

    static <T> void swapRemove(List<T> l, int i) {
        T last = l.remove(l.size() - 1);
        if (i < l.size()) {
            l.set(i, last);
        }
    }

    private static String clipped(String s, int max) {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        if (b.length <= max) {
            return s;
        }
        int end = max;
        while (end > 0 && (b[end] & 0xC0) == 0x80) {
            end--;
        }
        return new String(b, 0, end, StandardCharsets.UTF_8);
    }

    private static void deal(AccountState s, Event d, long t, boolean late) {
        s.lastDealMs = Math.max(s.lastDealMs, t);
        if ((d.plan != null || d.industry != null) && t >= s.attrsMs) {
            s.attrsMs = t;
            if (d.plan != null) {
                s.plan = d.plan;
            }
            if (d.industry != null) {
                s.industry = d.industry;
            }
        }
        int pos = -1;
        for (int i = 0; i < s.openDeals.size(); i++) {
            if (s.openDeals.get(i).dealId.equals(d.dealId)) {
                pos = i;
                break;
            }
        }
        if (d.openStage != null) {
            OpenDeal o = new OpenDeal();
            o.dealId = d.dealId;
            o.kind = Event.KINDS[d.kind];
            o.stage = clipped(d.openStage, MAX_STAGE_BYTES);
            o.amount = d.hasAmount ? d.amount : 0.0;
            o.closeDay = d.hasCloseDay ? d.closeDay : 0;
            if (pos >= 0) {
                s.openDeals.set(pos, o);
            } else {
                if (s.openDeals.size() >= AccountState.MAX_OPEN_DEALS) {
                    s.openDeals.remove(0);
                }
                s.openDeals.add(o);
            }
            return;
        }
        if (pos >= 0) {
            s.openDeals.remove(pos);
        }
        boolean won = d.closedWon;
        double amount = d.hasAmount ? d.amount : 0.0;
        double before = s.arr;
        String loss = null;
        double after;
        if (won) {
            switch (d.kind) {
                case Event.NEW_BUSINESS, Event.EXPANSION -> after = before + amount;
                case Event.RENEWAL -> after = d.hasAmount ? amount : before;
                case Event.CONTRACTION -> {
                    loss = "Contraction of " + money(amount) + " closed won (deal " + d.dealId + ").";
                    after = Math.max(before - amount, 0.0);
                }
                default -> {
                    loss = "Cancellation closed (deal " + d.dealId + ").";
                    after = 0.0;
                }
            }
        } else if (d.kind == Event.RENEWAL) {
            loss = "Renewal " + d.dealId + " closed lost.";
            after = 0.0;
        } else {
            after = before;
        }
        if (loss != null && !late && t >= s.dealLossMs) {
            s.dealLossMs = t;
            s.dealLossDetail = loss;
        }
        if (after != before || !s.hasArr) {
            s.hasArr = true;
            s.arr = after;
            s.arrChanges.add(new ArrChange(t, after));
            s.arrChanges.sort((a, b) -> Long.compare(a.atMs, b.atMs));
            long horizon = s.maxEventMs - AccountState.ARR_HISTORY_DAYS * Times.DAY_MS;
            int keepFrom = 0;
            for (int i = s.arrChanges.size() - 1; i >= 0; i--) {
                if (s.arrChanges.get(i).atMs <= horizon) {
                    keepFrom = i;
                    break;
                }
            }
            keepFrom = Math.max(keepFrom, Math.max(s.arrChanges.size() - MAX_ARR_CHANGES, 0));
            if (keepFrom > 0) {
                s.arrChanges.subList(0, keepFrom).clear();
            }
        }
    }

    /** "$12,500": amounts are shown without a currency conversion. */
    static String money(double x) {
        long n = (long) Num.round(x);
        String digits = Long.toString(Math.abs(n));
        StringBuilder out = new StringBuilder();
        if (n < 0) {
            out.append('-');
        }
        out.append('$');
        for (int i = 0; i < digits.length(); i++) {
            if (i > 0 && (digits.length() - i) % 3 == 0) {
                out.append(',');
            }
            out.append(digits.charAt(i));
        }
        return out.toString();
    }
}
