//! Support code for the real-process cluster tests (`tests/cluster.rs`,
//! `tests/cluster_faults.rs`).
//!
//! - [`cluster`]: Redis, gamerelay nodes, HAProxy and a controllable TCP proxy as child
//!   processes / tasks, cleaned up on drop.
//! - [`player`]: a frame-level protocol client whose reconnects the test directs.
//! - [`redis_cluster`]: a private Redis Cluster (masters + replicas) for `tests/redis_cluster.rs`.
#![allow(dead_code)]

pub mod cluster;
pub mod player;
pub mod redis_cluster;
