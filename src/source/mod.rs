//! Where input records come from. A source fills an [`InputBatch`]; every record carries the
//! position *after* it, which the pipeline stores with the state in the same atomic write.

pub mod changelog;
pub mod file;
pub mod kafka;

use std::collections::HashMap;
use std::time::Duration;

/// One record of a batch; its bytes are `batch.buf[start..end]`.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    /// Index into [`Source::sources`].
    pub source: u32,
    /// Position of the record (Kafka offset, or byte offset in a file).
    pub offset: u64,
    /// Position to resume from once this record is processed.
    pub next: u64,
    pub start: usize,
    pub end: usize,
    /// The account partition, when the source knows it (Kafka); otherwise derived from the key.
    pub partition: Option<u16>,
    /// The record was longer than the limit: only its first bytes are kept, this is its length.
    pub oversized: Option<u64>,
}

/// Records polled together; the buffer is reused from batch to batch.
#[derive(Debug, Default)]
pub struct InputBatch {
    pub buf: Vec<u8>,
    pub records: Vec<RecordMeta>,
}

impl InputBatch {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records.clear();
    }
    pub fn bytes(&self, r: &RecordMeta) -> &[u8] {
        &self.buf[r.start..r.end]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were added to the batch.
    Records,
    /// Nothing new yet (a followed file, an idle topic).
    Idle,
    /// The input is finished.
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read input {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// A source of input records.
pub trait Source {
    /// The keys under which positions are stored (e.g. "file:/data/events.ndjson"), by index.
    fn sources(&self) -> &[String];
    /// Continues each source from its stored position (missing ones start at the beginning).
    fn resume(&mut self, positions: &HashMap<String, u64>) -> Result<(), SourceError>;
    /// Adds up to `max` records to `batch`, waiting at most `wait` for the first.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        batch: &mut InputBatch,
    ) -> Result<Poll, SourceError>;
    /// Bytes read and bytes in total, for a progress bar, when known.
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
}
