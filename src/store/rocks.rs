//! The RocksDB store: one column family per [`Cf`], one `WriteBatch` per commit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::keys::FORMAT_KEY;
use super::{Cf, OpKind, Store, StoreError, WriteSet};
use crate::config::StoreConfig;

/// On-disk format version of the store as a whole (key layout and column families).
pub const FORMAT_VERSION: u32 = 1;

pub struct RocksStore {
    db: DB,
    cache: Cache,
    write_opts: WriteOptions,
    dedup_horizon: Arc<AtomicI32>,
}

impl RocksStore {
    /// Opens (or creates) the store, refusing a directory written by a newer format.
    pub fn open(cfg: &StoreConfig) -> Result<RocksStore, StoreError> {
        Self::open_at(&cfg.data_dir, cfg)
    }

    pub fn open_at(path: &Path, cfg: &StoreConfig) -> Result<RocksStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Refused(format!(
                "cannot create the data directory {}: {e}. Set store.data_dir (or --data-dir) to a writable directory.",
                path.display()
            ))
        })?;
        let cache = Cache::new_lru_cache(cfg.block_cache_mb.max(1) << 20);
        let dedup_horizon = Arc::new(AtomicI32::new(i32::MIN));

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(3);
        // Write-ahead logs are deleted only once every column family with data in them has
        // flushed; the small ones (meta, offsets, outbox) rarely fill a memtable, so without a
        // bound the logs kept growing by the size of everything written (a gigabyte in a minute
        // on the tests' input). Past this total the oldest log's column families are flushed.
        db_opts.set_max_total_wal_size(((cfg.write_buffer_mb.max(4) * 4) as u64) << 20);
        // One writer (the pipeline thread) is all there is.
        db_opts.set_allow_concurrent_memtable_write(false);

        let cfs = Cf::ALL.iter().map(|&cf| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            // Index and filter blocks live in the block cache, so memory stays bounded by
            // `block_cache_mb`, but at high priority and, for L0 (which every lookup visits),
            // pinned: a lookup that misses (most dedup lookups) must not have to read a filter
            // block back from disk, which is what happened when they competed with data blocks.
            t.set_cache_index_and_filter_blocks(true);
            t.set_cache_index_and_filter_blocks_with_high_priority(true);
            t.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if matches!(cf, Cf::State | Cf::Dedup) {
                // Point lookups only. A bloom filter answers the (mostly absent) dedup keys
                // without reading a block. Partitioned, because a whole-file filter of a large
                // file is bigger than a block-cache shard and would be evicted as soon as it
                // was read; only the small top-level index of the partitions is pinned.
                t.set_bloom_filter(10.0, false);
                t.set_partition_filters(true);
                t.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
                t.set_pin_top_level_index_and_filter(true);
            }
            // (The default skip-list memtable rather than a hash-indexed one: batches arrive
            // sorted by key, which makes skip-list inserts cheap, and flushing a hash-indexed
            // memtable means sorting it first.)
            if cf == Cf::Dedup {
                // Every event looks up its dedup key, and nearly all are absent: a bloom filter
                // of whole keys in the memtable answers them without walking the skip list.
                // About 9 bits per key at the memtable's size; a bigger filter only misses
                // the CPU cache more. (States are looked up only when the state cache misses,
                // so their memtable goes without.)
                o.set_memtable_prefix_bloom_ratio(0.02);
                o.set_memtable_whole_key_filtering(true);
            }
            o.set_block_based_table_factory(&t);
            // Full-size write buffers for the column families written once per event (state,
            // dedup); a quarter for timers and the outbox, whose rows are fewer or short-lived.
            let buffer_mb = match cf {
                Cf::State | Cf::Dedup => cfg.write_buffer_mb,
                _ => cfg.write_buffer_mb / 4,
            };
            o.set_write_buffer_size(buffer_mb.max(1) << 20);
            // Compression where it pays for itself: account states compress, but their L0
            // files (every version of every state written) are rewritten by the next
            // compaction anyway, so only the levels below are compressed, with LZ4 (ZSTD cost
            // more CPU in compactions than the rest of a batch's background work). Dedup keys
            // are hashes and outbox rows live for one batch: not compressed.
            match cf {
                Cf::Dedup | Cf::Outbox => o.set_compression_type(DBCompressionType::None),
                _ => {
                    use DBCompressionType::{Lz4, None as Plain};
                    o.set_compression_per_level(&[Plain, Lz4, Lz4, Lz4, Lz4, Lz4, Lz4]);
                }
            }
            if cf == Cf::Dedup {
                let horizon = Arc::clone(&dedup_horizon);
                // Marks older than the retention window can never match again; compaction
                // drops them. The value is the event's UTC day.
                o.set_compaction_filter(
                    "rapport-dedup-expiry",
                    move |_lvl: u32, _k: &[u8], v: &[u8]| {
                        let day = v
                            .get(..4)
                            .map(|b| i32::from_le_bytes(b.try_into().unwrap()));
                        match day {
                            Some(d) if d < horizon.load(Ordering::Relaxed) => Decision::Remove,
                            _ => Decision::Keep,
                        }
                    },
                );
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| open_error(path, e))?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(cfg.sync_writes);
        let store = RocksStore {
            db,
            cache,
            write_opts,
            dedup_horizon,
        };
        store.check_format(path)?;
        Ok(store)
    }

    fn check_format(&self, path: &Path) -> Result<(), StoreError> {
        match self.get(Cf::Meta, FORMAT_KEY)? {
            Some(v) => {
                let found = v
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if found > FORMAT_VERSION {
                    return Err(StoreError::Refused(format!(
                        "the data directory {} was written by a newer rapport (store format {found}, this build reads {FORMAT_VERSION}); run the newer version, or point store.data_dir at an empty directory and run `rapport replay`.",
                        path.display()
                    )));
                }
            }
            None => {
                let mut w = WriteSet::default();
                w.put(Cf::Meta, FORMAT_KEY, &FORMAT_VERSION.to_le_bytes());
                self.commit(&w)?;
            }
        }
        Ok(())
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is opened")
    }

    /// Flushes memtables so that the next start need not replay the write-ahead log.
    pub fn flush(&self) -> Result<(), StoreError> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// Approximate live data size of a column family, bytes.
    pub fn live_bytes(&self, cf: Cf) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), "rocksdb.estimate-live-data-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let msg = e.to_string();
    // Damage first: "block checksum mismatch" holds the word "lock" too.
    let hint = if msg.contains("Corruption") || msg.contains("corrupt") || msg.contains("No such file")
    {
        "the store is damaged; restore the directory from a backup, or move it aside and rebuild the state with `rapport replay` from the input log"
    } else if msg.contains("While lock file") || msg.contains("/LOCK") {
        "another rapport process is using it; stop that process or give this one its own --data-dir"
    } else {
        "check that the directory is a rapport data directory on a writable disk with free space"
    };
    StoreError::Refused(format!(
        "cannot open the store at {}: {msg}. {hint}.",
        path.display()
    ))
}

impl Store for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn multi_get(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        found: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let sorted = keys.windows(2).all(|w| w[0] <= w[1]);
        let values = self
            .db
            .batched_multi_get_cf(self.cf(cf), keys.iter(), sorted);
        for (i, v) in values.into_iter().enumerate() {
            match v? {
                Some(slice) => found(i, Some(&slice)),
                None => found(i, None),
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        // Scans walk keys in order, across the hash-indexed memtables too.
        ro.set_total_order_seek(true);
        let it = self.db.iterator_cf_opt(
            self.cf(cf),
            ro,
            IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, w: &WriteSet) -> Result<(), StoreError> {
        let mut b = WriteBatch::with_capacity_bytes(w.bytes() + 32 * w.ops.len() + 64);
        for op in &w.ops {
            let (k, v, cf) = (w.key(op), w.value(op), self.cf(op.cf));
            match op.kind {
                OpKind::Put => b.put_cf(cf, k, v),
                OpKind::Delete => b.delete_cf(cf, k),
                OpKind::DeleteRange => b.delete_range_cf(cf, k, v),
            }
        }
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        RocksStore::flush(self)
    }

    fn set_dedup_horizon(&self, day: i32) {
        self.dedup_horizon.store(day, Ordering::Relaxed);
    }

    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        let mut memtables = 0;
        let mut readers = 0;
        for cf in Cf::ALL {
            let p = |name: &str| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            memtables += p("rocksdb.cur-size-all-mem-tables");
            readers += p("rocksdb.estimate-table-readers-mem");
        }
        vec![
            ("block_cache", self.cache.get_usage() as u64),
            ("memtables", memtables),
            ("table_readers", readers),
        ]
    }

    fn write_pressure(&self) -> super::WritePressure {
        let db = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let pending = Cf::ALL
            .iter()
            .map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(*cf), "rocksdb.estimate-pending-compaction-bytes")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum();
        super::WritePressure {
            stopped: db("rocksdb.is-write-stopped") != 0,
            delayed_write_rate: db("rocksdb.actual-delayed-write-rate"),
            pending_compaction_bytes: pending,
        }
    }
}
