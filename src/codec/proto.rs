//! The protobuf form of input events (`rapport.v1.Event`): decoding into the same validation as
//! JSON, encoding for producers and tests, and the Confluent Schema Registry frame.

use std::borrow::Cow;

use prost::Message;

use super::{
    DecodeLimits, Format, Raw, Reason, Rejection, check_size, lowercase_owned, time, validate,
};
use crate::domain::event::{DealStage, Event, EventBody};
use crate::pb;
use crate::pb::event::Body;

/// Decodes one plain (unframed) protobuf `rapport.v1.Event` into a validated event.
pub fn decode_proto(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    check_size(bytes, limits)?;
    // Only zero bytes is empty here: in protobuf, whitespace bytes are ordinary data.
    if bytes.is_empty() {
        return Err(Rejection::new(
            Reason::Empty,
            "The record is empty; send one protobuf `rapport.v1.Event` per record.",
        ));
    }
    decode_message(bytes, limits)
}

/// [`decode_proto`] after the size and emptiness checks.
pub(super) fn decode_message(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, Rejection> {
    let msg = pb::Event::decode(bytes).map_err(|e| {
        // prost does not expose the error's kind; its message is stable and says "UTF-8".
        let text = e.to_string();
        if text.contains("not UTF-8") {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("The protobuf record has a string field that is not valid UTF-8 ({text}); send UTF-8 text."),
            )
        } else {
            Rejection::new(
                Reason::BadProtobuf,
                format!("The record is neither JSON (it does not start with `{{`) nor a valid protobuf `rapport.v1.Event` ({text}); check the producer's serializer."),
            )
        }
    })?;
    let mut raw = Raw::new(Format::Protobuf);
    fill_raw(msg, &mut raw);
    validate(&mut raw, limits)
}

/// proto3 strings cannot be absent, only empty; empty counts as absent, as it does in JSON.
fn text(s: String) -> Option<Cow<'static, str>> {
    if s.is_empty() {
        None
    } else {
        Some(Cow::Owned(s))
    }
}

/// Moves the message's strings into the shared raw form: no copies.
fn fill_raw(msg: pb::Event, raw: &mut Raw<'static>) {
    raw.event_id = text(msg.event_id);
    raw.account_id = text(msg.account_id);
    raw.occurred_at = text(msg.occurred_at);
    let Some(body) = msg.body else { return };
    raw.type_ = Some(Cow::Borrowed(match body {
        Body::ProductUsage(u) => {
            raw.user_id = text(u.user_id);
            raw.feature = text(u.feature);
            raw.quantity = u.quantity;
            "product_usage"
        }
        Body::Email(e) => {
            raw.contact_id = text(e.contact_id);
            raw.direction = text(e.direction);
            raw.action = text(e.action);
            raw.campaign = text(e.campaign);
            "email"
        }
        Body::Call(c) => {
            raw.contact_id = text(c.contact_id);
            raw.direction = text(c.direction);
            raw.duration_s = c.duration_s;
            raw.outcome = text(c.outcome);
            raw.sentiment = c.sentiment;
            raw.topics = c
                .topics
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|t| lowercase_owned(Cow::Owned(t)))
                .collect();
            "call"
        }
        Body::Deal(d) => {
            raw.deal_id = text(d.deal_id);
            raw.kind = text(d.kind);
            raw.stage = text(d.stage);
            raw.amount = d.amount;
            raw.currency = text(d.currency);
            raw.close_date = text(d.close_date);
            raw.plan = text(d.plan);
            raw.industry = text(d.industry);
            "deal"
        }
    }));
}

/// Encodes `ev` as `rapport.v1.Event` bytes (unframed). They decode back to `ev` with
/// [`decode_proto`].
pub fn encode_event(ev: &Event) -> Vec<u8> {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = match &ev.body {
        EventBody::ProductUsage(u) => Body::ProductUsage(pb::ProductUsage {
            user_id: s(&u.user_id),
            feature: s(&u.feature),
            quantity: Some(u.quantity),
        }),
        EventBody::Email(e) => Body::Email(pb::Email {
            contact_id: s(&e.contact_id),
            direction: e
                .direction
                .map(|d| d.as_str().to_owned())
                .unwrap_or_default(),
            action: e.action.as_str().to_owned(),
            campaign: s(&e.campaign),
        }),
        EventBody::Call(c) => Body::Call(pb::Call {
            contact_id: s(&c.contact_id),
            direction: c
                .direction
                .map(|d| d.as_str().to_owned())
                .unwrap_or_default(),
            duration_s: c.duration_s,
            outcome: c.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            sentiment: c.sentiment,
            topics: c.topics.clone(),
        }),
        EventBody::Deal(d) => Body::Deal(pb::Deal {
            deal_id: d.deal_id.clone(),
            kind: d.kind.as_str().to_owned(),
            stage: match &d.stage {
                DealStage::Open(s) => s.clone(),
                DealStage::ClosedWon => "closed_won".to_owned(),
                DealStage::ClosedLost => "closed_lost".to_owned(),
            },
            amount: d.amount,
            currency: s(&d.currency),
            close_date: d.close_day.map(time::format_day).unwrap_or_default(),
            plan: s(&d.plan),
            industry: s(&d.industry),
        }),
    };
    pb::Event {
        event_id: ev.event_id.clone(),
        account_id: ev.account_id.clone(),
        occurred_at: time::format_rfc3339_ms(ev.occurred_at_ms),
        body: Some(body),
    }
    .encode_to_vec()
}

/// Wraps `payload` in the Confluent Schema Registry wire format: magic byte 0x00, the schema id
/// (4 bytes, big-endian), and for protobuf payloads the message-index list, written as the single
/// byte 0 that stands for `[0]` (the first message of the schema, `rapport.v1.Event`).
pub fn frame_confluent(schema_id: u32, payload_is_proto: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    if payload_is_proto {
        out.push(0);
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;
    use crate::domain::event::*;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    fn header() -> pb::Event {
        pb::Event {
            event_id: "e-1".into(),
            account_id: "acme".into(),
            occurred_at: "2026-11-20T10:15:00Z".into(),
            body: None,
        }
    }

    fn with(body: Body) -> Vec<u8> {
        pb::Event {
            body: Some(body),
            ..header()
        }
        .encode_to_vec()
    }

    fn err(bytes: &[u8]) -> Rejection {
        decode_proto(bytes, &limits()).expect_err("should be rejected")
    }

    fn email(action: &str, direction: &str) -> Body {
        Body::Email(pb::Email {
            action: action.into(),
            direction: direction.into(),
            ..Default::default()
        })
    }

    fn call(c: pb::Call) -> Body {
        Body::Call(c)
    }

    fn deal(d: pb::Deal) -> Body {
        Body::Deal(pb::Deal {
            deal_id: if d.deal_id.is_empty() {
                "d".into()
            } else {
                d.deal_id
            },
            kind: if d.kind.is_empty() {
                "renewal".into()
            } else {
                d.kind
            },
            stage: if d.stage.is_empty() {
                "open".into()
            } else {
                d.stage
            },
            ..d
        })
    }

    fn samples() -> Vec<Event> {
        let base = |body| Event {
            event_id: "e-1".into(),
            account_id: "acme".into(),
            occurred_at_ms: 1_795_169_700_123,
            body,
        };
        vec![
            base(EventBody::ProductUsage(ProductUsage {
                user_id: Some("u42".into()),
                feature: Some("reports.export".into()),
                quantity: 0.0,
            })),
            base(EventBody::ProductUsage(ProductUsage {
                user_id: None,
                feature: None,
                quantity: 1.0,
            })),
            base(EventBody::Email(Email {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Outbound),
                action: EmailAction::Replied,
                campaign: Some("qbr-invite".into()),
            })),
            base(EventBody::Email(Email {
                contact_id: None,
                direction: None,
                action: EmailAction::Bounced,
                campaign: None,
            })),
            base(EventBody::Call(Call {
                contact_id: Some("c1".into()),
                direction: Some(Direction::Inbound),
                duration_s: Some(0.0),
                outcome: Some(CallOutcome::Voicemail),
                sentiment: Some(-1.0),
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
                kind: DealKind::Contraction,
                stage: DealStage::Open("proposal".into()),
                amount: None,
                currency: None,
                close_day: None,
                plan: None,
                industry: None,
            })),
            base(EventBody::Deal(Deal {
                deal_id: "opp-3".into(),
                kind: DealKind::Expansion,
                stage: DealStage::ClosedLost,
                amount: Some(0.5),
                currency: None,
                close_day: Some(-1),
                plan: None,
                industry: None,
            })),
        ]
    }

    #[test]
    fn round_trips_all_event_types() {
        for ev in samples() {
            let bytes = encode_event(&ev);
            assert_eq!(decode_proto(&bytes, &limits()).unwrap(), ev);
            // And through the format-detecting entry point, plain and framed.
            assert_eq!(decode(&bytes, &limits()).unwrap(), ev);
            assert_eq!(
                decode(&frame_confluent(42, true, &bytes), &limits()).unwrap(),
                ev
            );
            // JSON and protobuf agree.
            let mut json = Vec::new();
            crate::codec::json::encode_event(&ev, &mut json);
            assert_eq!(decode(&json, &limits()).unwrap(), ev);
            assert_eq!(
                decode(&frame_confluent(42, false, &json), &limits()).unwrap(),
                ev
            );
        }
    }

    #[test]
    fn absent_quantity_defaults_to_one_and_topics_are_lowercased() {
        let ev = decode_proto(
            &with(Body::ProductUsage(pb::ProductUsage::default())),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            ev.body,
            EventBody::ProductUsage(ProductUsage {
                user_id: None,
                feature: None,
                quantity: 1.0
            })
        );
        let ev = decode_proto(
            &with(call(pb::Call {
                topics: vec!["Pricing".into(), "".into(), "RENEWAL".into()],
                ..Default::default()
            })),
            &limits(),
        )
        .unwrap();
        let EventBody::Call(c) = ev.body else {
            panic!()
        };
        assert_eq!(c.topics, vec!["pricing".to_owned(), "renewal".to_owned()]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut bytes = with(email("sent", ""));
        // Field 99, varint 7; field 100, length-delimited "xyz".
        bytes.extend_from_slice(&[0x98, 0x06, 7, 0xA2, 0x06, 3, b'x', b'y', b'z']);
        assert!(decode_proto(&bytes, &limits()).is_ok());
    }

    #[test]
    fn missing_fields() {
        let r = err(&pb::Event {
            body: Some(email("sent", "")),
            event_id: String::new(),
            ..header()
        }
        .encode_to_vec());
        assert_eq!(r.reason, Reason::MissingField);
        assert!(r.detail.contains("`event_id`"), "{r}");
        let r = err(&pb::Event {
            body: Some(email("sent", "")),
            account_id: String::new(),
            ..header()
        }
        .encode_to_vec());
        assert!(r.detail.contains("`account_id`"), "{r}");
        let r = err(&pb::Event {
            body: Some(email("sent", "")),
            occurred_at: String::new(),
            ..header()
        }
        .encode_to_vec());
        assert!(r.detail.contains("`occurred_at`"), "{r}");
        let r = err(&header().encode_to_vec());
        assert_eq!(r.reason, Reason::MissingField);
        assert!(r.detail.contains("`body` oneof"), "{r}");
        let r = err(&with(email("", "")));
        assert_eq!(
            (r.reason, r.detail.contains("`action`")),
            (Reason::MissingField, true),
            "{r}"
        );
        let r = err(&with(Body::Deal(pb::Deal {
            kind: "renewal".into(),
            stage: "s".into(),
            ..Default::default()
        })));
        assert_eq!(
            (r.reason, r.detail.contains("`deal_id`")),
            (Reason::MissingField, true),
            "{r}"
        );
    }

    #[test]
    fn bad_values() {
        let cases: Vec<(Vec<u8>, Reason, &str)> = vec![
            (
                pb::Event {
                    body: Some(email("sent", "")),
                    occurred_at: "yesterday".into(),
                    ..header()
                }
                .encode_to_vec(),
                Reason::BadTimestamp,
                "occurred_at",
            ),
            (
                pb::Event {
                    body: Some(email("sent", "")),
                    account_id: "a".repeat(300),
                    ..header()
                }
                .encode_to_vec(),
                Reason::FieldTooLong,
                "account_id",
            ),
            (with(email("read", "")), Reason::UnknownEnum, "action"),
            (
                with(email("sent", "sideways")),
                Reason::UnknownEnum,
                "direction",
            ),
            (
                with(call(pb::Call {
                    outcome: "hung_up".into(),
                    ..Default::default()
                })),
                Reason::UnknownEnum,
                "outcome",
            ),
            (
                with(deal(pb::Deal {
                    kind: "upsell".into(),
                    ..Default::default()
                })),
                Reason::UnknownEnum,
                "kind",
            ),
            (
                with(Body::ProductUsage(pb::ProductUsage {
                    quantity: Some(f64::NAN),
                    ..Default::default()
                })),
                Reason::NonFinite,
                "quantity",
            ),
            (
                with(call(pb::Call {
                    duration_s: Some(f64::INFINITY),
                    ..Default::default()
                })),
                Reason::NonFinite,
                "duration_s",
            ),
            (
                with(call(pb::Call {
                    sentiment: Some(f64::NEG_INFINITY),
                    ..Default::default()
                })),
                Reason::NonFinite,
                "sentiment",
            ),
            (
                with(deal(pb::Deal {
                    amount: Some(f64::NAN),
                    ..Default::default()
                })),
                Reason::NonFinite,
                "amount",
            ),
            (
                with(Body::ProductUsage(pb::ProductUsage {
                    quantity: Some(-1.0),
                    ..Default::default()
                })),
                Reason::OutOfRange,
                "quantity",
            ),
            (
                with(call(pb::Call {
                    sentiment: Some(1.5),
                    ..Default::default()
                })),
                Reason::OutOfRange,
                "sentiment",
            ),
            (
                with(deal(pb::Deal {
                    amount: Some(-0.01),
                    ..Default::default()
                })),
                Reason::OutOfRange,
                "amount",
            ),
            (
                with(deal(pb::Deal {
                    close_date: "Q1".into(),
                    ..Default::default()
                })),
                Reason::BadTimestamp,
                "close_date",
            ),
        ];
        for (bytes, reason, field) in cases {
            let r = err(&bytes);
            assert_eq!(r.reason, reason, "{r}");
            assert!(r.detail.contains(&format!("`{field}`")), "{r}");
        }
    }

    #[test]
    fn malformed_bytes() {
        assert_eq!(err(b"").reason, Reason::Empty);
        let small = DecodeLimits {
            max_record_bytes: 4,
            max_id_bytes: 256,
        };
        assert_eq!(
            decode_proto(&[0x0A; 5], &small).unwrap_err().reason,
            Reason::TooLarge
        );
        // Length prefix longer than the rest: cut off.
        let r = err(&[0x0A, 0x10, b'a', b'b']);
        assert_eq!(r.reason, Reason::BadProtobuf);
        assert!(r.detail.contains("buffer underflow"), "{r}");
        // Wrong wire type for a known field.
        assert_eq!(err(&[0x08, 0x01]).reason, Reason::BadProtobuf);
        // A string field that is not UTF-8.
        let r = err(&[0x0A, 0x02, 0xC3, 0x28]);
        assert_eq!(r.reason, Reason::InvalidUtf8, "{r}");
    }

    #[test]
    fn frame_layout() {
        assert_eq!(frame_confluent(1, true, b"x"), vec![0, 0, 0, 0, 1, 0, b'x']);
        assert_eq!(
            frame_confluent(0xDEAD_BEEF, false, b"{}"),
            vec![0, 0xDE, 0xAD, 0xBE, 0xEF, b'{', b'}']
        );
    }
}
