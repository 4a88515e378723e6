//! Decoding input records and encoding outputs.
//!
//! One entry point, [`decode`], takes the bytes of one input record (a Kafka message value or an
//! NDJSON line), works out its format, and returns either a validated
//! [`Event`](crate::domain::event::Event) or a [`Rejection`] that says why the record belongs in
//! the dead-letter topic. JSON and protobuf are parsed by their own modules into one borrowed,
//! unvalidated [`Raw`] form, and validated here once, so both formats obey the same rules and
//! produce the same sentences.
//!
//! Decoding is on the hot path (hundreds of thousands of records a second on one core), so the
//! JSON side borrows strings from the input and the only allocations are the `String`s the event
//! itself keeps.

pub mod json;
pub mod output;
pub mod proto;
pub mod reject;
pub mod time;

pub use reject::{Reason, Rejection};

use std::borrow::Cow;

use crate::domain::event::{
    Call, CallOutcome, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event, EventBody,
    ProductUsage,
};
use reject::quote;

/// Size limits applied to every input record.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Records longer than this are refused (`too_large`) before any parsing.
    pub max_record_bytes: usize,
    /// Ids (`event_id`, `account_id`, `user_id`, `contact_id`, `deal_id`) longer than this are
    /// refused (`field_too_long`): they become store keys and metric-free log fields.
    pub max_id_bytes: usize,
}

impl DecodeLimits {
    /// No limits: for the tools that read the project's own generated events (`produce`, the
    /// bench), where every record is known to be in bounds.
    pub const NONE: DecodeLimits = DecodeLimits {
        max_record_bytes: usize::MAX,
        max_id_bytes: usize::MAX,
    };
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_record_bytes: 65_536,
            max_id_bytes: 256,
        }
    }
}

/// Decode one input record, detecting its format per record: JSON (first non-whitespace byte '{'),
/// Confluent Schema Registry framing (magic byte 0x00 + 4-byte big-endian schema id, then for protobuf
/// the message-index list: a zigzag varint count followed by that many zigzag varints, where a single
/// 0 byte means [0]; the framed payload may be JSON or protobuf), or plain protobuf (anything else).
///
/// A leading `[` is also taken as JSON (it can never start a valid `rapport.v1.Event`: it would be
/// field 11 with the deprecated group wire type), so a JSON array is reported as `wrong_type`
/// rather than `bad_protobuf`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    check_record(bytes, limits)?;
    if bytes[0] == 0x00 {
        // A protobuf message never starts with 0x00 (field number 0 is invalid), nor does JSON.
        return decode_confluent(bytes, limits);
    }
    decode_unframed(bytes, limits)
}

/// The checks every record gets before any parsing: size first, then emptiness.
fn check_record(bytes: &[u8], limits: &DecodeLimits) -> Result<(), Rejection> {
    check_size(bytes, limits)?;
    if first_non_ws(bytes).is_none() {
        return Err(Rejection::new(
            Reason::Empty,
            "The record is empty or only whitespace; send one JSON object or one protobuf `rapport.v1.Event` per record.",
        ));
    }
    Ok(())
}

fn check_size(bytes: &[u8], limits: &DecodeLimits) -> Result<(), Rejection> {
    if bytes.len() > limits.max_record_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "The record is {} bytes, more than the {}-byte limit (`max_record_bytes`); send smaller events or raise the limit.",
                bytes.len(),
                limits.max_record_bytes
            ),
        ));
    }
    Ok(())
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// UTF-8 with no control characters other than tab, newline and carriage return.
fn looks_like_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
    })
}

fn first_non_ws(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| !is_json_ws(b))
}

/// JSON or plain protobuf, told apart by the first non-whitespace byte.
fn decode_unframed(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    let Some(start) = first_non_ws(bytes) else {
        return Err(Rejection::new(
            Reason::Empty,
            "The record's payload is only whitespace; send one JSON object or one protobuf `rapport.v1.Event`.",
        ));
    };
    if !matches!(bytes[start], b'{' | b'[') {
        return proto::decode_message(bytes, limits).map_err(|e| {
            // Text that is not protobuf either (an HTML error page, a log line, a line of an NDJSON
            // file) is a JSON problem to whoever reads the dead letters, not a protobuf one. A real
            // protobuf Event is practically never text: its `account_id` tag alone is 0x12.
            if looks_like_text(bytes) {
                Rejection::new(
                    Reason::NotJson,
                    format!(
                        "The record is text but not JSON (it starts with {} rather than `{{`); send one JSON object per record.",
                        quote(std::str::from_utf8(bytes).unwrap_or_default().trim_start())
                    ),
                )
            } else {
                e
            }
        });
    }
    if start == 0 {
        return json::decode_utf8(bytes, limits);
    }
    // Whitespace, then `{`: almost always JSON with a leading newline, but a protobuf Event whose
    // first field is a 123-byte `event_id` also starts "\n{" (tag 0x0A, length 0x7B). Try JSON,
    // and only if that fails see whether the bytes are a valid protobuf event; report the JSON
    // problem otherwise. This costs a second parse only on this rare, failing path.
    match json::decode_utf8(bytes, limits) {
        Ok(ev) => Ok(ev),
        Err(json_err) => proto::decode_message(bytes, limits).or(Err(json_err)),
    }
}

/// The Confluent Schema Registry wire format: 0x00, a 4-byte big-endian schema id, then the
/// payload; protobuf payloads are preceded by the message-index list.
fn decode_confluent(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    if bytes.len() < 5 {
        return Err(Rejection::new(
            Reason::BadFraming,
            format!(
                "The record starts with the Confluent magic byte 0x00 but is only {} bytes long, shorter than the 5-byte header (magic byte and schema id); send the whole framed message.",
                bytes.len()
            ),
        ));
    }
    let payload = &bytes[5..];
    if payload.is_empty() {
        return Err(Rejection::new(
            Reason::BadFraming,
            "The Confluent-framed record ends right after its 5-byte header; the JSON or protobuf payload is missing.",
        ));
    }
    match first_non_ws(payload) {
        // JSON Schema payloads follow the header directly.
        Some(i) if matches!(payload[i], b'{' | b'[') => decode_unframed(payload, limits),
        _ => {
            let message = skip_message_indexes(payload)?;
            if message.is_empty() {
                return Err(Rejection::new(
                    Reason::BadFraming,
                    "The Confluent-framed record ends right after its message-index list; the protobuf payload is missing.",
                ));
            }
            proto::decode_message(message, limits)
        }
    }
}

/// Skips the Confluent protobuf message-index list and returns the message bytes after it.
///
/// The indexes say which message of the registered schema the payload is; they are not checked
/// against `rapport.v1.Event`, because the registered file may differ from ours and the payload
/// is validated field by field anyway.
fn skip_message_indexes(mut buf: &[u8]) -> Result<&[u8], Rejection> {
    fn bad(what: &str) -> Rejection {
        Rejection::new(
            Reason::BadFraming,
            format!(
                "The Confluent-framed protobuf record has a bad message-index list ({what}); frame it with the Schema Registry serializer."
            ),
        )
    }
    fn next_zigzag(buf: &mut &[u8]) -> Result<i64, Rejection> {
        let v = prost::encoding::decode_varint(buf)
            .map_err(|_| bad("a varint is cut short or malformed"))?;
        let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
        // Confluent writes these as 32-bit zigzag varints.
        if n < i64::from(i32::MIN) || n > i64::from(i32::MAX) {
            return Err(bad("a value is larger than 32 bits"));
        }
        Ok(n)
    }
    let count = next_zigzag(&mut buf)?;
    if count < 0 {
        return Err(bad("the count is negative"));
    }
    if count as usize > buf.len() {
        return Err(bad("the count is larger than the rest of the record"));
    }
    for _ in 0..count {
        if next_zigzag(&mut buf)? < 0 {
            return Err(bad("an index is negative"));
        }
    }
    Ok(buf)
}

/// Which wire format a [`Raw`] came from, for wording the sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Protobuf,
}

/// An input event as parsed, before validation: every field optional, strings borrowed from the
/// input where the format allows. Fields of all four event types live side by side, the way they
/// do in the flat JSON shape.
#[derive(Debug)]
pub(crate) struct Raw<'a> {
    pub format: Format,
    pub event_id: Option<Cow<'a, str>>,
    pub account_id: Option<Cow<'a, str>>,
    pub occurred_at: Option<Cow<'a, str>>,
    pub type_: Option<Cow<'a, str>>,
    // product_usage
    pub user_id: Option<Cow<'a, str>>,
    pub feature: Option<Cow<'a, str>>,
    pub quantity: Option<f64>,
    // email and call
    pub contact_id: Option<Cow<'a, str>>,
    pub direction: Option<Cow<'a, str>>,
    pub action: Option<Cow<'a, str>>,
    pub campaign: Option<Cow<'a, str>>,
    pub duration_s: Option<f64>,
    pub outcome: Option<Cow<'a, str>>,
    pub sentiment: Option<f64>,
    /// Already lower-cased, empty labels dropped.
    pub topics: Vec<String>,
    // deal
    pub deal_id: Option<Cow<'a, str>>,
    pub kind: Option<Cow<'a, str>>,
    pub stage: Option<Cow<'a, str>>,
    pub amount: Option<f64>,
    pub currency: Option<Cow<'a, str>>,
    pub close_date: Option<Cow<'a, str>>,
    pub plan: Option<Cow<'a, str>>,
    pub industry: Option<Cow<'a, str>>,
}

impl<'a> Raw<'a> {
    pub(crate) fn new(format: Format) -> Raw<'a> {
        Raw {
            format,
            event_id: None,
            account_id: None,
            occurred_at: None,
            type_: None,
            user_id: None,
            feature: None,
            quantity: None,
            contact_id: None,
            direction: None,
            action: None,
            campaign: None,
            duration_s: None,
            outcome: None,
            sentiment: None,
            topics: Vec::new(),
            deal_id: None,
            kind: None,
            stage: None,
            amount: None,
            currency: None,
            close_date: None,
            plan: None,
            industry: None,
        }
    }
}

/// Lower-cases a topic label, in place when it is ASCII.
pub(crate) fn lowercase_owned(s: Cow<'_, str>) -> String {
    if s.is_ascii() {
        let mut s = s.into_owned();
        s.make_ascii_lowercase();
        s
    } else {
        s.to_lowercase()
    }
}

const TYPES: &str = "product_usage, email, call or deal";
const DIRECTIONS: &str = "inbound or outbound";
const ACTIONS: &str =
    "sent, delivered, opened, clicked, replied, bounced, unsubscribed or complained";
const OUTCOMES: &str =
    "connected, no_answer, voicemail, meeting_held, meeting_cancelled or meeting_no_show";
const KINDS: &str = "new_business, renewal, expansion, contraction or cancellation";

/// Empty strings count as absent: proto3 cannot tell them apart, and JSON should not differ.
fn present(v: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    v.filter(|s| !s.is_empty())
}

fn missing(field: &str, need: &str) -> Rejection {
    Rejection::new(
        Reason::MissingField,
        format!("Field `{field}` is missing or empty; {need}."),
    )
}

fn required<'a>(
    v: Option<Cow<'a, str>>,
    field: &str,
    need: &str,
) -> Result<Cow<'a, str>, Rejection> {
    present(v).ok_or_else(|| missing(field, need))
}

fn check_id_len(s: &str, field: &str, limits: &DecodeLimits) -> Result<(), Rejection> {
    if s.len() > limits.max_id_bytes {
        return Err(Rejection::new(
            Reason::FieldTooLong,
            format!(
                "Field `{field}` is {} bytes, longer than the {}-byte limit for ids (`max_id_bytes`); send a shorter id.",
                s.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

fn required_id(
    v: Option<Cow<'_, str>>,
    field: &str,
    need: &str,
    limits: &DecodeLimits,
) -> Result<String, Rejection> {
    let s = required(v, field, need)?;
    check_id_len(&s, field, limits)?;
    Ok(s.into_owned())
}

fn optional_id(
    v: Option<Cow<'_, str>>,
    field: &str,
    limits: &DecodeLimits,
) -> Result<Option<String>, Rejection> {
    match present(v) {
        None => Ok(None),
        Some(s) => {
            check_id_len(&s, field, limits)?;
            Ok(Some(s.into_owned()))
        }
    }
}

fn optional_text(v: Option<Cow<'_, str>>) -> Option<String> {
    present(v).map(Cow::into_owned)
}

fn unknown_enum(field: &str, value: &str, allowed: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownEnum,
        format!(
            "Field `{field}` is {}, which is not one of {allowed}.",
            quote(value)
        ),
    )
}

fn optional_enum<T>(
    v: Option<Cow<'_, str>>,
    field: &str,
    allowed: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, Rejection> {
    match present(v) {
        None => Ok(None),
        Some(s) => parse(&s)
            .map(Some)
            .ok_or_else(|| unknown_enum(field, &s, allowed)),
    }
}

fn required_enum<T>(
    v: Option<Cow<'_, str>>,
    field: &str,
    need: &str,
    allowed: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, Rejection> {
    let s = required(v, field, need)?;
    parse(&s).ok_or_else(|| unknown_enum(field, &s, allowed))
}

fn show_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        }
    } else {
        v.to_string()
    }
}

/// A finite number, or a `non_finite` rejection.
fn finite(v: Option<f64>, field: &str) -> Result<Option<f64>, Rejection> {
    match v {
        Some(x) if !x.is_finite() => Err(Rejection::new(
            Reason::NonFinite,
            format!(
                "Field `{field}` is {}, which is not a finite number; send a finite number or leave the field out.",
                show_number(x)
            ),
        )),
        _ => Ok(v),
    }
}

fn non_negative(v: Option<f64>, field: &str) -> Result<Option<f64>, Rejection> {
    match finite(v, field)? {
        Some(x) if x < 0.0 => Err(Rejection::new(
            Reason::OutOfRange,
            format!("Field `{field}` is {x}, which is negative; it must be 0 or more."),
        )),
        v => Ok(v),
    }
}

/// Validates a parsed record against the data contract and builds the typed event, taking the
/// strings out of `raw`. (`Raw` is a few hundred bytes; filling and validating it in place
/// instead of moving it between functions measurably shortens the hot path.)
pub(crate) fn validate(raw: &mut Raw<'_>, limits: &DecodeLimits) -> Result<Event, Rejection> {
    let event_id = required_id(
        raw.event_id.take(),
        "event_id",
        "every event needs a unique id",
        limits,
    )?;
    let account_id = required_id(
        raw.account_id.take(),
        "account_id",
        "every event needs the id of the account it is about",
        limits,
    )?;
    let occurred_at = required(
        raw.occurred_at.take(),
        "occurred_at",
        "every event needs an RFC 3339 time such as 2026-11-20T10:15:00Z",
    )?;
    let occurred_at_ms = time::parse_rfc3339_ms(&occurred_at).ok_or_else(|| {
        Rejection::new(
            Reason::BadTimestamp,
            format!(
                "Field `occurred_at` is {}, which is not an RFC 3339 time such as 2026-11-20T10:15:00Z.",
                quote(&occurred_at)
            ),
        )
    })?;
    let Some(type_) = present(raw.type_.take()) else {
        return Err(match raw.format {
            Format::Json => missing("type", "set it to product_usage, email, call or deal"),
            Format::Protobuf => Rejection::new(
                Reason::MissingField,
                "The protobuf `body` oneof is not set (or holds an event type this version does not know); set one of product_usage, email, call or deal.",
            ),
        });
    };

    let body = match &*type_ {
        "product_usage" => EventBody::ProductUsage(ProductUsage {
            user_id: optional_id(raw.user_id.take(), "user_id", limits)?,
            feature: optional_text(raw.feature.take()),
            quantity: non_negative(raw.quantity, "quantity")?.unwrap_or(1.0),
        }),
        "email" => {
            let action = required_enum(
                raw.action.take(),
                "action",
                "email events need one of sent, delivered, opened, clicked, replied, bounced, unsubscribed or complained",
                ACTIONS,
                EmailAction::parse,
            )?;
            EventBody::Email(Email {
                contact_id: optional_id(raw.contact_id.take(), "contact_id", limits)?,
                direction: optional_enum(
                    raw.direction.take(),
                    "direction",
                    DIRECTIONS,
                    Direction::parse,
                )?,
                action,
                campaign: optional_text(raw.campaign.take()),
            })
        }
        "call" => {
            let sentiment = finite(raw.sentiment, "sentiment")?;
            if let Some(s) = sentiment
                && !(-1.0..=1.0).contains(&s)
            {
                return Err(Rejection::new(
                    Reason::OutOfRange,
                    format!(
                        "Field `sentiment` is {s}, outside the range -1 to 1; send a score between -1 (negative) and 1 (positive)."
                    ),
                ));
            }
            EventBody::Call(Call {
                contact_id: optional_id(raw.contact_id.take(), "contact_id", limits)?,
                direction: optional_enum(
                    raw.direction.take(),
                    "direction",
                    DIRECTIONS,
                    Direction::parse,
                )?,
                duration_s: non_negative(raw.duration_s, "duration_s")?,
                outcome: optional_enum(
                    raw.outcome.take(),
                    "outcome",
                    OUTCOMES,
                    CallOutcome::parse,
                )?,
                sentiment,
                topics: std::mem::take(&mut raw.topics),
            })
        }
        "deal" => {
            let deal_id = required_id(
                raw.deal_id.take(),
                "deal_id",
                "deal events need the CRM's deal id",
                limits,
            )?;
            let kind = required_enum(
                raw.kind.take(),
                "kind",
                "deal events need one of new_business, renewal, expansion, contraction or cancellation",
                KINDS,
                DealKind::parse,
            )?;
            let stage = match required(
                raw.stage.take(),
                "stage",
                "deal events need the deal's stage (closed_won or closed_lost once closed)",
            )? {
                s if s == "closed_won" => DealStage::ClosedWon,
                s if s == "closed_lost" => DealStage::ClosedLost,
                s => DealStage::Open(s.into_owned()),
            };
            let close_day = match present(raw.close_date.take()) {
                None => None,
                Some(s) => Some(time::parse_date_day(&s).ok_or_else(|| {
                    Rejection::new(
                        Reason::BadTimestamp,
                        format!(
                            "Field `close_date` is {}, which is not a date such as 2027-01-31.",
                            quote(&s)
                        ),
                    )
                })?),
            };
            EventBody::Deal(Deal {
                deal_id,
                kind,
                stage,
                amount: non_negative(raw.amount, "amount")?,
                currency: optional_text(raw.currency.take()),
                close_day,
                plan: optional_id(raw.plan.take(), "plan", limits)?,
                industry: optional_id(raw.industry.take(), "industry", limits)?,
            })
        }
        other => {
            return Err(Rejection::new(
                Reason::UnknownType,
                format!(
                    "Field `type` is {}, which is not one of {TYPES}.",
                    quote(other)
                ),
            ));
        }
    };
    Ok(Event {
        event_id,
        account_id,
        occurred_at_ms,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    fn usage_json() -> &'static str {
        r#"{"event_id":"u-1","account_id":"acme","occurred_at":"2026-11-20T10:15:00Z","type":"product_usage","user_id":"u42","feature":"reports.export","quantity":1}"#
    }

    fn reason(bytes: &[u8]) -> Reason {
        decode(bytes, &limits())
            .expect_err("should be rejected")
            .reason
    }

    #[test]
    fn default_limits() {
        let l = DecodeLimits::default();
        assert_eq!((l.max_record_bytes, l.max_id_bytes), (65_536, 256));
    }

    #[test]
    fn detects_json() {
        let ev = decode(usage_json().as_bytes(), &limits()).unwrap();
        assert_eq!(ev.event_id, "u-1");
        // Leading whitespace is still JSON.
        let padded = format!(" \r\n\t{}\n", usage_json());
        assert_eq!(decode(padded.as_bytes(), &limits()).unwrap(), ev);
    }

    #[test]
    fn detects_plain_protobuf() {
        let ev = decode(usage_json().as_bytes(), &limits()).unwrap();
        let bytes = proto::encode_event(&ev);
        assert_eq!(decode(&bytes, &limits()).unwrap(), ev);
    }

    #[test]
    fn protobuf_that_starts_like_whitespace_then_brace_is_still_decoded() {
        // Tag 0x0A then length 0x7B (123): bytes "\n{" — looks like JSON after a newline.
        let mut ev = decode(usage_json().as_bytes(), &limits()).unwrap();
        ev.event_id = "e".repeat(123);
        let bytes = proto::encode_event(&ev);
        assert_eq!(&bytes[..2], b"\n{");
        assert_eq!(decode(&bytes, &limits()).unwrap(), ev);
    }

    #[test]
    fn leading_whitespace_json_keeps_its_json_rejection() {
        // Not protobuf either, so the JSON problem is the one reported.
        let r = decode(b"\n{\"event_id\":1}", &limits()).unwrap_err();
        assert_eq!(r.reason, Reason::WrongType, "{r}");
        let r = decode(b"\n{\"event_id\":\"e\"}", &limits()).unwrap_err();
        assert_eq!(r.reason, Reason::MissingField, "{r}");
        assert!(r.detail.contains("`account_id`"), "{r}");
    }

    #[test]
    fn confluent_framing() {
        let ev = decode(usage_json().as_bytes(), &limits()).unwrap();
        // JSON payload, no message indexes.
        let framed = proto::frame_confluent(7, false, usage_json().as_bytes());
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(decode(&framed, &limits()).unwrap(), ev);
        // Protobuf payload with the single-0 shorthand for [0].
        let pb = proto::encode_event(&ev);
        let framed = proto::frame_confluent(0x0102_0304, true, &pb);
        assert_eq!(&framed[..6], &[0, 1, 2, 3, 4, 0]);
        assert_eq!(decode(&framed, &limits()).unwrap(), ev);
        // Protobuf payload with an explicit index list [1, 0]: count 2 -> zigzag 4, 1 -> 2, 0 -> 0.
        let mut framed = vec![0, 0, 0, 0, 9, 4, 2, 0];
        framed.extend_from_slice(&pb);
        assert_eq!(decode(&framed, &limits()).unwrap(), ev);
        // A multi-byte varint index: 300 -> zigzag 600 = 0xD8 0x04.
        let mut framed = vec![0, 0, 0, 0, 9, 2, 0xD8, 0x04];
        framed.extend_from_slice(&pb);
        assert_eq!(decode(&framed, &limits()).unwrap(), ev);
    }

    #[test]
    fn bad_framing() {
        for bytes in [
            &[0u8][..],
            &[0, 0, 0, 1],
            &[0, 0, 0, 0, 1],
            &[0, 0, 0, 0, 1, 0],
            &[0, 0, 0, 0, 1, 0x80],           // varint cut short
            &[0, 0, 0, 0, 1, 1, 0x0A],        // count -1
            &[0, 0, 0, 0, 1, 2, 1, 0x0A],     // index -1
            &[0, 0, 0, 0, 1, 40, 0x0A, 0x01], // count 20, only 2 bytes left
        ] {
            assert_eq!(reason(bytes), Reason::BadFraming, "{bytes:?}");
        }
        let r = decode(&[0, 0, 0, 1], &limits()).unwrap_err();
        assert!(r.detail.contains("4 bytes"), "{}", r.detail);
    }

    #[test]
    fn size_and_emptiness_come_first() {
        assert_eq!(reason(b""), Reason::Empty);
        assert_eq!(reason(b" \n\t\r "), Reason::Empty);
        let small = DecodeLimits {
            max_record_bytes: 10,
            max_id_bytes: 256,
        };
        let r = decode(usage_json().as_bytes(), &small).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
        assert!(r.detail.contains("10-byte limit"), "{}", r.detail);
        // Too large wins even over junk.
        assert_eq!(
            decode(&[0xFF; 11], &small).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn text_is_not_json_binary_junk_is_bad_protobuf_and_arrays_are_wrong_type() {
        for text in [
            &b"hello world"[..],
            b"ok",
            b"<html><body>503 Service Unavailable</body></html>",
            b"  NaN\r\n",
            "caf\u{e9}".as_bytes(),
        ] {
            let r = decode(text, &limits()).unwrap_err();
            assert_eq!(r.reason, Reason::NotJson, "{r}");
        }
        let r = decode(b"hello world", &limits()).unwrap_err();
        assert_eq!(
            r.detail,
            "The record is text but not JSON (it starts with \"hello world\" rather than `{`); send one JSON object per record."
        );
        assert_eq!(reason(&[0xFF, 0xFF, 0xFF]), Reason::BadProtobuf);
        assert_eq!(reason(&[0x12, 0x01, b'a', 0xFF]), Reason::BadProtobuf);
        // The plain protobuf entry point does not guess.
        assert_eq!(
            proto::decode_proto(b"hello world", &limits())
                .unwrap_err()
                .reason,
            Reason::BadProtobuf
        );
        assert_eq!(reason(b"[1,2,3]"), Reason::WrongType);
    }

    #[test]
    fn every_reason_is_reachable_through_decode() {
        let cases: Vec<(Reason, Vec<u8>)> = vec![
            (Reason::Empty, b"".to_vec()),
            (Reason::TooLarge, vec![b' '; 70_000]),
            (Reason::InvalidUtf8, b"{\"event_id\":\"\xFF\"}".to_vec()),
            (Reason::NotJson, b"{\"event_id\" \"x\"}".to_vec()),
            (Reason::Truncated, b"{\"event_id\":\"x\"".to_vec()),
            (Reason::TooDeep, format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200)).into_bytes()),
            (Reason::WrongType, br#"{"quantity":"three"}"#.to_vec()),
            (Reason::MissingField, br#"{"account_id":"a"}"#.to_vec()),
            (Reason::BadTimestamp, br#"{"event_id":"e","account_id":"a","occurred_at":"yesterday","type":"email"}"#.to_vec()),
            (Reason::UnknownType, br#"{"event_id":"e","account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"sms"}"#.to_vec()),
            (Reason::UnknownEnum, br#"{"event_id":"e","account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"email","action":"read"}"#.to_vec()),
            (Reason::NonFinite, br#"{"event_id":"e","sentiment":NaN}"#.to_vec()),
            (Reason::OutOfRange, br#"{"event_id":"e","account_id":"a","occurred_at":"2026-11-20T10:15:00Z","type":"product_usage","quantity":-1}"#.to_vec()),
            (Reason::FieldTooLong, format!(r#"{{"event_id":"{}"}}"#, "e".repeat(257)).into_bytes()),
            (Reason::BadProtobuf, vec![0x0A, 0x05, b'a']),
            (Reason::BadFraming, vec![0, 0]),
        ];
        for (want, bytes) in &cases {
            let r = decode(bytes, &limits()).unwrap_err();
            assert_eq!(r.reason, *want, "{}", r.detail);
            assert!(r.detail.ends_with('.'), "not a sentence: {}", r.detail);
        }
        let covered: std::collections::HashSet<Reason> = cases.iter().map(|(r, _)| *r).collect();
        assert_eq!(covered.len(), Reason::ALL.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &limits());
        }

        #[test]
        fn arbitrary_framed_bytes_never_panic(
            proto_payload in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = decode(&proto::frame_confluent(1, proto_payload, &bytes), &limits());
        }

        #[test]
        fn mutated_valid_records_never_panic(
            json in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let ev = decode(usage_json().as_bytes(), &limits()).unwrap();
            let mut bytes = if json { usage_json().as_bytes().to_vec() } else { proto::encode_event(&ev) };
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            let _ = decode(&bytes, &limits());
        }
    }
}
