//! Input events after decoding and validation: the typed form of the data contract.
//!
//! Times are UTC milliseconds since the Unix epoch; days are UTC day numbers since the epoch.
//! Everything here is already validated by `codec`, so the engine can trust it.

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day number of a millisecond timestamp.
pub fn day_of(ms: i64) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// One validated input event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub account_id: String,
    pub occurred_at_ms: i64,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    ProductUsage(ProductUsage),
    Email(Email),
    Call(Call),
    Deal(Deal),
}

impl EventBody {
    /// The contract's `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::ProductUsage(_) => "product_usage",
            EventBody::Email(_) => "email",
            EventBody::Call(_) => "call",
            EventBody::Deal(_) => "deal",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProductUsage {
    pub user_id: Option<String>,
    pub feature: Option<String>,
    /// Finite and >= 0; 1 when absent.
    pub quantity: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailAction {
    Sent,
    Delivered,
    Opened,
    Clicked,
    Replied,
    Bounced,
    Unsubscribed,
    Complained,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub contact_id: Option<String>,
    pub direction: Option<Direction>,
    /// Required in the contract.
    pub action: EmailAction,
    pub campaign: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Connected,
    NoAnswer,
    Voicemail,
    MeetingHeld,
    MeetingCancelled,
    MeetingNoShow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub contact_id: Option<String>,
    pub direction: Option<Direction>,
    /// Finite and >= 0 when present.
    pub duration_s: Option<f64>,
    pub outcome: Option<CallOutcome>,
    /// In [-1, 1] when present.
    pub sentiment: Option<f64>,
    /// Lower-cased topic labels.
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealKind {
    NewBusiness,
    Renewal,
    Expansion,
    Contraction,
    Cancellation,
}

impl DealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DealKind::NewBusiness => "new_business",
            DealKind::Renewal => "renewal",
            DealKind::Expansion => "expansion",
            DealKind::Contraction => "contraction",
            DealKind::Cancellation => "cancellation",
        }
    }
    pub fn parse(s: &str) -> Option<DealKind> {
        Some(match s {
            "new_business" => DealKind::NewBusiness,
            "renewal" => DealKind::Renewal,
            "expansion" => DealKind::Expansion,
            "contraction" => DealKind::Contraction,
            "cancellation" => DealKind::Cancellation,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DealStage {
    Open(String),
    ClosedWon,
    ClosedLost,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    pub deal_id: String,
    pub kind: DealKind,
    pub stage: DealStage,
    /// Annual value, finite and >= 0 when present.
    pub amount: Option<f64>,
    pub currency: Option<String>,
    /// UTC day number of the (expected) close date.
    pub close_day: Option<i32>,
    /// The account's plan and industry as the CRM knows them (segments for peer levels and
    /// plan-based outcome expectations); the latest event that carries one wins.
    pub plan: Option<String>,
    pub industry: Option<String>,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EmailAction {
    pub fn parse(s: &str) -> Option<EmailAction> {
        Some(match s {
            "sent" => EmailAction::Sent,
            "delivered" => EmailAction::Delivered,
            "opened" => EmailAction::Opened,
            "clicked" => EmailAction::Clicked,
            "replied" => EmailAction::Replied,
            "bounced" => EmailAction::Bounced,
            "unsubscribed" => EmailAction::Unsubscribed,
            "complained" => EmailAction::Complained,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EmailAction::Sent => "sent",
            EmailAction::Delivered => "delivered",
            EmailAction::Opened => "opened",
            EmailAction::Clicked => "clicked",
            EmailAction::Replied => "replied",
            EmailAction::Bounced => "bounced",
            EmailAction::Unsubscribed => "unsubscribed",
            EmailAction::Complained => "complained",
        }
    }
}

impl CallOutcome {
    pub fn parse(s: &str) -> Option<CallOutcome> {
        Some(match s {
            "connected" => CallOutcome::Connected,
            "no_answer" => CallOutcome::NoAnswer,
            "voicemail" => CallOutcome::Voicemail,
            "meeting_held" => CallOutcome::MeetingHeld,
            "meeting_cancelled" => CallOutcome::MeetingCancelled,
            "meeting_no_show" => CallOutcome::MeetingNoShow,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Connected => "connected",
            CallOutcome::NoAnswer => "no_answer",
            CallOutcome::Voicemail => "voicemail",
            CallOutcome::MeetingHeld => "meeting_held",
            CallOutcome::MeetingCancelled => "meeting_cancelled",
            CallOutcome::MeetingNoShow => "meeting_no_show",
        }
    }
}
