//! Channel state: the facts a home shard owns for the channels and users hashed to it.

pub mod home;
