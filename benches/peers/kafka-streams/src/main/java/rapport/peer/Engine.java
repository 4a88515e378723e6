package rapport.peer;

import java.util.ArrayList;
import java.util.List;
import rapport.peer.AccountState.Cooldown;
import rapport.peer.AccountState.DayBucket;
import rapport.peer.AccountState.OpenAlert;
import rapport.peer.AccountState.OpenDeal;
import rapport.peer.Config.Rule;

/**
 * {@code evaluate(state, now)}: the scorecard, the drivers of a change, the alert rules and the
 * account's next check; rapport's domain/engine.rs, score.rs and alert.rs with the default
 * configuration. Outputs are appended as JSON records in rapport's shape.
 */
final class Engine {
    static final long DAY = Times.DAY_MS;
    static final String[] COMPONENTS = {
        "usage_frequency", "usage_trend", "adoption", "email_engagement", "call_sentiment", "commercial", "recency", "outcome"
    };
    static final int N = COMPONENTS.length;

    /** One output record: a health-score change or an alert transition, as JSON. */
    static final class Output {
        final boolean alert;
        final String accountId;
        final byte[] json;

        Output(boolean alert, String accountId, byte[] json) {
            this.alert = alert;
            this.accountId = accountId;
            this.json = json;
        }
    }

    private Engine() {}

    // ---- windows (score.rs `windows`) ----------------------------------------------------

    static final class Windows {
        double last7, weeklyAvg28;
        boolean hasBaseline;
        int activeDays28, emailsOut30, replies30, clicks30, opens30, emailBad30;
        int calls60, missed60, sentimentN60, riskMentions30;
        long sentimentMilli60;
    }

    static Windows windows(AccountState s, long nowMs) {
        int today = Times.dayOf(nowMs);
        Windows w = new Windows();
        long last7 = 0, prior = 0;
        for (int i = s.days.size() - 1; i >= 0; i--) {
            DayBucket b = s.days.get(i);
            int age = today - (s.baseDay + b.day);
            if (age < 0) {
                continue;
            }
            if (age > 59) {
                break;
            }
            if (age < 7) {
                last7 += b.usageEvents;
            } else if (age < 35) {
                prior += b.usageEvents;
            }
            if (age < 28 && b.usageEvents > 0) {
                w.activeDays28++;
            }
            if (age < 30) {
                w.emailsOut30 += b.emailsOut;
                w.replies30 += b.emailReplies;
                w.clicks30 += b.emailClicks;
                w.opens30 += b.emailOpens;
                w.emailBad30 += b.emailBad;
                w.riskMentions30 += b.riskMentions;
            }
            w.calls60 += b.calls + b.meetingsMissed;
            w.missed60 += b.meetingsMissed;
            w.sentimentMilli60 += b.sentimentMilliSum;
            w.sentimentN60 += b.sentimentN;
        }
        w.last7 = last7;
        w.weeklyAvg28 = prior / 4.0;
        w.hasBaseline = s.firstSeenMs > 0 && Times.dayOf(s.firstSeenMs) <= today - 34;
        return w;
    }

    // ---- components (score.rs `absolute_components`) -------------------------------------

    /** Component values, NaN where a component has no data. */
    static double[] components(AccountState s, Windows w, long nowMs) {
        int today = Times.dayOf(nowMs);
        double[] out = new double[N];
        java.util.Arrays.fill(out, Double.NaN);
        if (s.lastUsageMs > 0) {
            out[0] = 100.0 * Num.clamp01(w.activeDays28 / (double) Config.TARGET_ACTIVE_DAYS);
            if (w.hasBaseline && w.weeklyAvg28 > 0.0) {
                double r = w.last7 / w.weeklyAvg28;
                out[1] = 100.0 * Num.clamp01((r - 0.2) / 0.8);
            }
            double users = AccountState.activeSince(s.userDay, AccountState.relDay(today - 29));
            double features = AccountState.activeSince(s.featureDay, AccountState.relDay(today - 29));
            out[2] = 50.0 * Num.clamp01(users / Config.TARGET_USERS) + 50.0 * Num.clamp01(features / Config.TARGET_FEATURES);
            double idleDays = Math.max(nowMs - s.lastUsageMs, 0) / (double) DAY;
            double full = Config.RECENCY_FULL_DAYS, zero = Config.RECENCY_ZERO_DAYS;
            out[6] = 100.0 * Num.clamp01((zero - idleDays) / (zero - full));
        }
        double engaged = w.replies30 + w.clicks30 / 2.0 + w.opens30 / 4.0;
        if (w.emailsOut30 >= 3 || w.replies30 > 0 || w.emailBad30 > 0) {
            double rate = engaged / Math.max(w.emailsOut30, 1);
            double base = 100.0 * Num.clamp01(rate / Config.TARGET_ENGAGEMENT_RATE);
            out[3] = Math.max(base - 20.0 * w.emailBad30, 0.0);
        }
        if (w.calls60 > 0 || w.sentimentN60 > 0) {
            double avg = w.sentimentN60 > 0 ? (double) w.sentimentMilli60 / (double) w.sentimentN60 / 1000.0 : 0.4;
            double base = (avg + 1.0) * 50.0;
            out[4] = Num.clamp(base - 10.0 * w.missed60 - 15.0 * w.riskMentions30, 0.0, 100.0);
        }
        if (s.hasArr) {
            double value;
            if (s.arr <= 0.0) {
                value = 0.0;
            } else {
                double nrr = netRetention(s, nowMs);
                if (Double.isNaN(nrr)) {
                    nrr = 1.0;
                }
                value = 100.0 * Num.clamp01((nrr - 0.7) / 0.4);
                if (hasDownsellDeal(s)) {
                    value -= 25.0;
                }
            }
            out[5] = Math.max(value, 0.0);
        }
        return out;
    }

    private static boolean hasDownsellDeal(AccountState s) {
        for (OpenDeal d : s.openDeals) {
            if (d.kind.equals("contraction") || d.kind.equals("cancellation")) {
                return true;
            }
        }
        return false;
    }

    /** ARR in force at {@code atMs} (the first known ARR for younger accounts); NaN when none is known. */
    static double arrAt(AccountState s, long atMs) {
        double found = Double.NaN;
        for (AccountState.ArrChange c : s.arrChanges) {
            if (c.atMs <= atMs) {
                found = c.arrAfter;
            }
        }
        if (Double.isNaN(found) && !s.arrChanges.isEmpty()) {
            found = s.arrChanges.get(0).arrAfter;
        }
        return found;
    }

    /** Net revenue retention against a year ago; NaN when unknown. */
    static double netRetention(AccountState s, long nowMs) {
        double ago = arrAt(s, nowMs - 365 * DAY);
        if (Double.isNaN(ago) || !(ago > 0.0)) {
            return Double.NaN;
        }
        return s.arr / ago;
    }

    private static double totalWeight(double[] values) {
        double total = 0.0;
        for (int i = 0; i < N; i++) {
            if (!Double.isNaN(values[i])) {
                total += Config.WEIGHTS[i];
            }
        }
        return total;
    }

    static double[] contributions(double[] values) {
        double total = totalWeight(values);
        double[] out = new double[N];
        if (total > 0.0) {
            for (int i = 0; i < N; i++) {
                if (!Double.isNaN(values[i])) {
                    out[i] = Config.WEIGHTS[i] / total * values[i];
                }
            }
        }
        return out;
    }

    /** The weighted score, or -1 while fewer than min_components components have data. */
    static int score(double[] values) {
        int have = 0;
        for (double v : values) {
            if (!Double.isNaN(v)) {
                have++;
            }
        }
        if (have < Math.max(Config.MIN_COMPONENTS, 1) || totalWeight(values) <= 0.0) {
            return -1;
        }
        double raw = 0.0;
        for (double c : contributions(values)) {
            raw += c;
        }
        return (int) Num.clamp(Num.round(raw), 0.0, 100.0);
    }

    static String band(int score) {
        return score >= Config.BAND_GREEN ? "green" : score >= Config.BAND_YELLOW ? "yellow" : "red";
    }

    // ---- evaluate (engine.rs) -------------------------------------------------------------

    /** Evaluates the account at {@code nowMs}, appends outputs, and returns its next check (0: none). */
    static long evaluate(AccountState s, long nowMs, List<Output> out) {
        Windows w = windows(s, nowMs);
        double[] values = components(s, w, nowMs);
        int sc = score(values);
        if (sc < 0) {
            return nextCheck(s, nowMs);
        }
        int today = Times.dayOf(nowMs);
        int rd = AccountState.relDay(today);
        int last = s.scoreDay.size - 1;
        if (last >= 0 && s.scoreDay.get(last) == rd) {
            s.scoreMax.set(last, Math.max(s.scoreMax.get(last), sc));
            s.scoreMin.set(last, Math.min(s.scoreMin.get(last), sc));
        } else if (last >= 0 && s.scoreDay.get(last) > rd) {
            // an evaluation in the past: the daily history stays as it is
        } else {
            s.scoreDay.add(rd);
            s.scoreMax.add(sc);
            s.scoreMin.add(sc);
        }
        int keepFrom = s.scoreDay.size;
        for (int i = 0; i < s.scoreDay.size; i++) {
            if (s.scoreDay.get(i) > rd - AccountState.SCORE_DAYS) {
                keepFrom = i;
                break;
            }
        }
        if (keepFrom > 0) {
            s.scoreDay.drain(keepFrom);
            s.scoreMax.drain(keepFrom);
            s.scoreMin.drain(keepFrom);
        }
        int maxRecent = -1;
        for (int i = 0; i < s.scoreDay.size; i++) {
            if (s.scoreDay.get(i) > rd - Config.SCORE_DROP_WINDOW_DAYS) {
                maxRecent = Math.max(maxRecent, s.scoreMax.get(i));
            }
        }
        if (maxRecent < 0) {
            maxRecent = sc;
        }
        s.currentScore = sc;

        String band = band(sc);
        boolean emit = !s.scored
                || Math.abs(sc - s.emittedScore) >= Config.MIN_SCORE_DELTA
                || !band.equals(band(s.emittedScore));
        if (emit) {
            double[] previous = s.scored ? fromStored(s.emittedComponents) : null;
            List<String[]> drivers = drivers(s, w, nowMs, previous, values);
            s.emitSeq++;
            out.add(new Output(false, s.accountId, Json.scoreChange(s.accountId, sc,
                    s.scored ? s.emittedScore : -1, band, s.scored ? band(s.emittedScore) : null,
                    values, drivers, nowMs, Hashes.changeId(s.accountId, s.emitSeq))));
            s.scored = true;
            s.emittedScore = sc;
            s.emittedComponents.clear();
            for (double v : values) {
                s.emittedComponents.add(Double.isNaN(v) ? 0 : (int) Num.round(v * 10.0) + 1);
            }
        }

        s.cooldowns.removeIf(c -> !(c.untilMs > nowMs));
        for (Rule rule : Rule.values()) {
            int openIdx = -1;
            for (int i = 0; i < s.openAlerts.size(); i++) {
                if (s.openAlerts.get(i).rule.equals(rule.id)) {
                    openIdx = i;
                    break;
                }
            }
            Alerts.Check check = Alerts.check(rule, s, w, nowMs, sc, maxRecent);
            if (check.firing && openIdx < 0) {
                boolean cooling = false;
                for (Cooldown c : s.cooldowns) {
                    if (c.rule.equals(rule.id)) {
                        cooling = true;
                        break;
                    }
                }
                if (cooling) {
                    continue;
                }
                String id = Hashes.alertId(s.accountId, rule.id, check.episodeStartMs);
                String sev = escalate(rule, w);
                OpenAlert a = new OpenAlert();
                a.rule = rule.id;
                a.episodeStartMs = check.episodeStartMs;
                a.openedMs = nowMs;
                a.severity = sev;
                a.openedScore = sc;
                s.openAlerts.add(a);
                out.add(new Output(true, s.accountId, Json.alert(id, s.accountId, rule.id, sev, "open", nowMs, Long.MIN_VALUE,
                        sc, check.evidence(), check.message())));
            } else if (check.clear && openIdx >= 0) {
                OpenAlert a = s.openAlerts.remove(openIdx);
                long days = (nowMs - a.openedMs) / DAY;
                List<String[]> evidence = new ArrayList<>(2);
                evidence.add(new String[] {"opened_score", Integer.toString(a.openedScore)});
                evidence.add(new String[] {"open_days", Long.toString(days)});
                String message = "Resolved after " + days + " days: " + rule.condition + "; health score " + sc
                        + " (was " + a.openedScore + " when opened).";
                out.add(new Output(true, s.accountId, Json.alert(Hashes.alertId(s.accountId, rule.id, a.episodeStartMs),
                        s.accountId, rule.id, a.severity, "resolved", a.openedMs, nowMs, sc, evidence, message)));
                s.cooldowns.add(new Cooldown(rule.id, nowMs + rule.cooldownDays * DAY));
            }
        }
        return nextCheck(s, nowMs);
    }

    /** A usage drop to under a fifth of the baseline is more urgent than the rule's severity. */
    private static String escalate(Rule rule, Windows w) {
        if (rule == Rule.USAGE_DROP && w.weeklyAvg28 > 0.0 && w.last7 / w.weeklyAvg28 < 0.2) {
            return "critical";
        }
        return rule.severity;
    }

    private static double[] fromStored(AccountState.IntList stored) {
        double[] p = new double[N];
        java.util.Arrays.fill(p, Double.NaN);
        for (int i = 0; i < Math.min(stored.size, N); i++) {
            int v = stored.get(i);
            if (v > 0) {
                p[i] = (v - 1) / 10.0;
            }
        }
        return p;
    }

    /** When nothing else happens, the next moment at which the account's score or alerts can change (0: none). */
    static long nextCheck(AccountState s, long nowMs) {
        long[] due = {0};
        java.util.function.LongConsumer consider = t -> {
            if (t > nowMs && (due[0] == 0 || t < due[0])) {
                due[0] = t;
            }
        };
        if (s.lastUsageMs > 0) {
            for (int days : new int[] {7, Config.GONE_DARK_DAYS, 21, Config.RECENCY_ZERO_DAYS}) {
                consider.accept(s.lastUsageMs + days * DAY);
            }
        }
        long[][] windows = {
            {s.negativeCallMs, Config.NEGATIVE_CALL_WINDOW_DAYS},
            {s.emailRiskMs, Config.EMAIL_TROUBLE_WINDOW_DAYS},
            {s.dealLossMs, Config.DEAL_LOST_WINDOW_DAYS},
        };
        for (long[] tw : windows) {
            if (tw[0] > 0) {
                consider.accept(tw[0] + tw[1] * DAY);
            }
        }
        for (OpenDeal d : s.openDeals) {
            if (d.kind.equals("renewal") && d.closeDay != 0) {
                consider.accept((d.closeDay - (long) Config.RENEWAL_WITHIN_DAYS) * DAY);
                consider.accept((d.closeDay + 1L) * DAY);
            }
        }
        return due[0];
    }

    // ---- drivers and their sentences (score.rs `drivers`, `explain`) -----------------------

    private static List<String[]> drivers(AccountState s, Windows w, long nowMs, double[] previous, double[] current) {
        double[] nowC = contributions(current);
        List<double[]> impacts = new ArrayList<>(N);
        if (previous != null) {
            double[] prevC = contributions(previous);
            for (int i = 0; i < N; i++) {
                impacts.add(new double[] {i, nowC[i] - prevC[i]});
            }
        } else {
            double total = totalWeight(current);
            for (int i = 0; i < N; i++) {
                if (!Double.isNaN(current[i])) {
                    impacts.add(new double[] {i, Config.WEIGHTS[i] / total * (current[i] - 100.0)});
                }
            }
        }
        impacts.removeIf(x -> !(Math.abs(x[1]) >= 0.05));
        impacts.sort((a, b) -> {
            int c = Double.compare(Math.abs(b[1]), Math.abs(a[1]));
            return c != 0 ? c : Double.compare(a[0], b[0]);
        });
        List<String[]> out = new ArrayList<>(3);
        for (int k = 0; k < Math.min(3, impacts.size()); k++) {
            int i = (int) impacts.get(k)[0];
            double impact = Num.round(impacts.get(k)[1] * 10.0) / 10.0;
            out.add(new String[] {COMPONENTS[i], Json.number(impact), explain(i, s, w, nowMs)});
        }
        return out;
    }

    private static String explain(int c, AccountState s, Windows w, long nowMs) {
        int today = Times.dayOf(nowMs);
        switch (c) {
            case 0:
                return "Active on " + w.activeDays28 + " of the last 28 days (target " + Config.TARGET_ACTIVE_DAYS + ").";
            case 1: {
                if (!w.hasBaseline || w.weeklyAvg28 <= 0.0) {
                    return "Not enough usage history for a trend yet.";
                }
                double change = (w.last7 / w.weeklyAvg28 - 1.0) * 100.0;
                String dir = change < 0.0 ? "down" : "up";
                return "Usage " + dir + " " + Num.fmt(Math.abs(change), 0) + "% against its 28-day average ("
                        + Num.fmt(w.last7, 0) + " events in the last 7 days vs " + Num.fmt(w.weeklyAvg28, 0) + " a week before).";
            }
            case 2:
                return AccountState.activeSince(s.userDay, AccountState.relDay(today - 29)) + " active users and "
                        + AccountState.activeSince(s.featureDay, AccountState.relDay(today - 29))
                        + " features used in the last 30 days (targets " + Config.TARGET_USERS + " and " + Config.TARGET_FEATURES + ").";
            case 3: {
                long sent = 0, replies = 0, clicks = 0, bad = 0;
                for (DayBucket b : s.days) {
                    int d = s.baseDay + b.day;
                    if (d >= today - 29 && d <= today) {
                        sent += b.emailsOut;
                        replies += b.emailReplies;
                        clicks += b.emailClicks;
                        bad += b.emailBad;
                    }
                }
                StringBuilder t = new StringBuilder();
                t.append(replies).append(" replies and ").append(clicks).append(" clicks to ").append(sent)
                        .append(" emails in the last 30 days");
                if (bad > 0) {
                    t.append("; ").append(bad).append(" bounced, unsubscribed or complained");
                }
                return t.append('.').toString();
            }
            case 4: {
                long sum = 0, n = 0, calls = 0;
                for (DayBucket b : s.days) {
                    int d = s.baseDay + b.day;
                    if (d >= today - 59 && d <= today) {
                        sum += b.sentimentMilliSum;
                        n += b.sentimentN;
                        calls += b.calls;
                    }
                }
                StringBuilder t = new StringBuilder();
                if (n > 0) {
                    t.append("Average call sentiment ").append(Num.fmtSigned((double) sum / (double) n / 1000.0, 2))
                            .append(" over ").append(calls).append(" calls in the last 60 days");
                } else {
                    t.append(calls).append(" calls in the last 60 days, no sentiment recorded");
                }
                List<String> recent = new ArrayList<>();
                for (int i = 0; i < s.riskTopics.size(); i++) {
                    if (s.riskTopicMs.get(i) >= nowMs - 30 * DAY) {
                        recent.add(s.riskTopics.get(i));
                    }
                }
                if (!recent.isEmpty()) {
                    t.append("; risk topics: ").append(String.join(", ", recent));
                }
                return t.append('.').toString();
            }
            case 5: {
                StringBuilder t = new StringBuilder("ARR ").append(Fold.money(s.arr));
                double nrr = netRetention(s, nowMs);
                if (!Double.isNaN(nrr)) {
                    t.append(", net revenue retention ").append(Num.fmt(nrr * 100.0, 0)).append("% against a year ago");
                }
                for (OpenDeal d : s.openDeals) {
                    if (d.kind.equals("contraction") || d.kind.equals("cancellation")) {
                        t.append("; open ").append(d.kind).append(" deal ").append(d.dealId);
                        break;
                    }
                }
                return t.append('.').toString();
            }
            case 6: {
                long days = Math.max(nowMs - s.lastUsageMs, 0) / DAY;
                if (days == 0) {
                    return "Product used today.";
                }
                if (days == 1) {
                    return "Last product usage 1 day ago.";
                }
                return "Last product usage " + days + " days ago.";
            }
            default:
                return "Not enough history to judge outcomes yet.";
        }
    }
}
