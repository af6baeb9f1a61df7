//! One module per scenario. Each exposes its clap `Args` and an async `run` returning a
//! [`crate::report::Report`]; `main.rs` adds it as a subcommand.

pub mod arena;
