//! Identifier newtypes shared across modules.

/// Index of an app in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppIdx(pub u16);

/// Index of a shard (one per worker thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// A connection slot on a shard: index plus generation, so stale references are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Slot index.
    pub idx: u32,
    /// Generation of the slot when the connection was inserted.
    pub gen: u32,
}

/// A connection anywhere in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The owning shard.
    pub shard: ShardId,
    /// The slot on that shard.
    pub key: ConnKey,
}

/// Home shard of a (app, name) fact: a stable FNV-1a hash modulo the shard count.
pub fn home_of(app: AppIdx, name: &str, shards: usize) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ app.0 as u64;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ShardId((h % shards as u64) as u16)
}
