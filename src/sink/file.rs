//! NDJSON files as a sink: `health_scores.ndjson`, `churn_alerts.ndjson` and `dlq.ndjson` in an
//! output directory, appended to. A dead letter is written as a JSON object holding the reason,
//! the sentence, where the record came from and the original bytes (base64, and as text when it
//! is UTF-8).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::{OutputKind, Sink, SinkError};
use crate::pb::OutboxRecord;

pub const HEALTH_SCORES: &str = "health_scores.ndjson";
pub const CHURN_ALERTS: &str = "churn_alerts.ndjson";
pub const DLQ: &str = "dlq.ndjson";

pub struct FileSink {
    dir: PathBuf,
    files: [BufWriter<File>; 3],
    sent_through: u64,
    line: Vec<u8>,
}

impl FileSink {
    pub fn open(dir: &Path) -> Result<FileSink, SinkError> {
        let err = |p: &Path, e| SinkError::Io {
            path: p.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let open = |name: &str| -> Result<BufWriter<File>, SinkError> {
            let p = dir.join(name);
            drop_partial_line(&p).map_err(|e| err(&p, e))?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| err(&p, e))?;
            Ok(BufWriter::with_capacity(1 << 20, f))
        };
        Ok(FileSink {
            dir: dir.to_owned(),
            files: [open(HEALTH_SCORES)?, open(CHURN_ALERTS)?, open(DLQ)?],
            sent_through: 0,
            line: Vec::new(),
        })
    }

    fn io(&self, e: std::io::Error) -> SinkError {
        SinkError::Io {
            path: self.dir.display().to_string(),
            source: e,
        }
    }
}

/// A process killed while writing can leave a partial last line. Its record is still in the
/// outbox (it was never confirmed) and will be written again whole, so the fragment goes.
fn drop_partial_line(p: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = OpenOptions::new().read(true).write(true).open(p) else {
        return Ok(());
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Scan back in chunks for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if end == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return f.set_len(start + i as u64 + 1);
        }
        if start == 0 {
            return f.set_len(0);
        }
        end = start;
    }
}

/// The JSON line of a dead letter in a file sink.
pub fn dead_letter_json(rec: &OutboxRecord, out: &mut Vec<u8>) {
    let h = |k: &str| {
        rec.headers
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), "dead_letter".into());
    obj.insert("reason".into(), h("reason").into());
    obj.insert("detail".into(), h("detail").into());
    obj.insert("source".into(), h("source").into());
    if let Ok(p) = h("partition").parse::<i64>() {
        obj.insert("partition".into(), p.into());
    }
    if let Ok(o) = h("offset").parse::<u64>() {
        obj.insert("offset".into(), o.into());
    }
    if let Ok(n) = h("original_length").parse::<u64>() {
        obj.insert("original_length".into(), n.into());
    }
    obj.insert(
        "original_base64".into(),
        base64::engine::general_purpose::STANDARD
            .encode(&rec.payload)
            .into(),
    );
    if let Ok(text) = std::str::from_utf8(&rec.payload) {
        obj.insert("original".into(), text.into());
    }
    serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj)).expect("writing to a Vec");
}

impl Sink for FileSink {
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        let kind = OutputKind::from_u32(rec.kind).ok_or_else(|| {
            SinkError::Other(format!("outbox record {seq} has unknown kind {}", rec.kind))
        })?;
        if kind == OutputKind::Changelog {
            // Embedded mode keeps its state in its own store; a changelog has no reader here.
            self.sent_through = seq + 1;
            return Ok(());
        }
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        match kind {
            OutputKind::DeadLetter => dead_letter_json(rec, &mut line),
            _ => line.extend_from_slice(&rec.payload),
        }
        line.push(b'\n');
        let r = self.files[kind as usize].write_all(&line);
        self.line = line;
        r.map_err(|e| self.io(e))?;
        self.sent_through = seq + 1;
        Ok(())
    }

    fn confirmed(&mut self, _wait: bool) -> Result<u64, SinkError> {
        // Written to the OS: a killed process loses nothing from here on.
        for i in 0..3 {
            self.files[i].flush().map_err(|e| SinkError::Io {
                path: self.dir.display().to_string(),
                source: e,
            })?;
        }
        Ok(self.sent_through)
    }
}
