//! The key layout of every column family, in one place.
//!
//! Keys of `state`, `dedup` and `timers` start with the account partition (u16, big-endian) so
//! that one partition's data is one contiguous key range: it can be scanned, dropped or restored
//! on its own when partitions move between instances.

/// Kafka's murmur2 (the Java client's default partitioner hash), so that an account lands on the
/// same partition here as a Java producer would put it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of an account among `n`, as Kafka's default partitioner computes it.
pub fn partition_for(account_id: &str, n: u16) -> u16 {
    ((murmur2(account_id.as_bytes()) & 0x7fff_ffff) as u32 % n as u32) as u16
}

pub fn state_key(partition: u16, account_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + account_id.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(account_id.as_bytes());
    k
}

/// (partition, account id) of a state key.
pub fn parse_state_key(k: &[u8]) -> Option<(u16, &str)> {
    let p = u16::from_be_bytes(k.get(..2)?.try_into().ok()?);
    Some((p, std::str::from_utf8(&k[2..]).ok()?))
}

/// The prefix of all of one partition's keys, and the first key after them.
pub fn partition_range(partition: u16) -> (Vec<u8>, Vec<u8>) {
    (
        partition.to_be_bytes().to_vec(),
        (partition as u32 + 1).to_be_bytes()[2..].to_vec(),
    )
}

/// A dedup mark: a 128-bit hash of (account, event id). Collisions are practically impossible
/// (about 1 in 10^20 for a billion live marks); hashing bounds the key size whatever the ids are.
pub fn dedup_key(partition: u16, account_id: &str, event_id: &str) -> Vec<u8> {
    dedup_key_of(partition, dedup_hash(account_id, event_id)).to_vec()
}

/// Length of a dedup key: partition and a 128-bit hash.
pub const DEDUP_KEY_LEN: usize = 18;

/// The hash part of a dedup key. The batch loop sorts and compares these as integers; in the
/// key they are big-endian, so the integer order is the key order.
pub fn dedup_hash(account_id: &str, event_id: &str) -> u128 {
    let (a, e) = (account_id.as_bytes(), event_id.as_bytes());
    // The one-shot hash of the concatenation equals the streaming one; it is several times
    // cheaper for ids of ordinary length, which fit the stack buffer.
    let mut buf = [0u8; 192];
    if a.len() + 1 + e.len() <= buf.len() {
        buf[..a.len()].copy_from_slice(a);
        buf[a.len() + 1..a.len() + 1 + e.len()].copy_from_slice(e);
        xxhash_rust::xxh3::xxh3_128(&buf[..a.len() + 1 + e.len()])
    } else {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(a);
        h.update(&[0]);
        h.update(e);
        h.digest128()
    }
}

/// A dedup key from its partition and [`dedup_hash`], without an allocation.
pub fn dedup_key_of(partition: u16, hash: u128) -> [u8; DEDUP_KEY_LEN] {
    let mut k = [0u8; DEDUP_KEY_LEN];
    k[..2].copy_from_slice(&partition.to_be_bytes());
    k[2..].copy_from_slice(&hash.to_be_bytes());
    k
}

/// Writes the state key of an account into `out` (cleared first), reusing its allocation.
pub fn state_key_into(partition: u16, account_id: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(account_id.as_bytes());
}

/// Timer keys order by partition, then due time, then account: a partition's due timers are a
/// prefix scan. The sign bit is flipped so that negative times sort before positive ones.
pub fn timer_key(partition: u16, due_ms: i64, account_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + account_id.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&((due_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(account_id.as_bytes());
    k
}

/// (partition, due, account) of a timer key.
pub fn parse_timer_key(k: &[u8]) -> Option<(u16, i64, &str)> {
    let p = u16::from_be_bytes(k.get(..2)?.try_into().ok()?);
    let due = (u64::from_be_bytes(k.get(2..10)?.try_into().ok()?) ^ (1 << 63)) as i64;
    Some((p, due, std::str::from_utf8(&k[10..]).ok()?))
}

pub fn outbox_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

pub fn parse_outbox_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// `meta` key of a partition's stream-time clock.
pub fn clock_key(partition: u16) -> Vec<u8> {
    let mut k = b"clock/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `meta` key of the record accounting.
pub const COUNTERS_KEY: &[u8] = b"counters";
/// `meta` key of the next outbox sequence number.
pub const OUTBOX_NEXT_KEY: &[u8] = b"outbox_next";
/// `meta` key of the store format version.
pub const FORMAT_KEY: &[u8] = b"format";
/// `meta` key of the partition count the store was written with.
pub const PARTITIONS_KEY: &[u8] = b"partitions";
/// `meta` key of the Kafka topics a store's state was built from (input topics, changelog).
pub const TOPICS_KEY: &[u8] = b"topics";
/// `meta` key of this store's random 16-byte id: the "writer" of its changelog records.
pub const STORE_ID_KEY: &[u8] = b"store_id";

/// `meta` key set (before the first send) once this store has sent a changelog record of a
/// partition: an empty changelog is then news (the topic was reset), not just "not yet".
pub fn changelog_sent_key(partition: u16) -> Vec<u8> {
    let mut k = b"cl_sent/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `meta` key set while the changelog may lack some of a partition's committed local state
/// (changelog records were dropped unpublished): the partition is restored before it is used.
pub fn changelog_behind_key(partition: u16) -> Vec<u8> {
    let mut k = b"cl_behind/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `meta` key of the writer id a partition's changelog records carry (set by each restore).
pub fn changelog_writer_key(partition: u16) -> Vec<u8> {
    let mut k = b"cl_writer/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `meta` key recording a dedup chunk that lives in the changelog, so that it is tombstoned
/// once its latest day leaves the dedup window. Sorted by (partition, day).
pub fn chunk_key(partition: u16, day: i32, changelog_key: &str) -> Vec<u8> {
    let mut k = chunk_prefix(partition);
    k.extend_from_slice(&((day as u32) ^ (1 << 31)).to_be_bytes());
    k.extend_from_slice(changelog_key.as_bytes());
    k
}

/// The prefix of one partition's [`chunk_key`]s.
pub fn chunk_prefix(partition: u16) -> Vec<u8> {
    let mut k = b"cl_chunk/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// (day, changelog key) of a [`chunk_key`] of `partition`.
pub fn parse_chunk_key(partition: u16, k: &[u8]) -> Option<(i32, &str)> {
    let rest = k.strip_prefix(chunk_prefix(partition).as_slice())?;
    let day = (u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) ^ (1 << 31)) as i32;
    Some((day, std::str::from_utf8(&rest[4..]).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k), want, "{}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn dedup_keys_hash_the_same_whatever_the_id_length() {
        for (a, e) in [("acme", "e-1"), ("a", ""), (&"x".repeat(150)[..], &"y".repeat(150)[..])] {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(a.as_bytes());
            h.update(&[0]);
            h.update(e.as_bytes());
            let mut want = 7u16.to_be_bytes().to_vec();
            want.extend_from_slice(&h.digest128().to_be_bytes());
            assert_eq!(dedup_key(7, a, e), want);
        }
    }

    #[test]
    fn chunk_keys_sort_by_day_and_round_trip() {
        let a = chunk_key(2, -3, "d:x");
        let b = chunk_key(2, 20_000, "d:a");
        let c = chunk_key(3, -100, "d:a");
        assert!(a < b && b < c);
        assert_eq!(parse_chunk_key(2, &b), Some((20_000, "d:a")));
        assert_eq!(parse_chunk_key(3, &b), None);
        assert!(b.starts_with(&chunk_prefix(2)));
    }

    #[test]
    fn timer_keys_sort_by_time_within_a_partition() {
        let a = timer_key(3, -5, "z");
        let b = timer_key(3, 10, "a");
        let c = timer_key(4, -100, "a");
        assert!(a < b && b < c);
        assert_eq!(parse_timer_key(&b), Some((3, 10, "a")));
        let (lo, hi) = partition_range(3);
        assert!(lo.as_slice() <= a.as_slice() && b.as_slice() < hi.as_slice());
    }
}
