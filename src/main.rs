//! The `rapport` command line: parse, load config, start telemetry, call the app.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use rapport::app::{self, RunOptions, Shutdown};
use rapport::config::Config;
use rapport::generate::{GenSpec, Portfolio};
use rapport::store::RocksStore;
use rapport::telemetry::{self, http::Health};

// mimalloc: the batch loop allocates and frees many small buffers; glibc's allocator showed up
// at a fifth of the profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rapport — folds product, email, call and CRM events per customer account into engagement
/// state, scores each account's health and streams score changes and churn alerts.
#[derive(Parser)]
#[command(name = "rapport", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a synthetic portfolio, run it through the engine and print what a customer-success lead would see.
    Demo(DemoArgs),
    /// Run the job: event files (NDJSON or length-delimited protobuf) in, RocksDB state, health scores and churn alerts out.
    Run(RunArgs),
    /// Write a synthetic portfolio as NDJSON, or as length-delimited protobuf for a .pb / .binpb name (input for `run`, tests and benchmarks).
    Generate(GenerateArgs),
    /// Show one account's state, score, components, drivers and open alerts from the store.
    Inspect(InspectArgs),
    /// Rebuild all state from the input log into a fresh store, then swap it in.
    Replay(RunArgs),
    /// Benchmarks: `rapport bench kafka` compares a raw librdkafka consumer with rapport on the same topics.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Print the reference table of every metric rapport exports (Markdown).
    Metrics,
    /// Show a running Kafka-mode instance's partitions: phase, positions, lag, restore progress.
    Status {
        /// The instance's telemetry address (`telemetry.listen`).
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Print the raw JSON of `/status` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send an NDJSON file of events to the Kafka input topics (for trials, tests and benchmarks).
    Produce(ProduceArgs),
    /// Judge the scorecard on a churn history: score AUC, alert recall and lead time, alert noise.
    Evaluate(HistoryArgs),
    /// Fit scorecard weights to a churn history and write them to a file for review.
    Calibrate(CalibrateArgs),
    /// Write a synthetic churn history (churn following a known rule) as NDJSON.
    GenerateHistory(GenerateHistoryArgs),
    /// Kafka topics: `rapport topics create --config FILE` creates the input, output and DLQ topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The same events processed by 1, 2, 3 instances in one group; a restore of everything
    /// from the changelog by a new instance; the failover time after a SIGKILL.
    Scale {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 100_000)]
        accounts: usize,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Instance counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        instances: Vec<usize>,
        /// The instances' kafka.session_timeout_ms (6000 is the broker's minimum).
        #[arg(long, default_value_t = 6000)]
        session_timeout_ms: u64,
    },
    /// Contenders side by side on the same pre-produced topics of the configured broker: raw
    /// librdkafka consume, rapport in Kafka mode (JSON and protobuf input), rapport embedded on the
    /// same events from a file, and the Kafka Streams peer (at-least-once and exactly_once_v2);
    /// then each one's latency at one fixed input rate. Prints one table.
    Kafka {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 100_000)]
        accounts: usize,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Contenders to run, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = rapport::bench::Contender::ALL)]
        contenders: Vec<rapport::bench::Contender>,
        /// Seconds of steady input for each latency measurement (0: none).
        #[arg(long, default_value_t = 20)]
        latency_seconds: u64,
        /// Events/s of the latency measurements, comma-separated for several (a latency curve,
        /// printed as a second table); default: half of rapport's measured maximum.
        #[arg(long, value_delimiter = ',')]
        latency_rate: Vec<f64>,
        /// The Kafka Streams peer's launcher.
        #[arg(long, default_value = "benches/peers/kafka-streams/run.sh")]
        peer: PathBuf,
    },
    /// The curve: `bench kafka` at every combination of account and event counts; one table of
    /// throughput and peak memory per contender and size, also written as CSV.
    Curve {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        accounts: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        events: Vec<u64>,
        /// Contenders to run, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = rapport::bench::Contender::ALL)]
        contenders: Vec<rapport::bench::Contender>,
        #[arg(long, default_value = "benches/peers/kafka-streams/run.sh")]
        peer: PathBuf,
        /// Where to write the curve's CSV.
        #[arg(long, default_value = "bench-curve.csv")]
        csv: PathBuf,
        /// Where to draw the curve as an SVG image (events/s and peak RSS against accounts).
        #[arg(long, default_value = "bench-curve.svg")]
        plot: PathBuf,
    },
    /// Draws a curve's CSV (as `bench curve` writes it) as an SVG image.
    Plot {
        /// The CSV.
        csv: PathBuf,
        /// The image to write.
        #[arg(long, short, default_value = "bench-curve.svg")]
        out: PathBuf,
    },
    /// Reads every record of the configured input topics and discards it; prints one JSON line
    /// (the raw-consume contender of `bench kafka`).
    #[command(hide = true)]
    RawConsume {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long)]
        expect: u64,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create missing topics with the configured partition counts and replication.
    Create(CommonArgs),
    /// Check that the input topics exist and are co-partitioned.
    Check(CommonArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// Configuration file (TOML), layered over the built-in defaults (config/default.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// RocksDB directory (overrides store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Input: an NDJSON or .pb (length-delimited protobuf) file, a directory of them, or - for NDJSON on stdin (overrides embedded.input).
    #[arg(long, short)]
    input: Option<String>,
    /// Output directory for health_scores.ndjson, churn_alerts.ndjson, dlq.ndjson (overrides embedded.output_dir).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Keep reading a growing file.
    #[arg(long)]
    follow: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Accounts in the synthetic portfolio.
    #[arg(long, default_value_t = 2000)]
    accounts: usize,
    /// Days of history.
    #[arg(long, default_value_t = 120)]
    days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Working directory for the demo's input, store and outputs (recreated).
    #[arg(long, default_value = "rapport-demo")]
    dir: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    /// Output file.
    #[arg(long, short)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    #[arg(long, default_value_t = 120)]
    days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Mean product-usage events per healthy account per day.
    #[arg(long, default_value_t = 4.0)]
    usage_per_day: f64,
    /// Insert one malformed record after every N events (0: none).
    #[arg(long, default_value_t = 0)]
    bad_every: u64,
}

#[derive(Args)]
struct HistoryArgs {
    /// NDJSON files of events (or directories of them); churn is marked by `cancellation` deals
    /// that are `closed_won`.
    #[arg(required = true)]
    history: Vec<PathBuf>,
    /// Configuration file whose scorecard and alert rules are judged.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// An observation counts as churning when the account cancels within this many days.
    #[arg(long, default_value_t = 90)]
    horizon_days: u32,
    /// Days between observation dates.
    #[arg(long, default_value_t = 7)]
    every_days: u32,
    /// Days of history before the first observation date.
    #[arg(long, default_value_t = 35)]
    warmup_days: u32,
    /// The lead time an alert must have to count as early.
    #[arg(long, default_value_t = 21)]
    lead_days: u32,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    history: HistoryArgs,
    /// Where to write the fitted scorecard (TOML, for review; nothing reads it by itself).
    #[arg(long, short, default_value = "scorecard.calibrated.toml")]
    out: PathBuf,
    /// Share of the observation dates, earliest first, used to fit; the rest judge the fit.
    #[arg(long, default_value_t = 0.6)]
    train_fraction: f64,
}

#[derive(Args)]
struct GenerateHistoryArgs {
    /// Output file.
    #[arg(long, short)]
    out: PathBuf,
    #[arg(long, default_value_t = 2000)]
    accounts: usize,
    #[arg(long, default_value_t = 360)]
    days: u32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// What makes accounts churn.
    #[arg(long, value_enum, default_value_t = rapport::churn::sim::ChurnRule::Outcome)]
    rule: rapport::churn::sim::ChurnRule,
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// NDJSON file of events.
    #[arg(long, short)]
    input: PathBuf,
    /// Wire format of the records.
    #[arg(long, value_enum, default_value_t = app::WireFormat::Json)]
    format: app::WireFormat,
    /// Stamp each record with its event's occurred_at instead of the time it is sent (the
    /// topics' time-based retention then applies to event times).
    #[arg(long)]
    event_time: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The account id.
    account: String,
    #[command(flatten)]
    common: CommonArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Loads the configuration and replays the history with a progress line on stderr.
fn replay_history(a: &HistoryArgs) -> Result<(Config, rapport::churn::Replayed)> {
    if a.horizon_days == 0 || a.every_days == 0 {
        anyhow::bail!("--horizon-days and --every-days must be at least 1.");
    }
    let cfg = Config::load(a.config.as_deref())?;
    let (events, rejected) = rapport::churn::read_history(&a.history, &cfg)?;
    if rejected > 0 {
        eprintln!("{rejected} records are not valid events and were left out (`rapport run` would send them to the dead-letter output).");
    }
    let opts = rapport::churn::ReplayOpts {
        every_days: a.every_days,
        horizon_days: a.horizon_days,
        warmup_days: a.warmup_days,
    };
    let r = rapport::churn::replay(events, &cfg, opts);
    if r.observations.is_empty() {
        anyhow::bail!(
            "the history is too short for any observation: it needs more than warm-up ({} days) plus horizon ({} days) of events; pass a longer history or lower --horizon-days.",
            a.warmup_days,
            a.horizon_days
        );
    }
    Ok((cfg, r))
}

fn load(common: &CommonArgs) -> Result<Config> {
    let mut cfg = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        cfg.store.data_dir = d.clone();
    }
    Ok(cfg)
}

fn start_telemetry(cfg: &Config) -> Result<Option<Arc<Health>>> {
    telemetry::init_logs(&cfg.telemetry.log_format);
    if cfg.telemetry.listen.is_empty() {
        return Ok(None);
    }
    let health = Arc::new(Health::default());
    if let Some(handle) = telemetry::http::install_recorder() {
        let addr = cfg.telemetry.listen.parse().expect("validated");
        let bound = telemetry::http::serve(addr, handle, Arc::clone(&health))?;
        tracing::info!(address = %bound, "Serving /metrics, /healthz and /readyz.");
    }
    Ok(Some(health))
}

fn run_args(a: &RunArgs) -> Result<Config> {
    let mut cfg = load(&a.common)?;
    if let Some(i) = &a.input {
        cfg.embedded.input = i.clone();
    }
    if let Some(o) = &a.output {
        cfg.embedded.output_dir = o.clone();
    }
    if a.follow {
        cfg.embedded.follow = true;
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    // Before any thread: huge pages off, glibc's heap kept (see `rapport::memory`).
    rapport::memory::tune();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if rapport::store::disk::is_no_space(e.as_ref()) {
                eprintln!(
                    "The disk holding the store is full. What was committed is intact: free space (or grow the volume) and start rapport again; it goes on from its last batch. store.min_free_mb makes rapport pause before this happens."
                );
            }
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => {
            let cfg = Arc::new(run_args(&a)?);
            let health = start_telemetry(&cfg)?;
            let shutdown = Shutdown::new();
            shutdown.on_signals();
            let opts = RunOptions {
                progress: !a.quiet,
                shutdown,
                health,
            };
            if cfg.mode == rapport::config::Mode::Kafka {
                let s = app::run_kafka(Arc::clone(&cfg), &opts)?;
                println!(
                    "Stopped: {} records this run = {} folded + {} duplicates + {} dead-lettered; {} score changes; every output acknowledged by Kafka.",
                    s.records, s.folded, s.duplicates, s.dead_lettered, s.scores
                );
                return Ok(ExitCode::SUCCESS);
            }
            let summary = app::run_embedded(Arc::clone(&cfg), &opts)?;
            let store = RocksStore::open(&cfg.store)?;
            app::print_summary(&cfg, &summary, &store, None, &mut std::io::stdout())?;
            println!("Outputs in {}.", cfg.embedded.output_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay(a) => {
            let cfg = run_args(&a)?;
            let health = start_telemetry(&cfg)?;
            let shutdown = Shutdown::new();
            shutdown.on_signals();
            let opts = RunOptions {
                progress: !a.quiet,
                shutdown,
                health,
            };
            let summary = app::replay(&cfg, &opts)?;
            let store = RocksStore::open(&cfg.store)?;
            app::print_summary(&cfg, &summary, &store, None, &mut std::io::stdout())?;
            println!(
                "State rebuilt from the log into {} (the previous store is kept beside it as *.previous).",
                cfg.store.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate(a) => {
            let spec = GenSpec {
                accounts: a.accounts,
                days: a.days,
                seed: a.seed,
                usage_per_day: a.usage_per_day,
                ..GenSpec::default()
            };
            let p = Portfolio::new(spec);
            let (n, bad) = app::write_portfolio(&p, &a.out, a.bad_every)?;
            println!(
                "Wrote {n} events and {bad} malformed records for {} accounts to {}.",
                a.accounts,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Evaluate(a) => {
            let (_, r) = replay_history(&a)?;
            let e = rapport::churn::report::evaluate(&r, a.lead_days);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", e.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Calibrate(a) => {
            if !(a.train_fraction >= 0.1 && a.train_fraction <= 0.9) {
                anyhow::bail!(
                    "--train-fraction is {}; give the share of observation dates to fit on, between 0.1 and 0.9 (the rest judge the fit).",
                    a.train_fraction
                );
            }
            let (cfg, r) = replay_history(&a.history)?;
            let c = rapport::churn::report::calibrate(&r, &cfg, a.train_fraction);
            if a.history.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.table());
            }
            let source: Vec<String> = a.history.history.iter().map(|p| p.display().to_string()).collect();
            if let Some(toml) = c.scorecard_toml(&cfg, &source.join(", ")) {
                std::fs::write(&a.out, toml)
                    .with_context(|| format!("writing {}", a.out.display()))?;
                if !a.history.json {
                    println!(
                        "Wrote the fitted weights to {} for review; a run uses them only once they are merged into its configuration.",
                        a.out.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenerateHistory(a) => {
            let spec = rapport::churn::sim::SimSpec {
                accounts: a.accounts,
                days: a.days,
                seed: a.seed,
                rule: a.rule,
                ..Default::default()
            };
            let events = rapport::churn::sim::events(&spec);
            let churners = rapport::churn::sim::truths(&spec).iter().filter(|t| t.churn_day.is_some()).count();
            let (n, _) = app::write_events(events, &a.out, 0)?;
            println!(
                "Wrote {n} events of {} accounts ({churners} churn) to {}. Its outcome feature and plan expectations, to merge into a configuration:\n{}",
                a.accounts,
                a.out.display(),
                rapport::churn::sim::outcome_scorecard_toml()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect(a) => {
            let cfg = load(&a.common)?;
            let found = app::inspect(&cfg, &a.account, a.json, &mut std::io::stdout())?;
            Ok(if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Demo(a) => demo(a),
        Cmd::Status { url, json } => {
            let body = rapport::app::fetch_status(&url)?;
            if json {
                println!("{body}");
            } else {
                print!("{}", rapport::app::status_table(&body)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics => {
            print!("{}", telemetry::names::markdown_table());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { what: BenchWhat::Scale { common, accounts, events, instances, session_timeout_ms } } => {
            let cfg = load(&common)?;
            telemetry::init_logs(&cfg.telemetry.log_format);
            let b = rapport::bench::ScaleBench { accounts, events, instances, session_timeout_ms };
            rapport::bench::scale(&cfg, &b, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { what: BenchWhat::Kafka { common, accounts, events, contenders, latency_seconds, latency_rate, peer } } => {
            let cfg = load(&common)?;
            telemetry::init_logs(&cfg.telemetry.log_format);
            let b = rapport::bench::KafkaBench { accounts, events, contenders, latency_seconds, latency_rate, peer };
            let r = rapport::bench::kafka(&cfg, &b, &mut std::io::stdout())?;
            if r.alert_checks.iter().any(|(_, a, b, _)| *a + *b > 0) {
                eprintln!("error: a contender's alerts differ from rapport's (listed above); its figures do not compare like with like.");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { what: BenchWhat::Curve { common, accounts, events, contenders, peer, csv, plot } } => {
            let cfg = load(&common)?;
            telemetry::init_logs(&cfg.telemetry.log_format);
            let c = rapport::bench::CurveBench { accounts, events, contenders, peer, csv, plot: Some(plot) };
            rapport::bench::curve(&cfg, &c, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { what: BenchWhat::Plot { csv, out } } => {
            let points = rapport::bench::read_curve_csv(&csv)?;
            rapport::bench::plot_curve(&points, &out)?;
            println!("Drew {} points of {} into {}.", points.len(), csv.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { what: BenchWhat::RawConsume { common, expect } } => {
            let cfg = load(&common)?;
            let secs = rapport::bench::raw_consume(&cfg, expect)?;
            println!("{}", serde_json::json!({ "records": expect, "seconds": secs }));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Produce(a) => {
            let cfg = load(&a.common)?;
            telemetry::init_logs(&cfg.telemetry.log_format);
            let n = app::produce(&cfg, &a.input, a.format, a.event_time)?;
            println!(
                "Sent {n} records to the input topics at {}.",
                cfg.kafka.brokers
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Topics {
            action: TopicsAction::Create(c),
        } => {
            let cfg = load(&c)?;
            telemetry::init_logs(&cfg.telemetry.log_format);
            let mut t = comfy_table::Table::new();
            t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
                .set_header(vec!["topic", "partitions", "status"]);
            let mut failed = false;
            for (topic, p, status) in rapport::topics::create(&cfg)? {
                failed |= status.starts_with("failed");
                t.add_row(vec![topic, p.to_string(), status]);
            }
            println!("{t}");
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Topics {
            action: TopicsAction::Check(c),
        } => {
            let cfg = load(&c)?;
            rapport::topics::check(&cfg)?;
            println!(
                "The input topics exist and are co-partitioned with {} partitions.",
                cfg.engine.partitions
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn demo(a: DemoArgs) -> Result<ExitCode> {
    let mut cfg = Config::load(None)?;
    telemetry::init_logs(&cfg.telemetry.log_format);
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("clearing {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let input = a.dir.join("events.ndjson");
    let spec = GenSpec {
        accounts: a.accounts,
        days: a.days,
        seed: a.seed,
        ..GenSpec::default()
    };
    let portfolio = Portfolio::new(spec);
    println!(
        "Generating {} accounts over {} days (healthy, expanding, slow decliners, sudden drops, accounts going dark, negative calls, email trouble, lost renewals, newcomers)…",
        a.accounts, a.days
    );
    let (n, bad) = app::write_portfolio(&portfolio, &input, 5000)?;
    println!(
        "Wrote {n} events and {bad} malformed records to {}.\n",
        input.display()
    );

    cfg.embedded.input = input.display().to_string();
    cfg.embedded.output_dir = a.dir.join("out");
    cfg.store.data_dir = a.dir.join("data");
    cfg.telemetry.listen = String::new();
    let cfg = Arc::new(cfg);
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let opts = RunOptions {
        progress: true,
        shutdown,
        health: None,
    };
    let summary = app::run_embedded(Arc::clone(&cfg), &opts)?;
    let store = RocksStore::open(&cfg.store)?;

    let ids: std::collections::HashMap<String, &'static str> = (0..a.accounts)
        .map(|i| (portfolio.account_id(i), portfolio.archetype(i).name()))
        .collect();
    let label = |acct: &str| ids.get(acct).copied().unwrap_or("?").replace('_', " ");
    let worst = app::print_summary(&cfg, &summary, &store, Some(&label), &mut std::io::stdout())?;

    // How well did the alerts find the accounts that were built to churn?
    let alerts = std::fs::read_to_string(
        cfg.embedded
            .output_dir
            .join(rapport::sink::file::CHURN_ALERTS),
    )?;
    let mut alerted = std::collections::HashSet::new();
    for line in alerts.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if v["status"] == "open" {
                alerted.insert(v["account_id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let risky = [
        "sudden_drop",
        "goes_dark",
        "negative_call",
        "email_trouble",
        "lost_renewal",
        "slow_decline",
    ];
    let (mut at_risk, mut caught, mut healthy, mut noisy) = (0, 0, 0, 0);
    for (id, kind) in &ids {
        if risky.contains(kind) {
            at_risk += 1;
            caught += alerted.contains(id) as u32;
        } else if *kind == "healthy" {
            healthy += 1;
            noisy += alerted.contains(id) as u32;
        }
    }
    println!(
        "\nPlanted risks caught: {caught} of {at_risk} at-risk accounts raised at least one alert; {noisy} of {healthy} healthy accounts did."
    );
    if let Some(worst) = worst
    {
        println!(
            "Look closer:  ./dev.sh rapport inspect {worst} --data-dir {}\nOutputs:      {}",
            cfg.store.data_dir.display(),
            cfg.embedded.output_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
