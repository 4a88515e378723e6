//! The store: a small trait over column families, with a RocksDB implementation and an in-memory
//! one (for the engine's model tests). The key layout lives in [`keys`].
//!
//! Everything a batch changes is written by one [`Store::commit`] of one [`WriteSet`]: with
//! RocksDB that is one atomic `WriteBatch`, so a crash leaves all of a batch or none of it.

pub mod cache;
pub mod disk;
pub mod keys;
pub mod memory;
pub mod rocks;

pub use cache::StateCache;
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
    pub const ALL: [Cf; 6] = [
        Cf::State,
        Cf::Offsets,
        Cf::Dedup,
        Cf::Timers,
        Cf::Outbox,
        Cf::Meta,
    ];
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

#[derive(Debug, Clone, Copy)]
pub enum OpKind {
    Put,
    Delete,
    /// Deletes keys in `[key, value)`.
    DeleteRange,
}

/// One change; its key and value are ranges of [`WriteSet::arena`].
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub cf: Cf,
    pub kind: OpKind,
    key: (u32, u32),
    value: (u32, u32),
}

/// The changes of one batch, committed atomically. Keys and values are appended to one arena
/// buffer instead of being allocated one by one: a batch holds tens of thousands of them.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    pub ops: Vec<Op>,
    arena: Vec<u8>,
}

impl WriteSet {
    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        (start, self.arena.len() as u32)
    }
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        let key = self.push(key);
        let value = self.push(value);
        self.ops.push(Op {
            cf,
            kind: OpKind::Put,
            key,
            value,
        });
    }
    /// A put whose value `fill` appends to the buffer it is given (no intermediate copy).
    /// Returns the put's index among the set's operations.
    pub fn put_with(&mut self, cf: Cf, key: &[u8], fill: impl FnOnce(&mut Vec<u8>)) -> usize {
        let key = self.push(key);
        let start = self.arena.len() as u32;
        fill(&mut self.arena);
        let value = (start, self.arena.len() as u32);
        self.ops.push(Op {
            cf,
            kind: OpKind::Put,
            key,
            value,
        });
        self.ops.len() - 1
    }
    /// Replaces the value of put number `op` (as [`put_with`](Self::put_with) returned it) with
    /// what `fill` appends; the old value's bytes stay in the arena, unused.
    pub fn replace_value_with(&mut self, op: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.arena.len() as u32;
        fill(&mut self.arena);
        self.ops[op].value = (start, self.arena.len() as u32);
    }
    /// Puts operations `from..` into the order `order` gives (a permutation of those indexes).
    /// Only for operations whose relative order does not matter (puts of distinct keys).
    pub fn reorder_from(&mut self, from: usize, order: &[u32]) {
        assert_eq!(order.len(), self.ops.len() - from, "a permutation of the operations");
        let moved: Vec<Op> = order.iter().map(|&i| self.ops[i as usize]).collect();
        self.ops.truncate(from);
        self.ops.extend(moved);
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        let key = self.push(key);
        self.ops.push(Op {
            cf,
            kind: OpKind::Delete,
            key,
            value: (0, 0),
        });
    }
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        let key = self.push(from);
        let value = self.push(to);
        self.ops.push(Op {
            cf,
            kind: OpKind::DeleteRange,
            key,
            value,
        });
    }
    pub fn key(&self, op: &Op) -> &[u8] {
        &self.arena[op.key.0 as usize..op.key.1 as usize]
    }
    pub fn value(&self, op: &Op) -> &[u8] {
        &self.arena[op.value.0 as usize..op.value.1 as usize]
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Empties the set, keeping its buffers.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.arena.clear();
    }
    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.arena.len()
    }
}

/// RocksDB's write stalls, as operators watch them.
#[derive(Debug, Default, Clone, Copy)]
pub struct WritePressure {
    /// Writes are stopped (too many memtables or level-0 files waiting for flush/compaction).
    pub stopped: bool,
    /// The rate writes are throttled to, bytes/s (0: not throttled).
    pub delayed_write_rate: u64,
    /// Bytes compaction estimates it has to rewrite to get back into shape.
    pub pending_compaction_bytes: u64,
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
        keys: &[&[u8]],
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
    fn commit(&self, w: &WriteSet) -> Result<(), StoreError>;
    /// Persists memtables so that the next open need not replay the log.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Dedup marks of events older than this UTC day may be dropped by compaction.
    fn set_dedup_horizon(&self, _day: i32) {}
    /// Memory use by kind ("block_cache", "memtables", "table_readers"), bytes.
    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Whether writes are being held back, and how much compaction is behind.
    fn write_pressure(&self) -> WritePressure {
        WritePressure::default()
    }
}
