//! The changelog: what a partition's state is made of, as records of a compacted Kafka topic, so
//! that the partition can be restored on whichever instance the group gives it to.
//!
//! Every committed batch adds, through the outbox, for each account partition it touched:
//! the changed account states (`s:<account>`), one dedup chunk with the marks it added
//! (`d:<day>:<writer>:<seq>`), tombstones for chunks that left the dedup window, and last a
//! checkpoint (`c:<writer>`) with the partition's input positions and stream time. Timers and
//! open alerts are part of the account states. Every record carries two headers: `writer`, the
//! id of the store that wrote it, and `batch`, the batch's first outbox sequence number (which
//! only grows, per store).
//!
//! # The guarantee
//!
//! - A batch's changelog records are published only after the broker acknowledged every output
//!   committed before them (score changes, alerts, dead letters), and only for partitions this
//!   instance owns. So a restore never skips an output that was not delivered: the changelog is
//!   never ahead of what subscribers have seen.
//! - It may be behind the local state (records committed locally, not yet published when the
//!   process died). The new owner then restores the last published checkpoint and reads the
//!   inputs again from its positions: the state it reaches is the same, and the outputs in between
//!   are published again with the same ids (at-least-once, deduplicated by id).
//! - A restore applies a record only if a later checkpoint *of the same writer*, of the same or a
//!   later batch, follows it in the partition's log: records of a batch whose checkpoint never
//!   made it (the writer died half-way) are ignored even when another writer's checkpoints come
//!   after them, so the restored states and positions always belong together. Positions come
//!   from the last checkpoint in the log. Compaction keeps this true: checkpoints are keyed by
//!   writer, so each writer's latest checkpoint stays, after all of that writer's complete
//!   batches; a state record's previous version is dropped only in favour of a later record of
//!   the same account.
//! - Records are never sent twice out of order: the producer is idempotent and retries without
//!   a time limit (a record that cannot be delivered at all stops the instance instead).
//! - A partition whose changelog was last written by this store, and whose local state was never
//!   left behind by it (`cl_behind` in `meta`), starts at once from its local state. So does one
//!   whose changelog is empty while this store holds its unpublished records and never sent it
//!   any (`cl_sent` in `meta`, set before the first send): killed before its first changelog
//!   record went out, the local state is the only copy. An empty changelog after a send means the
//!   topic was reset: the partition is restored (from nothing) and read again from its start.

use std::collections::HashMap;

use prost::Message;

use crate::pb::{DedupChunk, OutboxRecord, PartitionCheckpoint};
use crate::sink::OutputKind;

/// Key of a writer's checkpoint record.
pub fn checkpoint_key(writer: &[u8; 16]) -> String {
    format!("c:{}", hex(writer))
}

/// Header that names the store that wrote a record.
pub const WRITER_HEADER: &str = "writer";
/// Header with the batch a record belongs to (big-endian u64).
pub const BATCH_HEADER: &str = "batch";
/// Header set on records that are to be published as tombstones (null values).
pub const TOMBSTONE_HEADER: &str = "tombstone";

/// A changelog key, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    State(&'a str),
    Chunk { day: i32 },
    Checkpoint,
}

pub fn parse_key(k: &str) -> Option<Key<'_>> {
    if k.starts_with("c:") {
        return Some(Key::Checkpoint);
    }
    if let Some(acct) = k.strip_prefix("s:") {
        return Some(Key::State(acct));
    }
    let rest = k.strip_prefix("d:")?;
    let day = rest.split(':').next()?.parse().ok()?;
    Some(Key::Chunk { day })
}

pub fn state_key(account: &str) -> String {
    format!("s:{account}")
}

/// The key of a batch's `part`-th dedup chunk of one partition (the first one has no part
/// number, as before chunks were split).
pub fn chunk_key(day: i32, writer: &[u8; 16], seq: u64, part: usize) -> String {
    match part {
        0 => format!("d:{day}:{}:{seq}", hex(writer)),
        _ => format!("d:{day}:{}:{seq}:{part}", hex(writer)),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the pipeline needs to write a changelog.
#[derive(Debug, Clone)]
pub struct Changelog {
    /// This store's id: the `writer` of a partition's records until the partition is restored.
    pub writer: [u8; 16],
    /// Per account partition, the position keys of its input topic partitions.
    pub sources_of: Vec<Vec<String>>,
    /// Per account partition, the writer id its records carry (empty: `writer` for all). A
    /// restore gives the partition a new one, so that a batch this store left torn before the
    /// restore can never be completed by a checkpoint it writes after.
    pub writers: Vec<[u8; 16]>,
}

impl Changelog {
    /// The writer id of partition `p`'s records.
    pub fn writer_of(&self, p: u16) -> [u8; 16] {
        self.writers.get(p as usize).copied().unwrap_or(self.writer)
    }

    fn record(&self, partition: u16, batch: u64, key: String, payload: Vec<u8>) -> OutboxRecord {
        let mut headers = HashMap::with_capacity(2);
        headers.insert(WRITER_HEADER.to_owned(), self.writer_of(partition).to_vec());
        headers.insert(BATCH_HEADER.to_owned(), batch.to_be_bytes().to_vec());
        OutboxRecord {
            kind: OutputKind::Changelog as u32,
            key,
            payload,
            headers,
            partition: partition as i32,
        }
    }

    pub fn state(&self, partition: u16, batch: u64, account: &str, encoded: &[u8]) -> OutboxRecord {
        self.record(partition, batch, state_key(account), encoded.to_vec())
    }

    pub fn chunk(&self, partition: u16, batch: u64, key: String, chunk: &DedupChunk) -> OutboxRecord {
        self.record(partition, batch, key, chunk.encode_to_vec())
    }

    pub fn tombstone(&self, partition: u16, batch: u64, key: String) -> OutboxRecord {
        let mut r = self.record(partition, batch, key, Vec::new());
        r.headers.insert(TOMBSTONE_HEADER.to_owned(), b"1".to_vec());
        r
    }

    pub fn checkpoint(&self, partition: u16, batch: u64, c: &PartitionCheckpoint) -> OutboxRecord {
        self.record(partition, batch, checkpoint_key(&self.writer_of(partition)), c.encode_to_vec())
    }
}

/// Marks of a dedup chunk as (hash, day) pairs; malformed chunks yield nothing.
pub fn chunk_marks(c: &DedupChunk) -> impl Iterator<Item = (u128, i32)> + '_ {
    c.hashes
        .chunks_exact(16)
        .zip(&c.days)
        .map(|(h, d)| (u128::from_be_bytes(h.try_into().expect("16 bytes")), *d))
}

/// One record read back from the changelog: its key, value (`None`: a tombstone), writer and
/// batch (from its headers; records without them never count as complete).
#[derive(Debug, Clone)]
pub struct Restored {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub writer: Option<[u8; 16]>,
    pub batch: u64,
}

impl Restored {
    fn is_checkpoint(&self) -> bool {
        self.value.is_some() && self.writer.is_some() && self.key.starts_with("c:")
    }
}

/// Collects one partition's changelog records in log order and hands them out in groups that a
/// checkpoint closes: a checkpoint of writer *w* and batch *b* completes the records of *w* up
/// to batch *b* read before it. Records no checkpoint of their own writer completes belong to a
/// batch that writer did not finish, and are never applied.
#[derive(Debug, Default)]
pub struct RestoreBuffer {
    pending: Vec<Restored>,
}

impl RestoreBuffer {
    /// Adds a record; if it is a checkpoint, returns the records it completes, in log order,
    /// ending with the checkpoint itself.
    pub fn push(&mut self, r: Restored) -> Option<Vec<Restored>> {
        if !r.is_checkpoint() {
            self.pending.push(r);
            return None;
        }
        let (mut done, keep): (Vec<Restored>, Vec<Restored>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|x| x.writer == r.writer && x.batch <= r.batch);
        self.pending = keep;
        done.push(r);
        Some(done)
    }

    /// Records left after the last checkpoint (discarded at the end of a restore).
    pub fn incomplete(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_key(&state_key("acme:eu")), Some(Key::State("acme:eu")));
        assert_eq!(parse_key(&checkpoint_key(&[3; 16])), Some(Key::Checkpoint));
        let k = chunk_key(-3, &[0xab; 16], 42, 0);
        assert_eq!(parse_key(&k), Some(Key::Chunk { day: -3 }));
        let k2 = chunk_key(-3, &[0xab; 16], 42, 2);
        assert_ne!(k, k2);
        assert_eq!(parse_key(&k2), Some(Key::Chunk { day: -3 }));
        assert_eq!(parse_key("x"), None);
        assert_eq!(parse_key("d:notaday:1"), None);
    }

    #[test]
    fn only_records_a_checkpoint_of_their_own_writer_closes_are_handed_out() {
        const A: [u8; 16] = [1; 16];
        const B: [u8; 16] = [2; 16];
        let rec = |k: &str, w: [u8; 16], batch: u64| Restored {
            key: k.into(),
            value: Some(vec![1]),
            writer: Some(w),
            batch,
        };
        let keys = |g: &[Restored]| g.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
        let mut b = RestoreBuffer::default();
        assert!(b.push(rec("s:a", A, 10)).is_none());
        assert!(b.push(rec("s:b", A, 10)).is_none());
        let ca = checkpoint_key(&A);
        let group = b.push(rec(&ca, A, 10)).expect("closed by the checkpoint");
        assert_eq!(keys(&group), vec!["s:a", "s:b", ca.as_str()]);
        // A dies half-way through batch 20; B (restored from A's batch 10) writes on.
        assert!(b.push(rec("s:x", A, 20)).is_none());
        assert!(b.push(rec("s:y", B, 3)).is_none());
        let cb = checkpoint_key(&B);
        let group = b.push(rec(&cb, B, 3)).expect("closed by B's checkpoint");
        assert_eq!(keys(&group), vec!["s:y", cb.as_str()], "B's checkpoint does not complete A's torn batch");
        assert_eq!(b.incomplete(), 1, "A's torn batch stays out");
        // A later checkpoint of A (after compaction dropped the earlier ones) still completes
        // A's earlier batches.
        let mut b = RestoreBuffer::default();
        b.push(rec("s:a", A, 10));
        b.push(rec("s:b", A, 11));
        let group = b.push(rec(&ca, A, 11)).unwrap();
        assert_eq!(group.len(), 3);
        // A tombstone under a checkpoint key closes nothing.
        assert!(b
            .push(Restored {
                key: ca.clone(),
                value: None,
                writer: Some(A),
                batch: 12,
            })
            .is_none());
    }

    #[test]
    fn chunk_marks_pair_hashes_with_days() {
        let mut hashes = 7u128.to_be_bytes().to_vec();
        hashes.extend_from_slice(&9u128.to_be_bytes());
        let c = DedupChunk {
            hashes,
            days: vec![100, 101],
        };
        assert_eq!(chunk_marks(&c).collect::<Vec<_>>(), vec![(7, 100), (9, 101)]);
        let torn = DedupChunk {
            hashes: vec![1, 2, 3],
            days: vec![5],
        };
        assert_eq!(chunk_marks(&torn).count(), 0);
    }
}
