package rapport.peer;

import java.util.ArrayList;
import java.util.List;
import rapport.peer.AccountState.OpenDeal;
import rapport.peer.Config.Rule;

/** The churn alert rules (rapport's domain/alert.rs): each says firing, clear, or hold (leave the alert as it is). */
final class Alerts {
    private static final long DAY = Times.DAY_MS;

    private Alerts() {}

    /** A rule's verdict; evidence and message are built only for an alert that opens. */
    abstract static class Check {
        boolean firing, clear;
        long episodeStartMs;

        List<String[]> evidence() {
            return List.of();
        }

        String message() {
            return "";
        }
    }

    private static final class Simple extends Check {
        Simple(boolean clear) {
            this.clear = clear;
        }
    }

    private static final Check CLEAR = new Simple(true);
    private static final Check HOLD = new Simple(false);

    private static List<String[]> pairs(String... kv) {
        List<String[]> out = new ArrayList<>(kv.length / 2);
        for (int i = 0; i < kv.length; i += 2) {
            out.add(new String[] {kv[i], kv[i + 1]});
        }
        return out;
    }

    static Check check(Rule rule, AccountState s, Engine.Windows w, long nowMs, int score, int maxRecent) {
        boolean oldEnough = nowMs - s.firstSeenMs >= Config.MIN_ACCOUNT_AGE_DAYS * DAY;
        switch (rule) {
            case USAGE_DROP: {
                if (!w.hasBaseline) {
                    return CLEAR;
                }
                if (w.weeklyAvg28 < Config.USAGE_MIN_WEEKLY_BASELINE) {
                    return w.last7 >= Config.USAGE_MIN_WEEKLY_BASELINE * Config.USAGE_RESOLVE_RATIO ? CLEAR : HOLD;
                }
                double ratio = w.last7 / w.weeklyAvg28;
                if (ratio < Config.USAGE_DROP_RATIO) {
                    double pct = (1.0 - ratio) * 100.0;
                    Check c = new Check() {
                        @Override
                        List<String[]> evidence() {
                            return pairs("usage_last_7d", Num.fmt(w.last7, 0), "weekly_average_28d", Num.fmt(w.weeklyAvg28, 1),
                                    "change_pct", Num.fmt(-pct, 0));
                        }

                        @Override
                        String message() {
                            return "Product usage down " + Num.fmt(pct, 0) + "% against its 28-day average: " + Num.fmt(w.last7, 0)
                                    + " events in the last 7 days vs " + Num.fmt(w.weeklyAvg28, 0) + " a week before.";
                        }
                    };
                    c.firing = true;
                    c.episodeStartMs = nowMs;
                    return c;
                }
                return ratio >= Config.USAGE_RESOLVE_RATIO ? CLEAR : HOLD;
            }
            case GONE_DARK: {
                long days = Config.GONE_DARK_DAYS;
                if (s.lastUsageMs == 0 || !oldEnough) {
                    return CLEAR;
                }
                long idle = nowMs - s.lastUsageMs;
                if (idle >= days * DAY) {
                    long lastUsage = s.lastUsageMs;
                    Check c = new Check() {
                        @Override
                        List<String[]> evidence() {
                            return pairs("last_usage_at", Times.formatRfc3339(lastUsage), "days_without_usage", Long.toString(idle / DAY));
                        }

                        @Override
                        String message() {
                            return "No product usage for " + (idle / DAY) + " days (since " + Times.formatDay(Times.dayOf(lastUsage)) + ").";
                        }
                    };
                    c.firing = true;
                    c.episodeStartMs = s.lastUsageMs + days * DAY;
                    return c;
                }
                return CLEAR;
            }
            case NEGATIVE_CALL:
                return window(s.negativeCallMs, s.negativeCallDetail, Config.NEGATIVE_CALL_WINDOW_DAYS, nowMs, "call");
            case EMAIL_TROUBLE:
                return window(s.emailRiskMs, s.emailRiskDetail, Config.EMAIL_TROUBLE_WINDOW_DAYS, nowMs, "email");
            case DEAL_LOST:
                return window(s.dealLossMs, s.dealLossDetail, Config.DEAL_LOST_WINDOW_DAYS, nowMs, "deal");
            case RENEWAL_AT_RISK: {
                int today = Times.dayOf(nowMs);
                OpenDeal renewal = null;
                for (OpenDeal d : s.openDeals) {
                    if (d.kind.equals("renewal") && d.closeDay >= today && d.closeDay <= today + Config.RENEWAL_WITHIN_DAYS
                            && (renewal == null || d.closeDay < renewal.closeDay)) {
                        renewal = d;
                    }
                }
                if (renewal == null) {
                    return CLEAR;
                }
                if (oldEnough && score < Config.RENEWAL_SCORE_BELOW) {
                    OpenDeal d = renewal;
                    double arr = s.arr;
                    Check c = new Check() {
                        @Override
                        List<String[]> evidence() {
                            return pairs("deal_id", d.dealId, "renewal_date", Times.formatDay(d.closeDay),
                                    "days_to_renewal", Integer.toString(d.closeDay - today), "arr", Num.fmt(arr, 0));
                        }

                        @Override
                        String message() {
                            return "Renewal " + d.dealId + " worth " + Fold.money(d.amount > 0.0 ? d.amount : arr) + " is due in "
                                    + (d.closeDay - today) + " days and the health score is " + score + ".";
                        }
                    };
                    c.firing = true;
                    c.episodeStartMs = nowMs;
                    return c;
                }
                return score < Config.RENEWAL_SCORE_BELOW + 5 ? HOLD : CLEAR;
            }
            default: { // SCORE_DROP
                if (!oldEnough) {
                    return CLEAR;
                }
                int yellow = Config.BAND_YELLOW;
                int drop = Math.max(maxRecent - score, 0);
                boolean intoRed = score < yellow && maxRecent >= yellow;
                if (drop >= Config.SCORE_DROP_POINTS || intoRed) {
                    int window = Config.SCORE_DROP_WINDOW_DAYS;
                    Check c = new Check() {
                        @Override
                        List<String[]> evidence() {
                            return pairs("score", Integer.toString(score), "highest_recent", Integer.toString(maxRecent),
                                    "window_days", Integer.toString(window));
                        }

                        @Override
                        String message() {
                            return intoRed
                                    ? "Health score fell into red: " + score + ", down from " + maxRecent + " within " + window + " days."
                                    : "Health score dropped " + drop + " points within " + window + " days: " + maxRecent + " \u2192 " + score + ".";
                        }
                    };
                    c.firing = true;
                    c.episodeStartMs = nowMs;
                    return c;
                }
                return drop < Config.SCORE_DROP_RESOLVE_POINTS && score >= yellow ? CLEAR : HOLD;
            }
        }
    }

    private static Check window(long triggerMs, String detail, int days, long nowMs, String what) {
        if (triggerMs > 0 && nowMs >= triggerMs && nowMs - triggerMs < days * DAY) {
            Check c = new Check() {
                @Override
                List<String[]> evidence() {
                    return pairs("at", Times.formatRfc3339(triggerMs), "source", what);
                }

                @Override
                String message() {
                    return detail;
                }
            };
            c.firing = true;
            c.episodeStartMs = triggerMs;
            return c;
        }
        return CLEAR;
    }
}
