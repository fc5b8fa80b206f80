//! Channel state: the facts a home shard owns for the channels and users hashed to it, and the
//! deterministic simulation that checks them.

pub mod home;
#[cfg(test)]
mod sim;
