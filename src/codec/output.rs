//! Output records: health-score changes and churn alerts in the contract's JSON shape (the
//! default) or as protobuf (`rapport.v1.HealthScoreChanged` / `ChurnAlert`).

use crate::codec::time::{format_rfc3339_ms, write_rfc3339_ms};
use crate::domain::{AlertChange, ScoreChange};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Protobuf,
}

pub fn encode_score(c: &ScoreChange, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Json => score_json(c, out),
        OutputFormat::Protobuf => {
            use prost::Message;
            let m = crate::pb::HealthScoreChanged {
                account_id: c.account_id.clone(),
                score: c.score,
                previous_score: c.previous_score,
                band: c.band.as_str().to_owned(),
                previous_band: c
                    .previous_band
                    .map(|b| b.as_str().to_owned())
                    .unwrap_or_default(),
                components: c
                    .components
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                drivers: c
                    .drivers
                    .iter()
                    .map(|d| crate::pb::Driver {
                        signal: d.signal.to_owned(),
                        impact: d.impact,
                        detail: d.detail.clone(),
                    })
                    .collect(),
                as_of: format_rfc3339_ms(c.as_of_ms),
                change_id: c.change_id.clone(),
            };
            m.encode(out).expect("Vec grows");
        }
    }
}

pub fn encode_alert(a: &AlertChange, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Json => alert_json(a, out),
        OutputFormat::Protobuf => {
            use prost::Message;
            let m = crate::pb::ChurnAlert {
                alert_id: a.alert_id.clone(),
                account_id: a.account_id.clone(),
                rule: a.rule.name().to_owned(),
                severity: a.severity.clone(),
                status: a.status.as_str().to_owned(),
                opened_at: format_rfc3339_ms(a.opened_at_ms),
                resolved_at: a.resolved_at_ms.map(format_rfc3339_ms).unwrap_or_default(),
                health_score: a.health_score,
                evidence: a.evidence.iter().cloned().collect(),
                message: a.message.clone(),
            };
            m.encode(out).expect("Vec grows");
        }
    }
}

// The JSON shapes are written field by field, in the contract's order, rather than through
// `serde_json::Map` values: one score change is a dozen small allocations that way, and outputs
// are a quarter of all events. Maps (`components`, `evidence`) are written with their keys in
// sorted order, as `serde_json::Map` writes them; a test below holds the two ways byte-equal.

fn put_str(out: &mut Vec<u8>, s: &str) {
    // serde_json does the escaping; writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing JSON into a Vec cannot fail");
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    serde_json::to_writer(&mut *out, &v).expect("writing JSON into a Vec cannot fail");
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    use std::io::Write;
    write!(out, "{v}").expect("writing into a Vec cannot fail");
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn put_time(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    write_rfc3339_ms(ms, out);
    out.push(b'"');
}

/// Writes `pairs` as a JSON object with sorted keys; of repeated keys the last one wins.
fn put_map<V>(out: &mut Vec<u8>, pairs: &[(impl AsRef<str>, V)], put: impl Fn(&mut Vec<u8>, &V)) {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| pairs[a].0.as_ref().cmp(pairs[b].0.as_ref()));
    out.push(b'{');
    let mut first = true;
    for (n, &i) in order.iter().enumerate() {
        let k = pairs[i].0.as_ref();
        if order.get(n + 1).is_some_and(|&j| pairs[j].0.as_ref() == k) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        put_str(out, k);
        out.push(b':');
        put(out, &pairs[i].1);
    }
    out.push(b'}');
}

fn score_json(c: &ScoreChange, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"health_score_changed\"");
    key(out, "account_id");
    put_str(out, &c.account_id);
    key(out, "score");
    put_u32(out, c.score);
    key(out, "previous_score");
    match c.previous_score {
        Some(p) => put_u32(out, p),
        None => out.extend_from_slice(b"null"),
    }
    key(out, "band");
    put_str(out, c.band.as_str());
    key(out, "previous_band");
    match c.previous_band {
        Some(b) => put_str(out, b.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    key(out, "components");
    put_map(out, &c.components, |out, v| put_f64(out, *v));
    key(out, "drivers");
    out.push(b'[');
    for (i, d) in c.drivers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"signal\":");
        put_str(out, d.signal);
        key(out, "impact");
        put_f64(out, d.impact);
        key(out, "detail");
        put_str(out, &d.detail);
        out.push(b'}');
    }
    out.push(b']');
    key(out, "as_of");
    put_time(out, c.as_of_ms);
    key(out, "change_id");
    put_str(out, &c.change_id);
    out.push(b'}');
}

fn alert_json(a: &AlertChange, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"churn_alert\"");
    key(out, "alert_id");
    put_str(out, &a.alert_id);
    key(out, "account_id");
    put_str(out, &a.account_id);
    key(out, "rule");
    put_str(out, a.rule.name());
    key(out, "severity");
    put_str(out, &a.severity);
    key(out, "status");
    put_str(out, a.status.as_str());
    key(out, "opened_at");
    put_time(out, a.opened_at_ms);
    key(out, "resolved_at");
    match a.resolved_at_ms {
        Some(t) => put_time(out, t),
        None => out.extend_from_slice(b"null"),
    }
    key(out, "health_score");
    put_u32(out, a.health_score);
    key(out, "evidence");
    put_map(out, &a.evidence, |out, v| put_str(out, v));
    key(out, "message");
    put_str(out, &a.message);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    //! The hand-written JSON against the serde shapes it replaced, byte for byte.
    use serde::Serialize;

    use super::*;
    use crate::domain::alert::Rule;
    use crate::domain::score::{Band, Driver};
    use crate::domain::AlertStatus;

    #[derive(Serialize)]
struct DriverJson<'a> {
    signal: &'a str,
    impact: f64,
    detail: &'a str,
}

    #[derive(Serialize)]
struct ScoreJson<'a> {
    r#type: &'static str,
    account_id: &'a str,
    score: u32,
    previous_score: Option<u32>,
    band: &'static str,
    previous_band: Option<&'static str>,
    components: serde_json::Map<String, serde_json::Value>,
    drivers: Vec<DriverJson<'a>>,
    as_of: String,
    change_id: &'a str,
}

    #[derive(Serialize)]
struct AlertJson<'a> {
    r#type: &'static str,
    alert_id: &'a str,
    account_id: &'a str,
    rule: &'static str,
    severity: &'a str,
    status: &'static str,
    opened_at: String,
    resolved_at: Option<String>,
    health_score: u32,
    evidence: serde_json::Map<String, serde_json::Value>,
    message: &'a str,
}


    fn score_serde(c: &ScoreChange) -> Vec<u8> {
        let v = ScoreJson {
            r#type: "health_score_changed",
            account_id: &c.account_id,
            score: c.score,
            previous_score: c.previous_score,
            band: c.band.as_str(),
            previous_band: c.previous_band.map(|b| b.as_str()),
            components: c
                .components
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                .collect(),
            drivers: c
                .drivers
                .iter()
                .map(|d| DriverJson {
                    signal: d.signal,
                    impact: d.impact,
                    detail: &d.detail,
                })
                .collect(),
            as_of: format_rfc3339_ms(c.as_of_ms),
            change_id: &c.change_id,
        };
        serde_json::to_vec(&v).unwrap()
    }

    fn alert_serde(a: &AlertChange) -> Vec<u8> {
        let v = AlertJson {
            r#type: "churn_alert",
            alert_id: &a.alert_id,
            account_id: &a.account_id,
            rule: a.rule.name(),
            severity: &a.severity,
            status: a.status.as_str(),
            opened_at: format_rfc3339_ms(a.opened_at_ms),
            resolved_at: a.resolved_at_ms.map(format_rfc3339_ms),
            health_score: a.health_score,
            evidence: a
                .evidence
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect(),
            message: &a.message,
        };
        serde_json::to_vec(&v).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn score_json_equals_serde(
            account in "\\PC{0,12}",
            score in 0u32..101,
            prev in proptest::option::of(0u32..101),
            comps in proptest::collection::vec((0usize..8, -1.0e3f64..1.0e3), 0..8),
            drivers in proptest::collection::vec((-100.0f64..100.0, "\\PC{0,20}"), 0..4),
            as_of in proptest::num::i64::ANY,
        ) {
            const NAMES: [&str; 8] = ["usage_frequency", "usage_trend", "adoption", "email_engagement", "call_sentiment", "commercial", "recency", "outcome"];
            let c = ScoreChange {
                account_id: account,
                score,
                previous_score: prev,
                band: Band::Green,
                previous_band: prev.map(|_| Band::Red),
                components: comps.iter().map(|(i, v)| (NAMES[*i], (*v * 10.0).round() / 10.0)).collect(),
                drivers: drivers.into_iter().map(|(impact, detail)| Driver { signal: "adoption", impact, detail }).collect(),
                as_of_ms: as_of,
                change_id: "0123456789abcdef0123456789abcdef".into(),
            };
            let mut mine = Vec::new();
            encode_score(&c, OutputFormat::Json, &mut mine);
            proptest::prop_assert_eq!(String::from_utf8(mine).unwrap(), String::from_utf8(score_serde(&c)).unwrap());
        }

        #[test]
        fn alert_json_equals_serde(
            account in "\\PC{0,12}",
            resolved in proptest::option::of(proptest::num::i64::ANY),
            evidence in proptest::collection::vec(("[a-c]{1,2}", "\\PC{0,10}"), 0..5),
            message in "\\PC{0,40}",
            opened in proptest::num::i64::ANY,
        ) {
            let a = AlertChange {
                alert_id: "fc1e3fa16f649a4e31d57f47a87dd7d4".into(),
                account_id: account,
                rule: Rule::NegativeCall,
                severity: "medium".into(),
                status: if resolved.is_some() { AlertStatus::Resolved } else { AlertStatus::Open },
                opened_at_ms: opened,
                resolved_at_ms: resolved,
                health_score: 47,
                evidence,
                message,
            };
            let mut mine = Vec::new();
            encode_alert(&a, OutputFormat::Json, &mut mine);
            proptest::prop_assert_eq!(String::from_utf8(mine).unwrap(), String::from_utf8(alert_serde(&a)).unwrap());
        }
    }
}
