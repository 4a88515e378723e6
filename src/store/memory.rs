//! An in-memory store with the same semantics as RocksDB's (ordered keys, atomic commits), for
//! model tests of the engine and pipeline.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Cf, OpKind, Store, StoreError, WriteSet};

#[derive(Default)]
pub struct MemoryStore {
    // A std Mutex: commits are short and never held across an await.
    cfs: Mutex<[BTreeMap<Vec<u8>, Vec<u8>>; 6]>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A copy of one column family, for comparisons in tests.
    pub fn dump(&self, cf: Cf) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.cfs.lock().unwrap()[cf.index()].clone()
    }
}

impl Store for MemoryStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.cfs.lock().unwrap()[cf.index()].get(key).cloned())
    }

    fn multi_get(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        found: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let g = self.cfs.lock().unwrap();
        for (i, k) in keys.iter().enumerate() {
            found(i, g[cf.index()].get(*k).map(Vec::as_slice));
        }
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let g = self.cfs.lock().unwrap();
        for (k, v) in g[cf.index()].range(from.to_vec()..) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, w: &WriteSet) -> Result<(), StoreError> {
        let mut g = self.cfs.lock().unwrap();
        for op in &w.ops {
            let (k, v) = (w.key(op), w.value(op));
            let m = &mut g[op.cf.index()];
            match op.kind {
                OpKind::Put => {
                    m.insert(k.to_vec(), v.to_vec());
                }
                OpKind::Delete => {
                    m.remove(k);
                }
                OpKind::DeleteRange => {
                    let doomed: Vec<Vec<u8>> = m
                        .range(k.to_vec()..v.to_vec())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }
}
