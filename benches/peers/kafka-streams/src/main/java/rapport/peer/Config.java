package rapport.peer;

import java.util.List;

/**
 * The engine settings: rapport's defaults from config/default.toml ([engine], [scorecard],
 * [alerts]). The outcome component and peer-relative levels are off there (weight 0, no
 * components), so they are not implemented here.
 */
final class Config {
    private Config() {}

    // [engine]
    static final long ALLOWED_LATENESS_MS = 3600 * 1000L;
    static final int DEDUP_RETENTION_DAYS = 7;
    static final int MAX_RECORD_BYTES = 65536;
    static final int MAX_ID_BYTES = 256;

    // [scorecard]
    static final int MIN_SCORE_DELTA = 5;
    static final int MIN_COMPONENTS = 2;
    static final int BAND_GREEN = 70;
    static final int BAND_YELLOW = 40;
    /** Weights in component order: usage_frequency, usage_trend, adoption, email_engagement, call_sentiment, commercial, recency, outcome. */
    static final double[] WEIGHTS = {0.20, 0.20, 0.15, 0.10, 0.10, 0.15, 0.10, 0.0};
    static final int TARGET_ACTIVE_DAYS = 20;
    static final int TARGET_USERS = 8;
    static final int TARGET_FEATURES = 6;
    static final double TARGET_ENGAGEMENT_RATE = 0.35;
    static final int RECENCY_FULL_DAYS = 2;
    static final int RECENCY_ZERO_DAYS = 28;

    // [alerts]
    static final int MIN_ACCOUNT_AGE_DAYS = 14;
    static final double USAGE_DROP_RATIO = 0.5;
    static final double USAGE_RESOLVE_RATIO = 0.75;
    static final double USAGE_MIN_WEEKLY_BASELINE = 10.0;
    static final int GONE_DARK_DAYS = 14;
    static final double NEGATIVE_CALL_SENTIMENT_AT_MOST = -0.5;
    static final List<String> RISK_TOPICS = List.of("cancel", "cancellation", "competitor", "pricing", "churn", "downgrade");
    static final int NEGATIVE_CALL_WINDOW_DAYS = 30;
    static final int EMAIL_TROUBLE_WINDOW_DAYS = 30;
    static final int RENEWAL_WITHIN_DAYS = 90;
    static final int RENEWAL_SCORE_BELOW = 50;
    static final int DEAL_LOST_WINDOW_DAYS = 60;
    static final int SCORE_DROP_POINTS = 20;
    static final int SCORE_DROP_WINDOW_DAYS = 30;
    static final int SCORE_DROP_RESOLVE_POINTS = 10;

    /** The rules, in rapport's evaluation order, with their severity and cooldown (all enabled by default). */
    enum Rule {
        USAGE_DROP("usage_drop", "high", 7, "product usage is back near its 28-day average"),
        GONE_DARK("gone_dark", "high", 7, "product usage has resumed"),
        NEGATIVE_CALL("negative_call", "medium", 7, "no negative call within the rule's window"),
        EMAIL_TROUBLE("email_trouble", "medium", 7, "no bounce, unsubscribe or complaint within the rule's window"),
        RENEWAL_AT_RISK("renewal_at_risk", "critical", 7, "the renewal is no longer at risk (score recovered, or the renewal closed)"),
        DEAL_LOST("deal_lost", "critical", 7, "the lost deal is past the rule's window"),
        SCORE_DROP("score_drop", "high", 7, "the health score has recovered");

        final String id;
        final String severity;
        final int cooldownDays;
        final String condition;

        Rule(String id, String severity, int cooldownDays, String condition) {
            this.id = id;
            this.severity = severity;
            this.cooldownDays = cooldownDays;
            this.condition = condition;
        }
    }
}
