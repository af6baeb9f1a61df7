//! What the scenarios after `arena` share: the population (N players in rooms of P), the
//! open-files budget, connecting and joining with the common flags (targets, source
//! addresses, connect slots and timeout), and the generator, machine and server figures
//! with the validity rules of the arena scenario.

use std::time::Duration;

use gamerelay::protocol::Join;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::{self, Instant};

use super::arena::{OTHER_CPU_LIMIT_PCT, STEAL_LIMIT_PCT};
use crate::conn::{self, ConnError, JoinedFull, SourceAddrs, Target, Ws};
use crate::procstat::{CpuFigures, NofileLimit};
use crate::report::{round, Table, Validity};
use crate::Common;

/// Room types a scenario can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomType {
    /// The arena game (each join adds a player entry: a server delta).
    Arena,
    /// A generic document (joins change no state).
    Doc,
}

impl RoomType {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomType::Arena => "arena",
            RoomType::Doc => "doc",
        }
    }
}

/// N players in rooms of P: the `--count`/`--rooms`, `--players` and `--room-type` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Population {
    /// Players in all (N). [default: 1000; idle: 5000]
    #[arg(long, short = 'n', conflicts_with = "rooms")]
    pub count: Option<usize>,
    /// Players per room (P); the last room holds the rest when P does not divide N.
    #[arg(long, default_value_t = 8)]
    pub players: usize,
    /// Rooms (R), instead of --count: N = R x P.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Room type.
    #[arg(long, value_enum, default_value_t = RoomType::Arena)]
    pub room_type: RoomType,
}

impl Population {
    /// The layout, with `default_count` players when neither `--count` nor `--rooms` is given.
    pub fn layout(&self, default_count: usize) -> Result<Layout, String> {
        if self.players == 0 {
            return Err("--players must be at least 1".into());
        }
        let n = match (self.count, self.rooms) {
            (Some(n), _) => n,
            (None, Some(r)) => r * self.players,
            (None, None) => default_count,
        };
        if n == 0 {
            return Err("no players: --count and --rooms must be at least 1".into());
        }
        Ok(Layout { n, per_room: self.players })
    }
}

/// Player `i` sits in room `i / per_room` as its member number `i % per_room`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n: usize,
    pub per_room: usize,
}

impl Layout {
    pub fn rooms(&self) -> usize {
        self.n.div_ceil(self.per_room)
    }

    pub fn room_of(&self, i: usize) -> usize {
        i / self.per_room
    }

    pub fn member_of(&self, i: usize) -> usize {
        i % self.per_room
    }

    /// Connections of the busiest of `targets` URLs (member j of a room uses URL j % targets).
    pub fn max_per_target(&self, targets: usize) -> usize {
        let targets = targets.max(1);
        let mut per = vec![0usize; targets];
        let full_rooms = self.n / self.per_room;
        for (j, slot) in (0..self.per_room).map(|j| (j, j % targets)) {
            per[slot] += full_rooms + usize::from(j < self.n % self.per_room);
        }
        per.into_iter().max().unwrap_or(0)
    }
}

/// Descriptors kept free for the runtime, stdio and /proc reads.
pub const FD_RESERVE: u64 = 32;

/// How many connections the open-files limit lets a run open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    pub requested: usize,
    /// `requested`, or fewer when the limit caps the run.
    pub allowed: usize,
    /// Why the run was capped (`None`: not capped).
    pub capped: Option<String>,
}

/// Caps `requested` connections at what the (raised) soft `RLIMIT_NOFILE` allows.
pub fn fd_budget(requested: usize, nofile: NofileLimit) -> FdBudget {
    let room = nofile.soft.saturating_sub(FD_RESERVE) as usize;
    if requested <= room {
        return FdBudget { requested, allowed: requested, capped: None };
    }
    let msg = format!(
        "the open-files limit (soft {}, hard {}) caps this run at {room} of the {requested} \
         connections requested (raise the hard limit: `ulimit -Hn`, LimitNOFILE=, \
         /etc/security/limits.conf)",
        nofile.soft, nofile.hard
    );
    FdBudget { requested, allowed: room, capped: Some(msg) }
}

/// Caps `layout` at what the open-files limit allows (one descriptor per player), warning
/// and marking the run invalid when it does.
pub fn cap_to_fd_budget(layout: &mut Layout, nofile: NofileLimit, validity: &mut Validity) -> FdBudget {
    let budget = fd_budget(layout.n, nofile);
    if let Some(msg) = &budget.capped {
        eprintln!("warning: {msg}");
        validity.check(true, || msg.clone());
        layout.n = budget.allowed;
    }
    budget
}

/// Checks the flags of the fixed-rate scenarios (`arena`, `fanout`).
pub fn check_rate_flags(hz: f64, duration: f64, warmup: f64, drain: f64, step: f64) -> Result<(), String> {
    if !(hz > 0.0 && hz <= 1000.0) {
        return Err("--hz must be in (0, 1000]".into());
    }
    if !(duration > 0.0 && warmup >= 0.0 && drain >= 0.0) {
        return Err("--duration must be > 0; --warmup and --drain >= 0".into());
    }
    if !(step > 0.0 && step <= 5.0) {
        return Err("--step must be in (0, 5]".into());
    }
    Ok(())
}

/// How long a connection took to set up (after it got a connect slot).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupTimes {
    /// TCP connect + WebSocket upgrade.
    pub connect: Duration,
    /// `hello` + `join` sent to `joined` received.
    pub join: Duration,
}

/// Targets, source addresses and connect slots of a run.
pub struct Net {
    pub targets: Vec<Target>,
    pub sources: SourceAddrs,
    pub room_prefix: String,
    pub connect_timeout: Duration,
    slots: Semaphore,
}

impl Net {
    /// Resolves the URLs and plans source addresses for `layout` (plus `extra` connections,
    /// e.g. observers, on the first URL).
    pub async fn new(common: &Common, layout: Layout, extra: usize) -> Result<Net, String> {
        let targets = conn::resolve_targets(&common.urls).await?;
        let per_target = layout.max_per_target(targets.len()) + extra;
        let sources = SourceAddrs::plan(common.source_addrs, &targets, per_target)?;
        Ok(Net {
            targets,
            sources,
            room_prefix: common.room_prefix(),
            connect_timeout: Duration::from_secs_f64(common.connect_timeout),
            slots: Semaphore::new(common.connect_concurrency.max(1)),
        })
    }

    pub fn room(&self, r: usize) -> String {
        format!("{}{r}", self.room_prefix)
    }

    /// The URL of member `j` of a room: a room's players are spread over the URLs.
    pub fn target(&self, member: usize) -> &Target {
        &self.targets[member % self.targets.len()]
    }

    /// Opens a connection (source address by `i`) and sends `hello` + `join`, holding a
    /// connect slot for both steps, each bounded by the connect timeout.
    pub async fn connect_join(
        &self,
        i: usize,
        target: &Target,
        join: Join,
    ) -> Result<(Ws, JoinedFull, SetupTimes), ConnError> {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await;
        let t1 = Instant::now();
        let mut ws = time::timeout(
            self.connect_timeout,
            conn::open(target, &join.room, self.sources.for_connection(i)),
        )
        .await
        .map_err(|_| ConnError::Timeout)??;
        let t2 = Instant::now();
        let joined = time::timeout(self.connect_timeout, conn::hello_join_with(&mut ws, join))
            .await
            .map_err(|_| ConnError::Timeout)??;
        let t3 = Instant::now();
        Ok((ws, joined, SetupTimes { connect: t2 - t1, join: t3 - t2 }))
    }
}

/// A `join` of a new player.
pub fn new_join(room: String, room_type: RoomType) -> Join {
    Join { room, room_type: room_type.as_str().to_string(), ..Join::default() }
}

/// The load generator and the rest of the machine over a measured window.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFigures {
    pub threads: usize,
    /// Wall-clock seconds of the window the CPU figures cover.
    pub cpu_window_s: f64,
    /// CPU of the generator over the window, % of one core (all its threads together).
    pub generator_cpu_pct: f64,
    /// The validity limit: 90 % of each thread's core.
    pub generator_cpu_limit_pct: f64,
    /// CPU the rest of the machine used, % of one core.
    pub other_cpu_pct: Option<f64>,
    /// CPU stolen by the hypervisor, % of one core.
    pub steal_cpu_pct: Option<f64>,
}

/// The generator's and the machine's figures, with the arena's validity rules: the generator
/// under 90 % of its core(s), other work under 25 % of a core, steal under 10 %.
pub fn machine_figures(cpu: &CpuFigures, threads: usize, validity: &mut Validity) -> MachineFigures {
    let wall = cpu.wall_s.max(1e-9);
    let generator_cpu_pct = 100.0 * cpu.generator_cpu_s / wall;
    let limit = 90.0 * threads as f64;
    validity.check(generator_cpu_pct > limit, || {
        format!(
            "generator CPU {generator_cpu_pct:.1}% > {limit:.0}% of its {threads} thread(s): it \
             measured itself, not the server"
        )
    });
    let other = cpu.other_cpu_s.map(|s| 100.0 * s / wall);
    let steal = cpu.steal_s.map(|s| 100.0 * s / wall);
    validity.check(other.is_some_and(|p| p > OTHER_CPU_LIMIT_PCT), || {
        format!(
            "other work used {:.0}% of a core during the window (limit {OTHER_CPU_LIMIT_PCT}%): \
             the machine was not quiet",
            other.unwrap_or_default()
        )
    });
    validity.check(steal.is_some_and(|p| p > STEAL_LIMIT_PCT), || {
        format!(
            "the hypervisor stole {:.0}% of a core during the window (limit {STEAL_LIMIT_PCT}%)",
            steal.unwrap_or_default()
        )
    });
    for e in &cpu.unreadable {
        validity.check(true, || e.clone());
    }
    MachineFigures {
        threads,
        cpu_window_s: round(cpu.wall_s, 2),
        generator_cpu_pct: round(generator_cpu_pct, 1),
        generator_cpu_limit_pct: limit,
        other_cpu_pct: other.map(|v| round(v, 1)),
        steal_cpu_pct: steal.map(|v| round(v, 1)),
    }
}

/// One server process's CPU over the window.
#[derive(Debug, Clone, Serialize)]
pub struct PidCpu {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_s_per_million_deliveries: Option<f64>,
}

/// The servers given with `--server-pid`: CPU over the window, RSS.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    pub server_pids: Vec<u32>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    /// Server CPU-seconds per 1 M deliveries (null without deliveries in the window).
    pub server_cpu_s_per_million_deliveries: Option<f64>,
    pub server_cpu_s_by_pid: Vec<PidCpu>,
    /// Summed `VmRSS` at the end of the window.
    pub server_rss_mib: Option<f64>,
    /// Summed `VmRSS` before the run's connections were opened.
    pub server_rss_baseline_mib: Option<f64>,
    /// (RSS at the end - baseline) / connections.
    pub rss_per_connection_kib: Option<f64>,
}

/// Server figures for `deliveries` counted over the CPU window, and the RSS growth over
/// `connections` open at the end.
pub fn server_figures(
    common: &Common,
    cpu: &CpuFigures,
    deliveries: u64,
    rss_baseline_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    connections: usize,
) -> ServerFigures {
    let per_million = |s: f64| (deliveries > 0).then(|| round(s / deliveries as f64 * 1e6, 2));
    let wall = cpu.wall_s.max(1e-9);
    ServerFigures {
        server_pids: common.server_pids.clone(),
        server_cpu_s: cpu.server_cpu_s.map(|v| round(v, 2)),
        server_cpu_pct: cpu.server_cpu_s.map(|s| round(100.0 * s / wall, 1)),
        server_cpu_s_per_million_deliveries: cpu.server_cpu_s.and_then(per_million),
        server_cpu_s_by_pid: cpu
            .server_cpu_s_by_pid
            .iter()
            .map(|&(pid, s)| PidCpu { pid, cpu_s: round(s, 2), cpu_s_per_million_deliveries: per_million(s) })
            .collect(),
        server_rss_mib: rss_end_kib.map(|k| round(k as f64 / 1024.0, 1)),
        server_rss_baseline_mib: rss_baseline_kib.map(|k| round(k as f64 / 1024.0, 1)),
        rss_per_connection_kib: match (rss_baseline_kib, rss_end_kib, connections) {
            (Some(b), Some(e), c) if c > 0 => Some(round((e as f64 - b as f64) / c as f64, 2)),
            _ => None,
        },
    }
}

/// The open-files limit and the source addresses of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LimitFigures {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub source_addrs: usize,
    /// Connections the flags asked for; `connections` is fewer when `fd_capped`.
    pub connections_requested: usize,
    pub fd_capped: bool,
}

impl LimitFigures {
    pub fn new(nofile: NofileLimit, net: &Net, budget: &FdBudget) -> Self {
        LimitFigures {
            nofile_soft: nofile.soft,
            nofile_hard: nofile.hard,
            source_addrs: net.sources.len(),
            connections_requested: budget.requested,
            fd_capped: budget.capped.is_some(),
        }
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v} {unit}"))
}

/// The rows every scenario's table ends with.
pub fn common_rows(t: &mut Table, m: &MachineFigures, s: &ServerFigures, valid: bool, reasons: &[String]) {
    t.row(
        "generator cpu",
        format!(
            "{}% of one core (limit {}%) over {} s",
            m.generator_cpu_pct, m.generator_cpu_limit_pct, m.cpu_window_s
        ),
    )
    .row(
        "other cpu",
        format!(
            "{} (limit {OTHER_CPU_LIMIT_PCT}%), stolen {}",
            opt(m.other_cpu_pct, "% of a core"),
            opt(m.steal_cpu_pct, "% of a core")
        ),
    )
    .row(
        "server cpu",
        format!(
            "{} ({}), {} per 1M deliveries",
            opt(s.server_cpu_s, "s"),
            opt(s.server_cpu_pct, "% of a core"),
            opt(s.server_cpu_s_per_million_deliveries, "CPU-s")
        ),
    )
    .row(
        "server rss",
        format!(
            "{} (baseline {}), {} per connection",
            opt(s.server_rss_mib, "MiB"),
            opt(s.server_rss_baseline_mib, "MiB"),
            opt(s.rss_per_connection_kib, "KiB")
        ),
    )
    .row("valid", if valid { "yes".to_string() } else { format!("NO: {}", reasons.join("; ")) });
}

/// Formats a latency summary for the table.
pub fn latency_row(l: Option<&crate::stats::LatencySummary>) -> String {
    match l {
        Some(l) => format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        ),
        None => "no samples".to_string(),
    }
}

/// Waits for the next tick, or forever without a ticker.
pub async fn next_tick(t: &mut Option<time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The first few distinct failure messages of a run, with how often each occurred.
#[derive(Debug, Default)]
pub struct FirstErrors(Vec<(String, u64)>);

impl FirstErrors {
    pub fn push(&mut self, e: impl ToString) {
        let e = e.to_string();
        match self.0.iter().position(|(m, _)| *m == e) {
            Some(at) => self.0[at].1 += 1,
            None if self.0.len() < 5 => self.0.push((e, 1)),
            None => {}
        }
    }

    pub fn first(&self) -> &str {
        self.0.first().map_or("none", |(m, _)| m.as_str())
    }

    pub fn print(&self, scenario: &str) {
        for (e, n) in &self.0 {
            match n {
                1 => eprintln!("{scenario}: {e}"),
                n => eprintln!("{scenario}: {e} (x{n})"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(count: Option<usize>, players: usize, rooms: Option<usize>) -> Population {
        Population { count, players, rooms, room_type: RoomType::Arena }
    }

    #[test]
    fn failures_are_counted_by_message() {
        let mut f = FirstErrors::default();
        assert_eq!(f.first(), "none");
        for m in ["a", "b", "a", "c", "d", "e", "f", "a"] {
            f.push(m);
        }
        assert_eq!(f.first(), "a");
        assert_eq!(
            f.0,
            vec![("a".into(), 3), ("b".into(), 1), ("c".into(), 1), ("d".into(), 1), ("e".into(), 1)]
        );
    }

    #[test]
    fn layouts_put_players_in_rooms() {
        let l = pop(None, 8, None).layout(1000).expect("valid");
        assert_eq!((l.n, l.rooms()), (1000, 125));
        assert_eq!((l.room_of(17), l.member_of(17)), (2, 1));
        let l = pop(Some(10), 4, None).layout(1000).expect("valid");
        assert_eq!(l.rooms(), 3, "the last room holds the rest");
        assert_eq!(pop(None, 8, Some(3)).layout(1000).map(|l| l.n), Ok(24));
        assert!(pop(None, 0, None).layout(10).is_err());
        assert!(pop(Some(0), 8, None).layout(10).is_err());
    }

    #[test]
    fn members_are_spread_over_urls() {
        let l = Layout { n: 10, per_room: 4 };
        // Members 0..4 of rooms 0 and 1, members 0 and 1 of room 2.
        assert_eq!(l.max_per_target(1), 10);
        // URL 0: members 0 and 2 (2 + 2 + 1), URL 1: members 1 and 3 (2 + 2 + 1).
        assert_eq!(l.max_per_target(2), 5);
        // URL 0: members 0 and 3 (3 + 2).
        assert_eq!(l.max_per_target(3), 5);
    }

    #[test]
    fn the_open_files_limit_caps_runs_and_says_so() {
        let lim = NofileLimit { soft: 20_000, hard: 20_000 };
        assert_eq!(fd_budget(5_000, lim), FdBudget { requested: 5_000, allowed: 5_000, capped: None });
        let b = fd_budget(30_000, lim);
        assert_eq!(b.allowed, 20_000 - FD_RESERVE as usize);
        assert!(b.capped.is_some_and(|m| m.contains("hard 20000")));
    }

    #[test]
    fn server_figures_are_per_delivery_and_connection() {
        let cpu = CpuFigures {
            wall_s: 10.0,
            generator_cpu_s: 2.0,
            server_cpu_s: Some(4.0),
            server_cpu_s_by_pid: vec![(7, 4.0)],
            unreadable: vec![],
            other_cpu_s: Some(5.0),
            steal_s: Some(0.0),
        };
        let common = <crate::Cli as clap::Parser>::parse_from(["x", "--server-pid", "7", "idle"]).common;
        let s = server_figures(&common, &cpu, 2_000_000, Some(10 * 1024), Some(20 * 1024), 1024);
        assert_eq!(s.server_cpu_s_per_million_deliveries, Some(2.0));
        assert_eq!(s.server_cpu_pct, Some(40.0));
        assert_eq!(s.rss_per_connection_kib, Some(10.0));
        assert_eq!(s.server_rss_mib, Some(20.0));
        let mut v = Validity::default();
        let m = machine_figures(&cpu, 1, &mut v);
        assert_eq!(m.generator_cpu_pct, 20.0);
        // 50 % of a core used by others: not a quiet machine.
        assert!(!v.is_valid());
        let none = server_figures(&common, &cpu, 0, None, None, 0);
        assert_eq!(none.server_cpu_s_per_million_deliveries, None);
        assert_eq!(none.rss_per_connection_kib, None);
    }
}
