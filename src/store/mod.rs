//! The store: a small trait over column families, with a RocksDB implementation and an in-memory
//! one (for the engine's model tests). The key layout lives in [`keys`].
//!
//! Everything a batch changes is written by one [`Store::commit`] of one [`WriteSet`]: with
//! RocksDB that is one atomic `WriteBatch`, so a crash leaves all of a batch or none of it.

pub mod keys;
pub mod memory;
pub mod rocks;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

/// Column families. Their names are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// account partition + account id → `AccountState`
    State,
    /// source key ("file:…", "kafka:topic:partition") → `SourcePosition`
    Offsets,
    /// account partition + hash(account, event id) → UTC day of the event
    Dedup,
    /// account partition + due time + account id → ()
    Timers,
    /// sequence number → `OutboxRecord`
    Outbox,
    /// clocks, counters, format version
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 6] = [Cf::State, Cf::Offsets, Cf::Dedup, Cf::Timers, Cf::Outbox, Cf::Meta];
    pub fn name(self) -> &'static str {
        match self {
            Cf::State => "state",
            Cf::Offsets => "offsets",
            Cf::Dedup => "dedup",
            Cf::Timers => "timers",
            Cf::Outbox => "outbox",
            Cf::Meta => "meta",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// The changes of one batch, committed atomically.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    pub ops: Vec<Op>,
    /// Bytes of keys and values, for metrics.
    pub bytes: usize,
}

impl WriteSet {
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(cf, key, value));
    }
    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push(Op::Delete(cf, key));
    }
    pub fn delete_range(&mut self, cf: Cf, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(Op::DeleteRange(cf, from, to));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{0}")]
    Refused(String),
}

/// The store behind the pipeline.
pub trait Store: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Looks up `keys` (sorted ascending, for RocksDB's batched lookup) and calls `found` with the
    /// index and value of each.
    fn multi_get(
        &self,
        cf: Cf,
        keys: &[Vec<u8>],
        found: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError>;
    /// Visits keys from `from` in order until `visit` returns false.
    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Makes a batch durable, all or nothing.
    fn commit(&self, w: WriteSet) -> Result<(), StoreError>;
    /// Dedup marks of events older than this UTC day may be dropped by compaction.
    fn set_dedup_horizon(&self, _day: i32) {}
    /// Memory use by kind ("block_cache", "memtables", "table_readers"), bytes.
    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
