//! The JSON form of input events: decoding (borrowing from the input, no `serde_json::Value`) and
//! the contract's JSON shape out, for producers, the demo and round-trip tests.
//!
//! The record is deserialized by a hand-written map visitor rather than `#[derive(Deserialize)]`
//! so that it knows which key it is reading when serde_json fails: the rejection can then name the
//! field (`quantity`) instead of only a line and column.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;

use super::{
    DecodeLimits, Format, Raw, Reason, Rejection, check_record, lowercase_owned, time, validate,
};
use crate::domain::event::{DealStage, Event, EventBody};

/// Decodes one JSON object into a validated event.
pub fn decode_json(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    check_record(bytes, limits)?;
    decode_utf8(bytes, limits)
}

/// [`decode_json`] after the size and emptiness checks.
pub(super) fn decode_utf8(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    // Checking UTF-8 once up front lets serde_json's `from_str` path skip its per-string check,
    // so this costs nothing overall and gives `invalid_utf8` its own reason.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            Reason::InvalidUtf8,
            format!(
                "The record is not valid UTF-8 (bad byte at offset {}); JSON records must be UTF-8 encoded.",
                e.valid_up_to()
            ),
        )
    })?;
    let mut raw = Raw::new(Format::Json);
    parse(text, &mut raw)?;
    validate(&mut raw, limits)
}

/// The key being read when parsing stopped, for naming it in the rejection.
enum At<'de> {
    Known(&'static str),
    Unknown(Cow<'de, str>),
}

impl At<'_> {
    fn name(&self) -> &str {
        match self {
            At::Known(s) => s,
            At::Unknown(s) => s,
        }
    }
}

fn parse<'de>(text: &'de str, raw: &mut Raw<'de>) -> Result<(), Rejection> {
    let mut at = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_map(RawVisitor { raw, at: &mut at })
        .and_then(|()| de.end());
    parsed.map_err(|e| classify(&e, text, at.as_ref()))
}

/// Turns a serde_json error into a rejection, keeping serde_json's message (with its line and
/// column) inside the sentence.
fn classify(e: &serde_json::Error, text: &str, at: Option<&At<'_>>) -> Rejection {
    let subject = match at {
        Some(at) => format!("Field `{}`", at.name()),
        None => "The record".to_owned(),
    };
    match e.classify() {
        Category::Eof => Rejection::new(
            Reason::Truncated,
            format!(
                "The record ends before its JSON is complete ({e}); it looks cut off, so send the whole object."
            ),
        ),
        Category::Data => {
            let fix = if at.is_some() {
                "send the type the contract gives for it"
            } else {
                "send one JSON object per record"
            };
            Rejection::new(
                Reason::WrongType,
                format!("{subject} has the wrong JSON type ({e}); {fix}."),
            )
        }
        Category::Syntax | Category::Io => {
            let msg = e.to_string();
            if msg.starts_with("recursion limit exceeded") {
                Rejection::new(
                    Reason::TooDeep,
                    format!(
                        "{subject} nests arrays or objects too deeply ({e}); flatten it to fewer than 128 levels."
                    ),
                )
            } else if msg.starts_with("number out of range") {
                Rejection::new(
                    Reason::NonFinite,
                    format!(
                        "{subject} holds a number too large for a 64-bit float ({e}); send a finite number."
                    ),
                )
            } else if let Some(lit) = non_finite_literal(text, e.line(), e.column()) {
                Rejection::new(
                    Reason::NonFinite,
                    format!(
                        "{subject} is {lit}, which is neither valid JSON nor a finite number ({e}); send a finite number or leave the field out."
                    ),
                )
            } else {
                Rejection::new(
                    Reason::NotJson,
                    format!("The record is not valid JSON ({e}); fix its syntax."),
                )
            }
        }
    }
}

/// JavaScript and Python write non-finite numbers as these bare words, which JSON does not have.
/// serde_json stops with a syntax error at (or one byte after) their start; look there.
fn non_finite_literal(text: &str, line: usize, column: usize) -> Option<&'static str> {
    const LITERALS: [&str; 6] = ["-Infinity", "+Infinity", "Infinity", "-NaN", "+NaN", "NaN"];
    let bytes = text.as_bytes();
    let mut line_start = 0;
    for _ in 1..line {
        line_start += memchr::memchr(b'\n', &bytes[line_start..])? + 1;
    }
    let pos = (line_start + column).min(bytes.len());
    (pos.saturating_sub(2)..=pos).find_map(|i| {
        LITERALS
            .iter()
            .find(|lit| bytes[i..].starts_with(lit.as_bytes()))
            .copied()
    })
}

/// The contract's known keys.
#[derive(Clone, Copy)]
enum Key {
    EventId,
    AccountId,
    OccurredAt,
    Type,
    UserId,
    Feature,
    Quantity,
    ContactId,
    Direction,
    Action,
    Campaign,
    DurationS,
    Outcome,
    Sentiment,
    Topics,
    DealId,
    Kind,
    Stage,
    Amount,
    Currency,
    CloseDate,
    Plan,
    Industry,
}

impl Key {
    fn parse(s: &str) -> Option<Key> {
        Some(match s {
            "event_id" => Key::EventId,
            "account_id" => Key::AccountId,
            "occurred_at" => Key::OccurredAt,
            "type" => Key::Type,
            "user_id" => Key::UserId,
            "feature" => Key::Feature,
            "quantity" => Key::Quantity,
            "contact_id" => Key::ContactId,
            "direction" => Key::Direction,
            "action" => Key::Action,
            "campaign" => Key::Campaign,
            "duration_s" => Key::DurationS,
            "outcome" => Key::Outcome,
            "sentiment" => Key::Sentiment,
            "topics" => Key::Topics,
            "deal_id" => Key::DealId,
            "kind" => Key::Kind,
            "stage" => Key::Stage,
            "amount" => Key::Amount,
            "currency" => Key::Currency,
            "close_date" => Key::CloseDate,
            "plan" => Key::Plan,
            "industry" => Key::Industry,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::EventId => "event_id",
            Key::AccountId => "account_id",
            Key::OccurredAt => "occurred_at",
            Key::Type => "type",
            Key::UserId => "user_id",
            Key::Feature => "feature",
            Key::Quantity => "quantity",
            Key::ContactId => "contact_id",
            Key::Direction => "direction",
            Key::Action => "action",
            Key::Campaign => "campaign",
            Key::DurationS => "duration_s",
            Key::Outcome => "outcome",
            Key::Sentiment => "sentiment",
            Key::Topics => "topics",
            Key::DealId => "deal_id",
            Key::Kind => "kind",
            Key::Stage => "stage",
            Key::Amount => "amount",
            Key::Currency => "currency",
            Key::CloseDate => "close_date",
            Key::Plan => "plan",
            Key::Industry => "industry",
        }
    }
}

/// A map key: one of ours, or an unknown one (kept only to name it in an error).
enum MapKey<'de> {
    Known(Key),
    Unknown(Cow<'de, str>),
}

impl<'de> Deserialize<'de> for MapKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MapKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key::parse(v).map_or(MapKey::Unknown(Cow::Borrowed(v)), MapKey::Known))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                // Only keys with escapes come here; an unknown one is copied, a known one is not.
                Ok(Key::parse(v)
                    .map_or_else(|| MapKey::Unknown(Cow::Owned(v.to_owned())), MapKey::Known))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The whole record: a map visitor that fills a [`Raw`] and records the key it is on.
struct RawVisitor<'c, 'de> {
    raw: &'c mut Raw<'de>,
    at: &'c mut Option<At<'de>>,
}

impl<'de> Visitor<'de> for RawVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object holding one event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let raw = self.raw;
        loop {
            *self.at = None;
            let key = match map.next_key::<MapKey<'de>>()? {
                Some(MapKey::Known(k)) => k,
                Some(MapKey::Unknown(name)) => {
                    *self.at = Some(At::Unknown(name));
                    // Unknown fields are ignored, but still parsed as JSON values (not skipped
                    // with `IgnoredAny`, which has no depth limit) so that the recursion limit
                    // applies to them too.
                    map.next_value::<Skip>()?;
                    continue;
                }
                None => break,
            };
            *self.at = Some(At::Known(key.name()));
            // Duplicate keys: the last one wins, as with serde_json::Value and JavaScript.
            match key {
                Key::EventId => raw.event_id = map.next_value::<Str>()?.0,
                Key::AccountId => raw.account_id = map.next_value::<Str>()?.0,
                Key::OccurredAt => raw.occurred_at = map.next_value::<Str>()?.0,
                Key::Type => raw.type_ = map.next_value::<Str>()?.0,
                Key::UserId => raw.user_id = map.next_value::<Str>()?.0,
                Key::Feature => raw.feature = map.next_value::<Str>()?.0,
                Key::Quantity => raw.quantity = map.next_value::<Num>()?.0,
                Key::ContactId => raw.contact_id = map.next_value::<Str>()?.0,
                Key::Direction => raw.direction = map.next_value::<Str>()?.0,
                Key::Action => raw.action = map.next_value::<Str>()?.0,
                Key::Campaign => raw.campaign = map.next_value::<Str>()?.0,
                Key::DurationS => raw.duration_s = map.next_value::<Num>()?.0,
                Key::Outcome => raw.outcome = map.next_value::<Str>()?.0,
                Key::Sentiment => raw.sentiment = map.next_value::<Num>()?.0,
                Key::Topics => raw.topics = map.next_value::<Topics>()?.0,
                Key::DealId => raw.deal_id = map.next_value::<Str>()?.0,
                Key::Kind => raw.kind = map.next_value::<Str>()?.0,
                Key::Stage => raw.stage = map.next_value::<Str>()?.0,
                Key::Amount => raw.amount = map.next_value::<Num>()?.0,
                Key::Currency => raw.currency = map.next_value::<Str>()?.0,
                Key::CloseDate => raw.close_date = map.next_value::<Str>()?.0,
                Key::Plan => raw.plan = map.next_value::<Str>()?.0,
                Key::Industry => raw.industry = map.next_value::<Str>()?.0,
            }
        }
        Ok(())
    }
}

/// An optional string, borrowed from the input unless it has escapes. (`Cow<str>`'s own
/// `Deserialize` always copies.)
struct Str<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Str(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(V)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v))))
            }
        }
        d.deserialize_option(V)
    }
}

/// An optional number.
struct Num(Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Num(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Num(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_f64(V)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Num(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Num(Some(v as f64)))
            }
        }
        d.deserialize_option(V)
    }
}

/// An optional array of topic labels, lower-cased straight into the event's `String`s; null and
/// empty labels are dropped.
struct Topics(Vec<String>);

impl<'de> Deserialize<'de> for Topics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Topics;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Topics(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Topics(Vec::new()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(V)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut topics = Vec::new();
                while let Some(Str(s)) = seq.next_element::<Str<'de>>()? {
                    if let Some(s) = s.filter(|s| !s.is_empty()) {
                        topics.push(lowercase_owned(s));
                    }
                }
                Ok(Topics(topics))
            }
        }
        d.deserialize_option(V)
    }
}

/// Any JSON value, parsed and dropped. Parsing it through `deserialize_any` (rather than
/// `IgnoredAny`, which serde_json skips iteratively without a depth limit) keeps serde_json's
/// recursion limit of 128 levels in force for unknown fields as well.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
                Skip::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// Writes `ev` in the contract's JSON shape: one object, no trailing newline, absent optional
/// fields left out. The output decodes back to `ev` with [`decode_json`].
pub fn encode_event(ev: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"event_id\":");
    put_str(out, &ev.event_id);
    field_str(out, "account_id", &ev.account_id);
    field_str(
        out,
        "occurred_at",
        &time::format_rfc3339_ms(ev.occurred_at_ms),
    );
    field_str(out, "type", ev.body.type_name());
    match &ev.body {
        EventBody::ProductUsage(u) => {
            opt_str(out, "user_id", u.user_id.as_deref());
            opt_str(out, "feature", u.feature.as_deref());
            field_num(out, "quantity", u.quantity);
        }
        EventBody::Email(e) => {
            opt_str(out, "contact_id", e.contact_id.as_deref());
            opt_str(out, "direction", e.direction.map(|d| d.as_str()));
            field_str(out, "action", e.action.as_str());
            opt_str(out, "campaign", e.campaign.as_deref());
        }
        EventBody::Call(c) => {
            opt_str(out, "contact_id", c.contact_id.as_deref());
            opt_str(out, "direction", c.direction.map(|d| d.as_str()));
            opt_num(out, "duration_s", c.duration_s);
            opt_str(out, "outcome", c.outcome.map(|o| o.as_str()));
            opt_num(out, "sentiment", c.sentiment);
            if !c.topics.is_empty() {
                out.extend_from_slice(b",\"topics\":[");
                for (i, t) in c.topics.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    put_str(out, t);
                }
                out.push(b']');
            }
        }
        EventBody::Deal(d) => {
            field_str(out, "deal_id", &d.deal_id);
            field_str(out, "kind", d.kind.as_str());
            let stage = match &d.stage {
                DealStage::Open(s) => s.as_str(),
                DealStage::ClosedWon => "closed_won",
                DealStage::ClosedLost => "closed_lost",
            };
            field_str(out, "stage", stage);
            opt_num(out, "amount", d.amount);
            opt_str(out, "currency", d.currency.as_deref());
            if let Some(day) = d.close_day {
                field_str(out, "close_date", &time::format_day(day));
            }
            opt_str(out, "plan", d.plan.as_deref());
            opt_str(out, "industry", d.industry.as_deref());
        }
    }
    out.push(b'}');
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // serde_json does the escaping; writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing JSON into a Vec cannot fail");
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn field_str(out: &mut Vec<u8>, k: &str, v: &str) {
    key(out, k);
    put_str(out, v);
}

fn opt_str(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        field_str(out, k, v);
    }
}

fn field_num(out: &mut Vec<u8>, k: &str, v: f64) {
    key(out, k);
    // Whole numbers are written as integers, as in the contract's examples (`"quantity":1`);
    // below 2^53 that is exact. Events are validated, so `v` is finite.
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        write!(out, "{}", v as i64).expect("writing into a Vec cannot fail");
    } else {
        serde_json::to_writer(&mut *out, &v).expect("writing JSON into a Vec cannot fail");
    }
}

fn opt_num(out: &mut Vec<u8>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        field_num(out, k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::*;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    const T: &str = r#""event_id":"e-1","account_id":"acme","occurred_at":"2026-11-20T10:15:00Z""#;

    fn ok(s: &str) -> Event {
        decode_json(s.as_bytes(), &limits()).unwrap_or_else(|r| panic!("{s}: {r}"))
    }

    #[test]
    fn numbers_parse_to_the_nearest_double_and_round_trip() {
        // The shortest form of 0x1.700b9p-6; parsed one unit off without float_roundtrip.
        let text = "0.022463694214820862";
        let ev = ok(&format!(r#"{{{T},"type":"product_usage","quantity":{text}}}"#));
        let EventBody::ProductUsage(u) = &ev.body else { panic!("{ev:?}") };
        assert_eq!(u.quantity, text.parse::<f64>().unwrap());
        let mut out = Vec::new();
        encode_event(&ev, &mut out);
        assert_eq!(decode_json(&out, &limits()).unwrap(), ev);
    }

    fn err(s: &str) -> Rejection {
        decode_json(s.as_bytes(), &limits()).expect_err(s)
    }

    fn with(fields: &str) -> String {
        format!("{{{T},{fields}}}")
    }

    #[test]
    fn decodes_the_contract_examples() {
        let u = ok(
            r#"{"event_id":"u-1","account_id":"acme","occurred_at":"2026-11-20T10:15:00Z","type":"product_usage",
 "user_id":"u42","feature":"reports.export","quantity":1}"#,
        );
        assert_eq!(
            u,
            Event {
                event_id: "u-1".into(),
                account_id: "acme".into(),
                occurred_at_ms: 1_795_169_700_000,
                body: EventBody::ProductUsage(ProductUsage {
                    user_id: Some("u42".into()),
                    feature: Some("reports.export".into()),
                    quantity: 1.0,
                }),
            }
        );
        let e = ok(&with(
            r#""type":"email","contact_id":"c1","direction":"outbound","action":"replied","campaign":"qbr-invite""#,
        ));
        assert_eq!(
            e.body,
            EventBody::Email(Email {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Outbound),
                action: EmailAction::Replied,
                campaign: Some("qbr-invite".into()),
            })
        );
        let c = ok(&with(
            r#""type":"call","contact_id":"c1","direction":"inbound","duration_s":1260,"outcome":"connected","sentiment":-0.6,"topics":["Pricing","COMPETITOR","Ünïcode"]"#,
        ));
        assert_eq!(
            c.body,
            EventBody::Call(Call {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Inbound),
                duration_s: Some(1260.0),
                outcome: Some(CallOutcome::Connected),
                sentiment: Some(-0.6),
                topics: vec!["pricing".into(), "competitor".into(), "ünïcode".into()],
            })
        );
        let d = ok(&with(
            r#""type":"deal","deal_id":"opp-1","kind":"renewal","stage":"closed_won","amount":120000.0,"currency":"USD","close_date":"2027-01-31""#,
        ));
        assert_eq!(
            d.body,
            EventBody::Deal(Deal {
                deal_id: "opp-1".into(),
                kind: DealKind::Renewal,
                stage: DealStage::ClosedWon,
                amount: Some(120_000.0),
                currency: Some("USD".into()),
                close_day: Some(20_849),
                plan: None,
                industry: None,
            })
        );
    }

    #[test]
    fn defaults_nulls_unknown_fields_and_escapes() {
        let u = ok(&with(
            r#""type":"product_usage","user_id":null,"quantity":null,"extra":{"a":[1,2.5,"x",null,true]},"also":-3e5"#,
        ));
        assert_eq!(
            u.body,
            EventBody::ProductUsage(ProductUsage {
                user_id: None,
                feature: None,
                quantity: 1.0
            })
        );
        // Field order does not matter; escaped keys and values are understood.
        let e = ok(
            r#"{"type":"em\u0061il","\u0061ction":"opened","event_id":"e\"1","account_id":"a","occurred_at":"2026-11-20T10:15:00+01:00"}"#,
        );
        assert_eq!(e.event_id, "e\"1");
        assert_eq!(e.occurred_at_ms, 1_795_166_100_000);
        // Empty optional strings count as absent.
        let c = ok(&with(
            r#""type":"call","direction":"","outcome":"","topics":["", null, "A"]"#,
        ));
        let EventBody::Call(c) = c.body else { panic!() };
        assert_eq!(
            (c.direction, c.outcome, c.topics),
            (None, None, vec!["a".to_owned()])
        );
        // Open deal stages are kept as text.
        let d = ok(&with(
            r#""type":"deal","deal_id":"o","kind":"expansion","stage":"Negotiation","close_date":"2027-01-31T10:00:00Z""#,
        ));
        let EventBody::Deal(d) = d.body else { panic!() };
        assert_eq!(d.stage, DealStage::Open("Negotiation".into()));
        assert_eq!(d.close_day, Some(20_849));
        // Duplicate keys: the last wins.
        assert_eq!(
            ok(&with(r#""type":"email","action":"sent","action":"opened""#)).body,
            ok(&with(r#""type":"email","action":"opened""#)).body
        );
    }

    #[test]
    fn missing_fields() {
        for (s, field) in [
            (r#"{"account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"email","action":"sent"}"#.to_owned(), "event_id"),
            (r#"{"event_id":"","account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"email","action":"sent"}"#.to_owned(), "event_id"),
            (r#"{"event_id":"e","account_id":null,"occurred_at":"2026-11-20T10:15:00Z","type":"email","action":"sent"}"#.to_owned(), "account_id"),
            (r#"{"event_id":"e","account_id":"a","type":"email","action":"sent"}"#.to_owned(), "occurred_at"),
            (format!("{{{T}}}"), "type"),
            (with(r#""type":"email""#), "action"),
            (with(r#""type":"deal","kind":"renewal","stage":"open""#), "deal_id"),
            (with(r#""type":"deal","deal_id":"d","stage":"open""#), "kind"),
            (with(r#""type":"deal","deal_id":"d","kind":"renewal","stage":"""#), "stage"),
        ] {
            let r = err(&s);
            assert_eq!(r.reason, Reason::MissingField, "{s}: {r}");
            assert!(r.detail.contains(&format!("`{field}`")), "{s}: {r}");
        }
    }

    #[test]
    fn bad_values() {
        let cases = [
            (with(r#""type":"sms""#), Reason::UnknownType, "`type`"),
            (
                with(r#""type":"email","action":"read""#),
                Reason::UnknownEnum,
                "`action`",
            ),
            (
                with(r#""type":"email","action":"sent","direction":"sideways""#),
                Reason::UnknownEnum,
                "`direction`",
            ),
            (
                with(r#""type":"call","outcome":"hung_up""#),
                Reason::UnknownEnum,
                "`outcome`",
            ),
            (
                with(r#""type":"deal","deal_id":"d","kind":"upsell","stage":"x""#),
                Reason::UnknownEnum,
                "`kind`",
            ),
            (
                with(r#""type":"product_usage","quantity":-1"#),
                Reason::OutOfRange,
                "`quantity`",
            ),
            (
                with(r#""type":"call","duration_s":-0.5"#),
                Reason::OutOfRange,
                "`duration_s`",
            ),
            (
                with(r#""type":"call","sentiment":1.01"#),
                Reason::OutOfRange,
                "`sentiment`",
            ),
            (
                with(r#""type":"call","sentiment":-2"#),
                Reason::OutOfRange,
                "`sentiment`",
            ),
            (
                with(r#""type":"deal","deal_id":"d","kind":"renewal","stage":"x","amount":-5"#),
                Reason::OutOfRange,
                "`amount`",
            ),
            (
                with(
                    r#""type":"deal","deal_id":"d","kind":"renewal","stage":"x","close_date":"next week""#,
                ),
                Reason::BadTimestamp,
                "`close_date`",
            ),
            (
                with(
                    r#""type":"deal","deal_id":"d","kind":"renewal","stage":"x","close_date":"2027-02-30""#,
                ),
                Reason::BadTimestamp,
                "`close_date`",
            ),
        ];
        for (s, reason, field) in cases {
            let r = err(&s);
            assert_eq!(r.reason, reason, "{s}: {r}");
            assert!(r.detail.contains(field), "{s}: {r}");
        }
        let r = err(
            r#"{"event_id":"e","account_id":"a","occurred_at":"yesterday","type":"email","action":"sent"}"#,
        );
        assert_eq!(r.reason, Reason::BadTimestamp);
        assert_eq!(
            r.detail,
            "Field `occurred_at` is \"yesterday\", which is not an RFC 3339 time such as 2026-11-20T10:15:00Z."
        );
    }

    #[test]
    fn ids_are_bounded() {
        let long = "x".repeat(257);
        for field in ["event_id", "account_id", "user_id", "contact_id", "deal_id"] {
            let mut v = serde_json::json!({
                "event_id": "e", "account_id": "a", "occurred_at": "2026-11-20T10:15:00Z",
                "type": match field { "user_id" => "product_usage", "contact_id" => "call", "deal_id" => "deal", _ => "email" },
                "action": "sent", "kind": "renewal", "stage": "s", "deal_id": "d",
            });
            v[field] = serde_json::Value::from(long.as_str());
            let r = err(&v.to_string());
            assert_eq!(r.reason, Reason::FieldTooLong, "{field}: {r}");
            assert!(r.detail.contains(field), "{r}");
        }
        // Exactly at the limit is fine.
        ok(&format!(
            r#"{{"event_id":"{}","account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"email","action":"sent"}}"#,
            "x".repeat(256)
        ));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let r = err(&with(r#""type":"product_usage","quantity":"three""#));
        assert_eq!(r.reason, Reason::WrongType);
        assert!(r.detail.starts_with("Field `quantity` has the wrong JSON type (invalid type: string \"three\", expected a number at line 1"), "{r}");
        for (s, field) in [
            (with(r#""type":"call","topics":"pricing""#), "topics"),
            (with(r#""type":"call","topics":[1]"#), "topics"),
            (r#"{"event_id":12}"#.to_owned(), "event_id"),
            (r#"{"type":{"name":"email"}}"#.to_owned(), "type"),
            (r#"{"sentiment":true}"#.to_owned(), "sentiment"),
        ] {
            let r = err(&s);
            assert_eq!(r.reason, Reason::WrongType, "{s}: {r}");
            assert!(r.detail.contains(&format!("`{field}`")), "{s}: {r}");
        }
        for s in ["[1,2]", "\"event\"", "42", "null"] {
            let r = err(s);
            assert_eq!(r.reason, Reason::WrongType, "{s}: {r}");
            assert!(
                r.detail.starts_with("The record has the wrong JSON type"),
                "{r}"
            );
        }
    }

    #[test]
    fn syntax_problems() {
        for s in [
            "{\"event_id\" \"e\"}",
            "{\"a\":1,}",
            "{'a':1}",
            "{\"a\":1} {\"b\":2}",
            "{\"a\":tru}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":01}",
        ] {
            let r = err(s);
            assert_eq!(r.reason, Reason::NotJson, "{s}: {r}");
            assert!(r.detail.contains("line 1 column"), "{r}");
        }
        for s in [
            "{",
            "{\"event_id\":\"e",
            "{\"event_id\":",
            "{\"a\":[1,2",
            &with(r#""type":"email""#)[..40],
        ] {
            assert_eq!(err(s).reason, Reason::Truncated, "{s}");
        }
        assert_eq!(err("").reason, Reason::Empty);
        assert_eq!(err(" \n ").reason, Reason::Empty);
        let r = decode_json(b"{\"event_id\":\"caf\xC3\"}", &limits()).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidUtf8);
        assert!(r.detail.contains("offset 16"), "{r}");
    }

    #[test]
    fn non_finite_numbers() {
        for lit in ["NaN", "Infinity", "-Infinity", "+Infinity"] {
            for field in ["quantity", "duration_s", "sentiment", "amount"] {
                let s = with(&format!(r#""type":"call","{field}": {lit}"#));
                let r = err(&s);
                assert_eq!(r.reason, Reason::NonFinite, "{s}: {r}");
                assert!(
                    r.detail.starts_with(&format!("Field `{field}` is {lit},")),
                    "{r}"
                );
            }
        }
        // On a later line of a pretty-printed record too.
        let r = err("{\n  \"event_id\": \"e\",\n  \"sentiment\": NaN\n}");
        assert_eq!(r.reason, Reason::NonFinite, "{r}");
        for num in ["1e999", "-1e999", "123456789e400"] {
            let r = err(&with(&format!(r#""type":"deal","amount":{num}"#)));
            assert_eq!(r.reason, Reason::NonFinite, "{num}: {r}");
            assert!(r.detail.starts_with("Field `amount`"), "{r}");
        }
        // Large but finite is fine.
        let d = ok(&with(
            r#""type":"deal","deal_id":"d","kind":"renewal","stage":"s","amount":1e300"#,
        ));
        let EventBody::Deal(d) = d.body else { panic!() };
        assert_eq!(d.amount, Some(1e300));
    }

    #[test]
    fn nesting_is_bounded_without_overflowing_the_stack() {
        // 10,000 nested arrays in an unknown field: serde_json's recursion limit (128) applies.
        let deep = format!(
            "{{{T},\"type\":\"email\",\"action\":\"sent\",\"junk\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let r = err(&deep);
        assert_eq!(r.reason, Reason::TooDeep, "{r}");
        assert!(r.detail.starts_with("Field `junk` nests"), "{r}");
        let deep_objects = format!(
            "{{{T},\"junk\":{}1{}}}",
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        );
        assert_eq!(err(&deep_objects).reason, Reason::TooDeep);
        // Unterminated deep nesting is still too deep, not truncated: the limit trips first.
        assert_eq!(
            err(&format!("{{\"x\":{}", "[".repeat(10_000))).reason,
            Reason::TooDeep
        );
        // Moderate nesting in unknown fields is fine.
        ok(&format!(
            "{{{T},\"type\":\"email\",\"action\":\"sent\",\"junk\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        ));
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let l = DecodeLimits {
            max_record_bytes: 16,
            max_id_bytes: 256,
        };
        assert_eq!(
            decode_json(b"{\"event_id\":\"e\",   ", &l)
                .unwrap_err()
                .reason,
            Reason::TooLarge
        );
    }

    fn samples() -> Vec<Event> {
        let base = |body| Event {
            event_id: "e-1".into(),
            account_id: "acme \"corp\"".into(),
            occurred_at_ms: 1_795_169_700_123,
            body,
        };
        vec![
            base(EventBody::ProductUsage(ProductUsage {
                user_id: Some("u42".into()),
                feature: Some("reports.export".into()),
                quantity: 2.5,
            })),
            base(EventBody::ProductUsage(ProductUsage {
                user_id: None,
                feature: None,
                quantity: 1.0,
            })),
            base(EventBody::Email(Email {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Outbound),
                action: EmailAction::Unsubscribed,
                campaign: Some("qbr\ninvite".into()),
            })),
            base(EventBody::Email(Email {
                contact_id: None,
                direction: None,
                action: EmailAction::Complained,
                campaign: None,
            })),
            base(EventBody::Call(Call {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Inbound),
                duration_s: Some(1260.0),
                outcome: Some(CallOutcome::MeetingNoShow),
                sentiment: Some(-0.6),
                topics: vec!["pricing".into(), "competitor".into()],
            })),
            base(EventBody::Call(Call {
                contact_id: None,
                direction: None,
                duration_s: None,
                outcome: None,
                sentiment: None,
                topics: vec![],
            })),
            base(EventBody::Deal(Deal {
                deal_id: "opp-1".into(),
                kind: DealKind::Renewal,
                stage: DealStage::ClosedWon,
                amount: Some(120_000.0),
                currency: Some("USD".into()),
                close_day: Some(20_849),
                plan: None,
                industry: None,
            })),
            base(EventBody::Deal(Deal {
                deal_id: "opp-2".into(),
                kind: DealKind::NewBusiness,
                stage: DealStage::Open("discovery".into()),
                amount: None,
                currency: None,
                close_day: None,
                plan: None,
                industry: None,
            })),
            base(EventBody::Deal(Deal {
                deal_id: "opp-3".into(),
                kind: DealKind::Cancellation,
                stage: DealStage::ClosedLost,
                amount: Some(0.1),
                currency: None,
                close_day: Some(-3),
                plan: None,
                industry: None,
            })),
        ]
    }

    #[test]
    fn round_trips_all_event_types() {
        for ev in samples() {
            let mut out = Vec::new();
            encode_event(&ev, &mut out);
            assert!(!out.ends_with(b"\n"));
            serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");
            assert_eq!(
                decode_json(&out, &limits()).unwrap(),
                ev,
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn encodes_the_contract_shape() {
        let mut out = Vec::new();
        encode_event(&samples()[0], &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"event_id":"e-1","account_id":"acme \"corp\"","occurred_at":"2026-11-20T10:15:00.123Z","type":"product_usage","user_id":"u42","feature":"reports.export","quantity":2.5}"#
        );
        out.clear();
        encode_event(&samples()[6], &mut out);
        assert!(std::str::from_utf8(&out).unwrap().ends_with(
            r#""type":"deal","deal_id":"opp-1","kind":"renewal","stage":"closed_won","amount":120000,"currency":"USD","close_date":"2027-01-31"}"#
        ));
    }
}
