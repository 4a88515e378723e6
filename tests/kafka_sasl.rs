//! TLS/SASL settings pass through `[kafka.client]` to librdkafka, against the local broker's
//! SASL_PLAINTEXT/PLAIN listener (`deploy/local/kafka.sh start --sasl`, which `./dev.sh test`
//! does), and secrets never appear in what rapport prints.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

fn sasl_addr() -> String {
    std::env::var("RAPPORT_TEST_KAFKA_SASL").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

fn config(dir: &Path, password: &str, suffix: &str) -> std::path::PathBuf {
    let p = dir.join(format!("sasl-{suffix}.toml"));
    let toml = format!(
        r#"mode = "kafka"
[engine]
partitions = 2
[store]
data_dir = "{data}"
[kafka]
brokers = "{addr}"
group_id = "sasl-{suffix}"
output_partitions = 2
changelog_topic = "sasl.{suffix}.changelog"
[kafka.input_topics]
product_usage = "sasl.{suffix}.usage"
email = "sasl.{suffix}.email"
call = "sasl.{suffix}.call"
deal = "sasl.{suffix}.deal"
[kafka.output_topics]
health_scores = "sasl.{suffix}.scores"
churn_alerts = "sasl.{suffix}.alerts"
dlq = "sasl.{suffix}.dlq"
[kafka.client]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "rapport"
"sasl.password" = "{password}"
[telemetry]
listen = ""
"#,
        data = dir.join(format!("data-{suffix}")).display(),
        addr = sasl_addr(),
    );
    std::fs::write(&p, toml).unwrap();
    p
}

/// Topic and group names of their own for one test: the process id alone repeats across runs
/// against a broker that keeps its data, and `topics create` then finds the topics there.
fn suffix(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}{}x{:x}", std::process::id(), nanos % (1 << 40))
}

/// A child that is killed if the test fails while it runs, instead of outliving it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn reachable() {
    let addr = sasl_addr();
    assert!(
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)).is_ok(),
        "no SASL listener at {addr}: start the local broker with `deploy/local/kafka.sh start --sasl` (./dev.sh test does), or set RAPPORT_TEST_KAFKA_SASL"
    );
}

#[test]
fn sasl_plain_credentials_pass_through_and_stay_secret() {
    reachable();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "rapport-secret", &suffix("ok"));

    let out = Command::new(BIN).args(["topics", "create", "--config"]).arg(&cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "topics create over SASL failed:\n{text}");
    assert!(text.contains("created"), "{text}");
    assert!(!text.contains("rapport-secret"), "the password was printed:\n{text}");

    // A run logs its client settings at start: the password must show as asterisks.
    let mut child = Running(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&log).contains("Partitions assigned") {
        assert!(Instant::now() < deadline, "no partition assignment over SASL within 60 s:\n{}", String::from_utf8_lossy(&log));
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            log.extend(chunk);
        }
    }
    Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status().unwrap();
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < stop_deadline, "rapport did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        log.extend(chunk);
    }
    let log = String::from_utf8_lossy(&log);
    assert!(status.success(), "rapport did not stop cleanly on SIGTERM:\n{log}");
    assert!(log.contains("sasl.password") && log.contains("********"), "settings not logged redacted:\n{log}");
    assert!(!log.contains("rapport-secret"), "the password was printed:\n{log}");
}

#[test]
fn a_wrong_password_is_refused_with_a_clear_error_that_does_not_echo_it() {
    reachable();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "not-the-password-42", &suffix("bad"));
    let out = Command::new(BIN).args(["topics", "check", "--config"]).arg(&cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong password was accepted:\n{text}");
    assert!(text.contains("cannot reach Kafka") || text.to_lowercase().contains("authentication"), "{text}");
    assert!(!text.contains("not-the-password-42"), "the password was printed:\n{text}");
}
