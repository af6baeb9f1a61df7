//! One module per scenario. Each exposes its clap `Args` and an async `run` returning a
//! [`crate::report::Report`]; `main.rs` adds it as a subcommand. `common` holds what the
//! scenarios after `arena` share.

pub mod arena;
pub mod common;
pub mod fanout;
pub mod idle;
pub mod join_storm;
pub mod reconnect_storm;
