//! Support code for the real-process cluster tests (`tests/cluster.rs`,
//! `tests/cluster_faults.rs`).
//!
//! - [`cluster`]: Redis, gamerelay nodes, HAProxy and a controllable TCP proxy as child
//!   processes / tasks, cleaned up on drop.
//! - [`player`]: a frame-level protocol client whose reconnects the test directs.
#![allow(dead_code)]

pub mod cluster;
pub mod player;
