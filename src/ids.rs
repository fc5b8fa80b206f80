//! Identifier newtypes shared across modules.

/// Index of an app in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppIdx(pub u16);

/// Index of a shard (one per worker thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// A cluster node's identity: random at start, logged, unique in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

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

/// A Pusher socket id, `<random>.<sequence>`: two runs of decimal digits joined by a dot. The
/// second number modulo the shard count is the owning shard, which tests rely on to place
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketId(std::sync::Arc<str>);

impl SocketId {
    /// A fresh id for the `seq`-th connection of `shard` out of `shards`.
    pub fn generate(random: u32, seq: u64, shard: ShardId, shards: usize) -> SocketId {
        SocketId(format!("{random}.{}", seq * shards as u64 + shard.0 as u64).into())
    }

    /// Checks the format (as the client libraries do: `^\d+\.\d+$`).
    pub fn parse(s: &str) -> Option<SocketId> {
        let (a, b) = s.split_once('.')?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        (digits(a) && digits(b)).then(|| SocketId(s.into()))
    }

    /// The id as a shared string, as frames and bus messages carry it.
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.0.clone()
    }
}

impl std::ops::Deref for SocketId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_own_their_format() {
        let id = SocketId::generate(7, 5, ShardId(1), 2);
        assert_eq!(&*id, "7.11");
        assert_eq!(SocketId::parse("7.11"), Some(id));
        for bad in ["", ".", "1.", ".1", "1.2.3", "a.1", "1.-2", "+1.2", " 1.2"] {
            assert_eq!(SocketId::parse(bad), None, "{bad:?}");
        }
    }
}
