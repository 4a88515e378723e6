//! Output records: health-score changes and churn alerts in the contract's JSON shape (the
//! default) or as protobuf (`rapport.v1.HealthScoreChanged` / `ChurnAlert`).

use serde::Serialize;

use crate::codec::time::format_rfc3339_ms;
use crate::domain::{AlertChange, ScoreChange};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Protobuf,
}

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

pub fn encode_score(c: &ScoreChange, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Json => {
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
            serde_json::to_writer(out, &v).expect("writing to a Vec");
        }
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
        OutputFormat::Json => {
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
            serde_json::to_writer(out, &v).expect("writing to a Vec");
        }
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
