//! Scorecards judged against churn histories whose cause is known: `rapport calibrate` must find
//! the hidden rule (and say so when there is none), `rapport evaluate` must measure the alerts.

use rapport::churn::report::{calibrate, evaluate, predicts_nothing};
use rapport::churn::sim::{self, ChurnRule, SimSpec};
use rapport::churn::{ReplayOpts, Replayed, replay};
use rapport::config::Config;

fn config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outcome.toml");
    std::fs::write(&path, sim::outcome_scorecard_toml()).unwrap();
    Config::load(Some(&path)).unwrap()
}

fn history(rule: ChurnRule, seed: u64, cfg: &Config) -> Replayed {
    let spec = SimSpec {
        accounts: 1_000,
        days: 300,
        seed,
        rule,
        ..SimSpec::default()
    };
    let opts = ReplayOpts {
        horizon_days: 60,
        ..ReplayOpts::default()
    };
    replay(sim::events(&spec), cfg, opts)
}

#[test]
fn calibration_finds_the_outcome_rule_and_the_default_alerts_warn_ahead() {
    let cfg = config();
    let r = history(ChurnRule::Outcome, 11, &cfg);
    assert!(r.churners() > 100, "{} churners", r.churners());
    let c = calibrate(&r, &cfg, 0.6);
    println!("{}", c.table());
    let ranking = c.ranking();
    assert_eq!(ranking[0].component, "outcome", "{}", c.table());
    let auc = c.fitted_auc.expect("fitted");
    assert!(auc.estimate >= 0.8 && auc.low > 0.5, "held-out AUC {auc:?}");
    let w = c.weights.expect("weights were fitted");
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);

    // The written scorecard loads as a configuration and carries the fitted weights.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scorecard.toml");
    std::fs::write(&path, c.scorecard_toml(&cfg, "test history").unwrap()).unwrap();
    let fitted = Config::load(Some(&path)).expect("the calibrated scorecard is a valid config");
    assert_eq!(fitted.scorecard.components.outcome.weight, w[7]);
    assert_eq!(fitted.scorecard.components.outcome.features, cfg.scorecard.components.outcome.features);

    // The default alert rules see most churners coming, three weeks or more ahead.
    let e = evaluate(&r, 21);
    println!("{}", e.table());
    let early = e.recall_at_lead.expect("churners");
    assert!(early.estimate > 0.5, "alerted ≥ 21 days ahead: {early:?}");
    assert!(e.median_lead_days.unwrap().estimate >= 21.0);
    // And a scorecard that weighs outcomes ranks churners better than the default one.
    let r2 = history(ChurnRule::Outcome, 11, &fitted);
    let e2 = evaluate(&r2, 21);
    assert!(
        e2.score_auc.unwrap().estimate > e.score_auc.unwrap().estimate,
        "fitted {:?} vs default {:?}",
        e2.score_auc,
        e.score_auc
    );
}

#[test]
fn random_churn_is_reported_as_unpredictable_and_nothing_is_written() {
    let cfg = config();
    let r = history(ChurnRule::Random, 5, &cfg);
    assert!(r.churners() > 100);
    let c = calibrate(&r, &cfg, 0.6);
    println!("{}", c.table());
    assert!(c.weights.is_none(), "weights fitted on noise: {}", c.table());
    assert!(c.refusal.is_some());
    assert!(c.scorecard_toml(&cfg, "x").is_none());
    let e = evaluate(&r, 21);
    let auc = e.score_auc.expect("scored");
    assert!(predicts_nothing(&e.score_auc), "AUC {auc:?} on random churn");
    assert!((auc.estimate - 0.5).abs() < 0.08, "AUC {auc:?}");
}

#[test]
fn replay_is_deterministic_with_peer_levels_on() {
    let mut cfg = config();
    cfg.scorecard.peers.components = vec!["outcome".into(), "usage_frequency".into()];
    cfg.scorecard.peers.min_peers = 5;
    let spec = SimSpec {
        accounts: 200,
        days: 200,
        ..SimSpec::default()
    };
    let opts = ReplayOpts::default();
    let mut events = sim::events(&spec);
    let a = replay(events.clone(), &cfg, opts);
    // The same history in another order (and with a duplicate) gives the same observations.
    events.reverse();
    let dup = events[10].clone();
    events.push(dup);
    let b = replay(events, &cfg, opts);
    assert_eq!(b.duplicates, 1);
    assert_eq!(a.observations, b.observations);
    assert_eq!(a.alerts, b.alerts);
    // The percentiles were in use: the outcome values differ from the absolute scoring's.
    let plain = replay(sim::events(&spec), &config(), opts);
    assert_ne!(a.observations, plain.observations);
}

#[test]
fn bad_arguments_and_histories_get_one_sentence_each() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("nope.ndjson");
    let e = run(&["evaluate", missing.to_str().unwrap()]);
    assert!(e.contains("nope.ndjson") && e.contains("Pass an existing NDJSON or .pb file"), "{e}");

    let short = dir.path().join("short.ndjson");
    let spec = SimSpec { accounts: 5, days: 61, ..SimSpec::default() };
    rapport::app::write_events(sim::events(&spec), &short, 3).unwrap();
    let e = run(&["evaluate", short.to_str().unwrap()]);
    assert!(e.contains("too short") && e.contains("--horizon-days"), "{e}");
    let e = run(&["calibrate", short.to_str().unwrap(), "--train-fraction", "1.5"]);
    assert!(e.contains("--train-fraction is 1.5"), "{e}");
    let e = run(&["evaluate", short.to_str().unwrap(), "--horizon-days", "0"]);
    assert!(e.contains("at least 1"), "{e}");
}
