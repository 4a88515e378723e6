package rapport.peer;

import java.util.List;

/** One validated input event (rapport's domain/event.rs). Optional strings are null when absent. */
final class Event {
    static final int USAGE = 0, EMAIL = 1, CALL = 2, DEAL = 3;

    // Email actions.
    static final int SENT = 0, DELIVERED = 1, OPENED = 2, CLICKED = 3, REPLIED = 4, BOUNCED = 5, UNSUBSCRIBED = 6, COMPLAINED = 7;
    static final String[] ACTIONS = {"sent", "delivered", "opened", "clicked", "replied", "bounced", "unsubscribed", "complained"};
    // Call outcomes (-1: absent).
    static final int CONNECTED = 0, NO_ANSWER = 1, VOICEMAIL = 2, MEETING_HELD = 3, MEETING_CANCELLED = 4, MEETING_NO_SHOW = 5;
    static final String[] OUTCOMES = {"connected", "no_answer", "voicemail", "meeting_held", "meeting_cancelled", "meeting_no_show"};
    // Deal kinds.
    static final int NEW_BUSINESS = 0, RENEWAL = 1, EXPANSION = 2, CONTRACTION = 3, CANCELLATION = 4;
    static final String[] KINDS = {"new_business", "renewal", "expansion", "contraction", "cancellation"};
    // Directions (-1: absent).
    static final int INBOUND = 0, OUTBOUND = 1;

    String eventId;
    String accountId;
    long occurredAtMs;
    int type;

    // product_usage
    String userId;
    String feature;
    double quantity = 1.0;

    // email and call
    String contactId;
    int direction = -1;
    int action;
    String campaign;
    boolean hasDuration;
    double durationS;
    int outcome = -1;
    boolean hasSentiment;
    double sentiment;
    List<String> topics = List.of();

    // deal
    String dealId;
    int kind;
    /** The open stage's text; null when closed. */
    String openStage;
    boolean closedWon;
    boolean closedLost;
    boolean hasAmount;
    double amount;
    String currency;
    boolean hasCloseDay;
    int closeDay;
    String plan;
    String industry;

    static int indexOf(String[] names, String s) {
        for (int i = 0; i < names.length; i++) {
            if (names[i].equals(s)) {
                return i;
            }
        }
        return -1;
    }
}
