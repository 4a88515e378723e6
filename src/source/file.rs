//! NDJSON files as a source: one record per line, positions are byte offsets, so a killed run
//! resumes exactly after the last line it committed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{InputBatch, Poll, RecordMeta, Source, SourceError};

enum Input {
    Files(Vec<PathBuf>),
    Stdin,
}

pub struct FileSource {
    input: Input,
    keys: Vec<String>,
    positions: Vec<u64>,
    current: usize,
    reader: Option<Box<dyn BufRead + Send>>,
    follow: bool,
    max_record_bytes: usize,
    total_bytes: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The files an input names: the file itself, or a directory's `*.ndjson` / `*.jsonl` /
/// `*.json` files in name order (an error when it has none or cannot be read).
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        SourceError::Config(format!(
            "cannot read input {}: {e}. Pass an existing NDJSON file, a directory of them, or - for stdin.",
            path.display()
        ))
    })?;
    Ok(if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("ndjson" | "jsonl" | "json")
                )
            })
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(SourceError::Config(format!(
                "the input directory {} holds no .ndjson, .jsonl or .json files.",
                path.display()
            )));
        }
        v
    } else {
        vec![path.to_owned()]
    })
}

impl FileSource {
    /// `input`: a file, a directory (its `*.ndjson` / `*.jsonl` files in name order), or "-".
    pub fn open(
        input: &str,
        follow: bool,
        max_record_bytes: usize,
    ) -> Result<FileSource, SourceError> {
        if input.is_empty() {
            return Err(SourceError::Config(
                "no input given: pass --input FILE|DIR|- or set embedded.input in the config."
                    .into(),
            ));
        }
        let (input, keys) = if input == "-" {
            (Input::Stdin, vec!["stdin".to_owned()])
        } else {
            let files = input_files(Path::new(input))?;
            let keys = files
                .iter()
                .map(|p| {
                    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                    format!("file:{}", abs.display())
                })
                .collect();
            (Input::Files(files), keys)
        };
        let n = keys.len();
        let total_bytes = match &input {
            Input::Files(f) => f
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum(),
            Input::Stdin => 0,
        };
        Ok(FileSource {
            input,
            keys,
            positions: vec![0; n],
            current: 0,
            reader: None,
            follow,
            max_record_bytes,
            total_bytes,
        })
    }

    fn open_current(&mut self) -> Result<bool, SourceError> {
        if self.reader.is_some() {
            return Ok(true);
        }
        match &self.input {
            Input::Stdin => {
                self.reader = Some(Box::new(BufReader::with_capacity(
                    1 << 20,
                    std::io::stdin(),
                )));
            }
            Input::Files(files) => {
                let Some(path) = files.get(self.current) else {
                    return Ok(false);
                };
                let mut f = File::open(path).map_err(|e| io_err(path, e))?;
                let len = f.metadata().map_err(|e| io_err(path, e))?.len();
                let pos = self.positions[self.current];
                if pos > len {
                    return Err(SourceError::Config(format!(
                        "input {} is shorter ({len} bytes) than the stored position ({pos}); it was replaced or truncated. Use a new --data-dir, or `rapport replay`, to start over.",
                        path.display()
                    )));
                }
                f.seek(SeekFrom::Start(pos)).map_err(|e| io_err(path, e))?;
                self.reader = Some(Box::new(BufReader::with_capacity(1 << 20, f)));
            }
        }
        Ok(true)
    }

    /// Reads one line into `batch.buf`, at most `max_record_bytes` of it (the rest is skipped).
    /// Returns (bytes consumed including the newline, kept length, complete line?).
    fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<(u64, usize, bool)> {
        let limit = self.max_record_bytes;
        let reader = self.reader.as_mut().expect("open");
        let start = buf.len();
        let mut consumed = 0u64;
        loop {
            let avail = reader.fill_buf()?;
            if avail.is_empty() {
                return Ok((consumed, buf.len() - start, false));
            }
            let (chunk, found) = match memchr::memchr(b'\n', avail) {
                Some(i) => (&avail[..=i], true),
                None => (avail, false),
            };
            let room = (limit + 1).saturating_sub(buf.len() - start);
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let n = chunk.len();
            consumed += n as u64;
            reader.consume(n);
            if found {
                return Ok((consumed, buf.len() - start, true));
            }
        }
    }
}

impl Source for FileSource {
    fn sources(&self) -> &[String] {
        &self.keys
    }

    fn resume(&mut self, positions: &HashMap<String, u64>) -> Result<(), SourceError> {
        for (i, k) in self.keys.iter().enumerate() {
            self.positions[i] = positions.get(k).copied().unwrap_or(0);
        }
        if matches!(self.input, Input::Stdin) && self.positions[0] > 0 {
            // stdin cannot seek: skip what an earlier run committed.
            self.open_current()?;
            let skip = self.positions[0];
            let r = self.reader.as_mut().expect("open");
            std::io::copy(&mut r.take(skip), &mut std::io::sink())
                .map_err(|e| io_err(Path::new("stdin"), e))?;
        }
        self.reader = None;
        if matches!(self.input, Input::Stdin) {
            self.open_current()?;
        }
        Ok(())
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        batch: &mut InputBatch,
    ) -> Result<Poll, SourceError> {
        let deadline = Instant::now() + wait;
        let mut added = 0;
        loop {
            if !self.open_current()? {
                return Ok(if added > 0 { Poll::Records } else { Poll::End });
            }
            while added < max {
                let start = batch.buf.len();
                let path = self.keys[self.current].clone();
                let (consumed, kept, complete) = self
                    .read_line(&mut batch.buf)
                    .map_err(|e| SourceError::Io { path, source: e })?;
                if consumed == 0 {
                    break;
                }
                let at_end_of_file = !complete;
                if at_end_of_file && self.follow {
                    // A followed file may still be writing this line: read it again, whole,
                    // from its start on a later poll.
                    batch.buf.truncate(start);
                    self.reader = None;
                    break;
                }
                let offset = self.positions[self.current];
                let next = offset + consumed;
                self.positions[self.current] = next;
                let line_len = consumed - complete as u64;
                let oversized = (line_len > self.max_record_bytes as u64).then_some(line_len);
                let mut end = start + kept.min(line_len as usize).min(self.max_record_bytes);
                if oversized.is_none() && batch.buf[start..end].ends_with(b"\r") {
                    end -= 1;
                }
                batch.buf.truncate(end);
                batch.records.push(RecordMeta {
                    source: self.current as u32,
                    offset,
                    next,
                    start,
                    end,
                    partition: None,
                    oversized,
                });
                added += 1;
                if at_end_of_file {
                    break;
                }
            }
            if added >= max {
                return Ok(Poll::Records);
            }
            // End of the current file.
            match &self.input {
                Input::Files(files) if self.current + 1 < files.len() => {
                    self.current += 1;
                    self.reader = None;
                    continue;
                }
                _ => {}
            }
            if added > 0 {
                return Ok(Poll::Records);
            }
            if !self.follow {
                return Ok(Poll::End);
            }
            if Instant::now() >= deadline {
                return Ok(Poll::Idle);
            }
            // Following a file: nothing new yet. Re-open to see appended data.
            std::thread::sleep(Duration::from_millis(20).min(wait));
            if let Input::Files(_) = self.input {
                self.reader = None;
            }
        }
    }

    fn progress(&self) -> Option<(u64, u64)> {
        match &self.input {
            Input::Files(files) => {
                let done: u64 = (0..files.len()).map(|i| self.positions[i]).sum();
                Some((done, self.total_bytes))
            }
            Input::Stdin => None,
        }
    }
}
