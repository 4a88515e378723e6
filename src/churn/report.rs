//! The figures of `rapport evaluate` and `rapport calibrate`, computed from a [`Replayed`]
//! history, and the tables and scorecard file they print and write.
//!
//! Every interval is a 95% interval. Observations of one account are correlated (an account that
//! scores low this week scores low next week), so intervals of AUCs resample *accounts* (cluster
//! bootstrap), never rows; a row-level interval would be far too narrow.

use std::fmt::Write as _;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::{Observation, Replayed};
use crate::config::Config;
use crate::domain::event::DAY_MS;
use crate::domain::score::{COMPONENTS, N_COMPONENTS};
use crate::stats::{self, Interval, Logistic};

/// Bootstrap replicates for every interval.
pub const BOOTSTRAP: usize = 400;
const SEED: u64 = 0x5eed;

/// What `rapport evaluate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub accounts: usize,
    pub churners: usize,
    pub observations: usize,
    pub observation_dates: usize,
    pub horizon_days: u32,
    /// AUC of the health score (lower score = more risk) for "churns within the horizon".
    pub score_auc: Option<Interval>,
    /// Churners with an alert opened in the horizon before they cancelled.
    pub alert_recall: Option<Interval>,
    /// Churners with such an alert at least `lead_days` before.
    pub recall_at_lead: Option<Interval>,
    pub lead_days: u32,
    /// Median days from the first such alert to the cancellation.
    pub median_lead_days: Option<Interval>,
    /// Alerts opened per account-month on accounts that never churn.
    pub noise_per_account_month: Option<Interval>,
    pub rules: Vec<RuleFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleFigures {
    pub rule: &'static str,
    pub opened: usize,
    /// Churners this rule warned about within the horizon.
    pub churners_caught: usize,
    pub on_healthy: usize,
}

fn clusters(rows: &[&Observation]) -> Vec<u32> {
    rows.iter().map(|o| o.account).collect()
}

/// The evaluation of the scorecard and the alert rules that produced `r`.
pub fn evaluate(r: &Replayed, lead_days: u32) -> Evaluation {
    let scored: Vec<&Observation> = r.observations.iter().filter(|o| o.score.is_some()).collect();
    let risk: Vec<f64> = scored.iter().map(|o| 100.0 - o.score.unwrap_or(0) as f64).collect();
    let labels: Vec<bool> = scored.iter().map(|o| o.churns).collect();
    let score_auc = stats::auc_interval(&risk, &labels, &clusters(&scored), BOOTSTRAP, SEED);

    let horizon = r.opts.horizon_days as i64 * DAY_MS;
    let mut by_account: Vec<Vec<(i64, &'static str)>> = vec![Vec::new(); r.accounts.len()];
    for a in &r.alerts {
        by_account[a.account as usize].push((a.at_ms, a.rule));
    }
    let mut rules: Vec<RuleFigures> = crate::domain::alert::RULES
        .iter()
        .map(|x| RuleFigures {
            rule: x.name(),
            opened: 0,
            churners_caught: 0,
            on_healthy: 0,
        })
        .collect();
    let (mut caught, mut caught_early, mut leads) = (0u64, 0u64, Vec::new());
    let (mut healthy_alerts, mut healthy_months) = (0u64, 0.0f64);
    for (i, alerts) in by_account.iter().enumerate() {
        for (_, rule) in alerts {
            if let Some(f) = rules.iter_mut().find(|f| f.rule == *rule) {
                f.opened += 1;
                if r.churn_ms[i].is_none() {
                    f.on_healthy += 1;
                }
            }
        }
        match r.churn_ms[i] {
            Some(c) => {
                let warned: Vec<&(i64, &str)> =
                    alerts.iter().filter(|(t, _)| *t < c && *t >= c - horizon).collect();
                if let Some(first) = warned.iter().map(|(t, _)| *t).min() {
                    caught += 1;
                    let lead = (c - first) as f64 / DAY_MS as f64;
                    leads.push(lead);
                    if lead >= lead_days as f64 {
                        caught_early += 1;
                    }
                }
                for rule in warned.iter().map(|(_, x)| *x).collect::<std::collections::BTreeSet<_>>() {
                    if let Some(f) = rules.iter_mut().find(|f| f.rule == rule) {
                        f.churners_caught += 1;
                    }
                }
            }
            None => {
                healthy_alerts += alerts.len() as u64;
                healthy_months += (r.end_ms - r.first_ms[i]).max(0) as f64 / (30.44 * DAY_MS as f64);
            }
        }
    }
    let churners = r.churners() as u64;
    Evaluation {
        accounts: r.accounts.len(),
        churners: churners as usize,
        observations: r.observations.len(),
        observation_dates: r.observation_days().len(),
        horizon_days: r.opts.horizon_days,
        score_auc,
        alert_recall: stats::wilson(caught, churners),
        recall_at_lead: stats::wilson(caught_early, churners),
        lead_days,
        median_lead_days: stats::median_interval(&leads, BOOTSTRAP, SEED),
        noise_per_account_month: stats::poisson_rate(healthy_alerts, healthy_months),
        rules,
    }
}

fn iv(x: &Option<Interval>, digits: usize) -> String {
    match x {
        Some(i) => format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            i.estimate,
            i.low,
            i.high,
            d = digits
        ),
        None => "n/a".into(),
    }
}

fn pct(x: &Option<Interval>) -> String {
    match x {
        Some(i) => format!(
            "{:.0}% [{:.0}%, {:.0}%]",
            i.estimate * 100.0,
            i.low * 100.0,
            i.high * 100.0
        ),
        None => "n/a".into(),
    }
}

/// Whether an AUC interval says the score predicts nothing (it reaches 0.5 or below).
pub fn predicts_nothing(auc: &Option<Interval>) -> bool {
    auc.is_none_or(|i| i.low <= 0.5)
}

impl Evaluation {
    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED);
        t.set_header(vec!["measure", "value [95% interval]"]);
        t.add_row(vec![
            format!("score AUC, churn within {} days", self.horizon_days),
            iv(&self.score_auc, 3),
        ]);
        t.add_row(vec![
            format!("churners alerted within {} days before", self.horizon_days),
            pct(&self.alert_recall),
        ]);
        t.add_row(vec![
            format!("churners alerted at least {} days before", self.lead_days),
            pct(&self.recall_at_lead),
        ]);
        t.add_row(vec![
            "median lead time, days".to_owned(),
            iv(&self.median_lead_days, 1),
        ]);
        t.add_row(vec![
            "alerts per healthy account-month".to_owned(),
            iv(&self.noise_per_account_month, 3),
        ]);
        let mut rules = Table::new();
        rules.load_style(UTF8_FULL_CONDENSED);
        rules.set_header(vec!["rule", "opened", "churners warned", "on accounts that stayed"]);
        for r in &self.rules {
            rules.add_row(vec![
                r.rule.to_owned(),
                r.opened.to_string(),
                r.churners_caught.to_string(),
                r.on_healthy.to_string(),
            ]);
        }
        let mut s = format!(
            "{} accounts, {} churned; {} observations on {} dates.\n{t}\n{rules}\n",
            self.accounts, self.churners, self.observations, self.observation_dates
        );
        if predicts_nothing(&self.score_auc) {
            let _ = writeln!(
                s,
                "The score's AUC interval reaches 0.5: on this history it does not tell churners from the others."
            );
        }
        s
    }
}

/// One component's figures in `rapport calibrate`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentFigures {
    pub component: &'static str,
    /// Share of held-out observations where the component had data.
    pub coverage: f64,
    /// Held-out AUC of the component alone (lower value = more risk).
    pub auc: Option<Interval>,
    /// Held-out churn rate in the component's lowest fifth, over the overall rate.
    pub lift: Option<f64>,
    /// How much one standard deviation more of the component lowers the log-odds of churn in
    /// the fitted model (its standardised coefficient, sign flipped): what ranks components.
    pub importance: f64,
    /// Fitted weight (0 for a component that does not lower risk as it rises): the per-point
    /// coefficient, so the weighted score orders accounts as the model does.
    pub weight: f64,
    pub current_weight: f64,
}

/// What `rapport calibrate` found.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub train_observations: usize,
    pub test_observations: usize,
    /// First observation date of the held-out part (UTC day number).
    pub split_day: i32,
    pub components: Vec<ComponentFigures>,
    /// Held-out AUC of the fitted model and of the current scorecard.
    pub fitted_auc: Option<Interval>,
    pub current_auc: Option<Interval>,
    /// The fitted weights sum to 1; `None` when the history shows no signal to fit.
    pub weights: Option<[f64; N_COMPONENTS]>,
    /// Why no weights were written, when they were not.
    pub refusal: Option<String>,
}

/// Fits scorecard weights on the earlier `train_fraction` of observation dates and judges them
/// on the rest.
pub fn calibrate(r: &Replayed, cfg: &Config, train_fraction: f64) -> Calibration {
    let days = r.observation_days();
    let split_day = days
        .get(((days.len() as f64) * train_fraction.clamp(0.1, 0.9)) as usize)
        .copied()
        .unwrap_or(i32::MAX);
    // A training row's label looks `horizon` days ahead: rows whose horizon reaches into the
    // held-out dates would leak them, so training stops a horizon before the split.
    let train_end = split_day - r.opts.horizon_days as i32;
    let train: Vec<&Observation> = r.observations.iter().filter(|o| o.day < train_end).collect();
    let test: Vec<&Observation> = r.observations.iter().filter(|o| o.day >= split_day).collect();
    let feature = |o: &Observation, i: usize| o.values[i].unwrap_or(f64::NAN);
    let x_of = |rows: &[&Observation]| -> Vec<Vec<f64>> {
        rows.iter()
            .map(|o| (0..N_COMPONENTS).map(|i| feature(o, i)).collect())
            .collect()
    };
    let y_train: Vec<bool> = train.iter().map(|o| o.churns).collect();
    let y_test: Vec<bool> = test.iter().map(|o| o.churns).collect();
    let test_clusters = clusters(&test);

    let mut comps = Vec::new();
    for (i, c) in COMPONENTS.iter().enumerate() {
        let with: Vec<usize> = (0..test.len()).filter(|&k| test[k].values[i].is_some()).collect();
        let risk: Vec<f64> = with.iter().map(|&k| -feature(test[k], i)).collect();
        let lab: Vec<bool> = with.iter().map(|&k| y_test[k]).collect();
        let cl: Vec<u32> = with.iter().map(|&k| test_clusters[k]).collect();
        let vals: Vec<f64> = with.iter().map(|&k| feature(test[k], i)).collect();
        comps.push(ComponentFigures {
            component: c.name(),
            coverage: if test.is_empty() { 0.0 } else { with.len() as f64 / test.len() as f64 },
            auc: stats::auc_interval(&risk, &lab, &cl, BOOTSTRAP, SEED),
            lift: stats::lift(&vals, &lab, 0.2),
            importance: 0.0,
            weight: 0.0,
            current_weight: c.weight(cfg),
        });
    }
    let current = |rows: &[&Observation]| -> (Vec<f64>, Vec<bool>, Vec<u32>) {
        let s: Vec<&&Observation> = rows.iter().filter(|o| o.score.is_some()).collect();
        (
            s.iter().map(|o| 100.0 - o.score.unwrap_or(0) as f64).collect(),
            s.iter().map(|o| o.churns).collect(),
            s.iter().map(|o| o.account).collect(),
        )
    };
    let (cr, cl, cc) = current(&test);
    let current_auc = stats::auc_interval(&cr, &cl, &cc, BOOTSTRAP, SEED);

    // Components with data in at least 5% of the training rows take part in the fit.
    let used: Vec<usize> = (0..N_COMPONENTS)
        .filter(|&i| {
            let n = train.iter().filter(|o| o.values[i].is_some()).count();
            !train.is_empty() && n as f64 / train.len() as f64 >= 0.05
        })
        .collect();
    let pick = |x: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        x.into_iter()
            .map(|row| used.iter().map(|&i| row[i]).collect())
            .collect()
    };
    let mut out = Calibration {
        train_observations: train.len(),
        test_observations: test.len(),
        split_day,
        components: comps,
        fitted_auc: None,
        current_auc,
        weights: None,
        refusal: None,
    };
    let model = match Logistic::fit(&pick(x_of(&train)), &y_train, 1.0) {
        Ok(m) => m,
        Err(e) => {
            out.refusal = Some(format!("the weights could not be fitted: {e}."));
            return out;
        }
    };
    let test_x = pick(x_of(&test));
    let p: Vec<f64> = test_x.iter().map(|x| model.predict(x)).collect();
    out.fitted_auc = stats::auc_interval(&p, &y_test, &test_clusters, BOOTSTRAP, SEED);
    // Health rises as risk falls: a component's weight is its (per point) risk reduction.
    let coef = model.coef_unscaled();
    let mut w = [0.0; N_COMPONENTS];
    for (k, &i) in used.iter().enumerate() {
        w[i] = (-coef[k]).max(0.0);
        out.components[i].importance = -model.coef[k];
    }
    let total: f64 = w.iter().sum();
    if predicts_nothing(&out.fitted_auc) {
        out.refusal = Some(
            "on the held-out dates the fitted weights do not tell churners from the others (their AUC interval reaches 0.5): this history shows no relation between the components and churn, so no new scorecard was written.".into(),
        );
        return out;
    }
    if total <= 0.0 {
        out.refusal = Some("no component lowers the churn risk as it rises; no new scorecard was written.".into());
        return out;
    }
    let w = rounded_weights(w.map(|x| x / total));
    for (i, c) in out.components.iter_mut().enumerate() {
        c.weight = w[i];
    }
    out.weights = Some(w);
    out
}

/// Weights rounded to three decimals that still sum to exactly 1 (the largest takes the rest).
fn rounded_weights(w: [f64; N_COMPONENTS]) -> [f64; N_COMPONENTS] {
    let mut r = w.map(|x| (x * 1000.0).round() / 1000.0);
    let rest = 1.0 - r.iter().sum::<f64>();
    let (big, _) = r
        .iter()
        .enumerate()
        .fold((0, f64::MIN), |(bi, bv), (i, v)| if *v > bv { (i, *v) } else { (bi, bv) });
    r[big] = ((r[big] + rest) * 1000.0).round() / 1000.0;
    r
}

impl Calibration {
    /// Components ranked by importance in the fitted model, largest first.
    pub fn ranking(&self) -> Vec<&ComponentFigures> {
        let mut v: Vec<&ComponentFigures> = self.components.iter().collect();
        v.sort_by(|a, b| {
            b.importance
                .total_cmp(&a.importance)
                .then(a.component.cmp(b.component))
        });
        v
    }

    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "component",
            "data in",
            "held-out AUC [95%]",
            "lift, lowest fifth",
            "importance",
            "weight now",
            "fitted weight",
        ]);
        for c in self.ranking() {
            t.add_row(vec![
                c.component.to_owned(),
                format!("{:.0}%", c.coverage * 100.0),
                iv(&c.auc, 3),
                c.lift.map_or("n/a".into(), |l| format!("{l:.2}×")),
                if self.fitted_auc.is_some() { format!("{:+.2}", c.importance) } else { "-".into() },
                format!("{:.3}", c.current_weight),
                if self.weights.is_some() { format!("{:.3}", c.weight) } else { "-".into() },
            ]);
        }
        let mut s = format!(
            "Trained on {} observations, judged on {} later ones (from {}).\n{t}\nheld-out AUC: current weights {}, fitted weights {}\n",
            self.train_observations,
            self.test_observations,
            crate::codec::time::format_day(self.split_day),
            iv(&self.current_auc, 3),
            iv(&self.fitted_auc, 3),
        );
        if let Some(r) = &self.refusal {
            let _ = writeln!(s, "No new scorecard: {r}");
        }
        s
    }

    /// A scorecard file with the fitted weights (and the rest of `cfg`'s scorecard, so it loads
    /// as a configuration on its own), to be reviewed and merged into a config.
    pub fn scorecard_toml(&self, cfg: &Config, source: &str) -> Option<String> {
        let w = self.weights?;
        #[derive(Serialize)]
        struct File<'a> {
            scorecard: &'a crate::config::Scorecard,
        }
        let mut sc = cfg.scorecard.clone();
        for (c, w) in COMPONENTS.iter().zip(w) {
            *c.weight_mut(&mut sc.components) = w;
        }
        let mut s = String::new();
        let _ = writeln!(s, "# Scorecard weights fitted by `rapport calibrate` on {source}.");
        let _ = writeln!(
            s,
            "# {} training and {} held-out observations; held-out AUC {} with these weights, {} with the current ones.",
            self.train_observations,
            self.test_observations,
            iv(&self.fitted_auc, 3),
            iv(&self.current_auc, 3)
        );
        let _ = writeln!(s, "# Review before use: it changes nothing until a run is given it (or it is merged into that run's configuration).");
        let _ = writeln!(s, "#\n# component          weight now -> fitted   held-out AUC alone");
        for f in &self.components {
            let _ = writeln!(
                s,
                "# {:<18} {:>10.3} -> {:<6.3}   {}",
                f.component,
                f.current_weight,
                f.weight,
                iv(&f.auc, 3)
            );
        }
        s.push('\n');
        s.push_str(&toml::to_string(&File { scorecard: &sc }).ok()?);
        Some(s)
    }
}
