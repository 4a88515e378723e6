//! Where outputs go: health-score changes, churn alerts and dead letters, drained from the outbox.
//! A sink confirms delivery by sequence number; the pipeline deletes from the outbox only what was
//! confirmed, so outputs are at-least-once and keep their ids when repeated.

pub mod file;
pub mod kafka;
pub mod seqs;

use crate::pb::OutboxRecord;

/// `OutboxRecord::kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    HealthScore = 0,
    ChurnAlert = 1,
    DeadLetter = 2,
    /// A changelog record (see [`crate::changelog`]); never given to a file sink.
    Changelog = 3,
}

impl OutputKind {
    pub fn from_u32(k: u32) -> Option<OutputKind> {
        match k {
            0 => Some(OutputKind::HealthScore),
            1 => Some(OutputKind::ChurnAlert),
            2 => Some(OutputKind::DeadLetter),
            3 => Some(OutputKind::Changelog),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write output {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub trait Sink {
    /// Hands one record to the sink. Records are sent in sequence order.
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError>;
    /// The sequence number below which every record sent is delivered. With `wait`, blocks until
    /// everything sent so far is delivered (or fails).
    fn confirmed(&mut self, wait: bool) -> Result<u64, SinkError>;
    /// The same for the records that are not changelog records (outputs and dead letters): the
    /// pipeline publishes a changelog record only once every output before it is delivered.
    fn outputs_confirmed(&mut self) -> Result<u64, SinkError> {
        self.confirmed(false)
    }
}
