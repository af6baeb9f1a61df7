//! `gamerelay-loadtest`: load generator for gamerelay nodes.
//!
//! One subcommand per scenario (`arena` = the reference workload W1, `join-storm`,
//! `reconnect-storm`, `idle`, `fanout`) and `chaos`, the fault injector and checker. Modules:
//! - `conn`: target URLs, source addresses, WebSocket connect, `hello` + `join`;
//! - `wire`: allocation-free reading of server frames on the hot path;
//! - `mirror`: a local copy of a room's state (resume correctness);
//! - `stats`: the run's timeline, counters and latency histograms;
//! - `procstat`: CPU and RSS from `/proc`, the open-files limit;
//! - `progress`: the live progress line on a terminal;
//! - `report`: JSON line, human table, validity;
//! - `scenarios::*`: the scenarios;
//! - `chaos`: faults on a running cluster, histories, and the checker of the contract.
//!
//! Exit status: 0 when the run completed (valid or not: see `valid` in the report),
//! 1 when it could not run, 2 for bad usage, 3 when `chaos` found the contract broken.

mod chaos;
mod conn;
mod mirror;
mod procstat;
mod progress;
mod report;
mod scenarios;
mod stats;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for gamerelay.
#[derive(Debug, Parser)]
#[command(name = "gamerelay-loadtest", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// W1 "arena": R rooms x P players each sending positions at H Hz; measures deliveries,
    /// input-to-echo latency, and server CPU/RSS per delivery/connection.
    Arena(scenarios::arena::ArenaArgs),
    /// N players joining rooms of P at once, as fast as the connect slots allow; measures
    /// joins/s and join latency (hello+join to joined).
    JoinStorm(scenarios::join_storm::JoinStormArgs),
    /// N connected players all dropped at once (no close frame); each resumes with its
    /// session and last (epoch, seq); measures time until all resumed, resume latency, and
    /// checks every mirror against the room's state.
    ReconnectStorm(scenarios::reconnect_storm::ReconnectStormArgs),
    /// N mostly idle connections held for the duration; measures server RSS per connection.
    Idle(scenarios::idle::IdleArgs),
    /// One writer at H Hz and many readers per room; measures deliveries/s and
    /// writer-input-to-reader latency.
    Fanout(scenarios::fanout::FanoutArgs),
    /// Faults (node kills, pauses past the lease) injected into a local cluster while
    /// clients write; a checker verifies the contract on their histories. Exit status 3 when
    /// the verdict is `fail`.
    Chaos(chaos::ChaosArgs),
}

/// Flags every scenario takes (they may be given before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Server WebSocket URL (ws:// only); repeat to spread players over several nodes.
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8080/ws", value_name = "URL")]
    pub urls: Vec<String>,
    /// Print one JSON line with the figures on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// A server process to measure (CPU over the window, RSS); repeatable.
    #[arg(long = "server-pid", global = true, value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// Tokio worker threads of the generator (1 = a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Prefix of room ids (default: unique per run, `lt<pid>-<time>-`).
    #[arg(long, global = true)]
    pub room_prefix: Option<String>,
    /// Connections being set up at once (TCP + WebSocket + hello/join).
    #[arg(long, visible_alias = "concurrency", global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for each of TCP+WebSocket connect and hello+join of a connection.
    #[arg(long, global = true, default_value_t = 15.0)]
    pub connect_timeout: f64,
    /// Bind client sockets to 127.0.0.1..=127.0.0.N (0 = automatic: one per 20000
    /// connections to a loopback server, to stay clear of the ephemeral port range).
    #[arg(long, global = true, default_value_t = 0)]
    pub source_addrs: usize,
    /// No live progress line (it is drawn on stderr only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl Common {
    pub fn room_prefix(&self) -> String {
        self.room_prefix.clone().unwrap_or_else(|| {
            let secs =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("lt{}-{}-", std::process::id(), secs % 100_000)
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = match procstat::raise_nofile_limit() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gamerelay-loadtest: cannot read RLIMIT_NOFILE: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.common.connect_timeout.is_nan() || cli.common.connect_timeout <= 0.0 {
        eprintln!("gamerelay-loadtest: --connect-timeout must be > 0");
        return ExitCode::from(2);
    }
    let threads = cli.common.threads.max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gamerelay-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Arena(args) => scenarios::arena::run(&cli.common, args, nofile).await,
            Command::JoinStorm(args) => scenarios::join_storm::run(&cli.common, args, nofile).await,
            Command::ReconnectStorm(args) => scenarios::reconnect_storm::run(&cli.common, args, nofile).await,
            Command::Idle(args) => scenarios::idle::run(&cli.common, args, nofile).await,
            Command::Fanout(args) => scenarios::fanout::run(&cli.common, args, nofile).await,
            Command::Chaos(args) => chaos::run(&cli.common, args).await,
        }
    });
    // Connection tasks still closing are not waited for.
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            let table = report.table.render();
            if cli.common.json {
                eprint!("{table}");
                println!("{}", report.json);
            } else {
                print!("{table}");
            }
            if matches!(cli.command, Command::Chaos(_)) {
                if !report.valid {
                    eprintln!("gamerelay-loadtest: chaos verdict FAIL (see violations and failures)");
                    return ExitCode::from(3);
                }
            } else if !report.valid {
                eprintln!("gamerelay-loadtest: the run is INVALID (see invalid_reasons)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gamerelay-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
