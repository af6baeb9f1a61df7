//! Scenario `arena`: the reference workload W1 (see the design's "Reference workload W1").
//!
//! R rooms of type `arena` with P players each. Every player sends a position input at H Hz;
//! the room applies it and sends the delta to every member, the sender included. We measure
//! the deliveries received by all clients and the latency from an input's *scheduled* send
//! instant to the arrival of the delta that covers it (its own echo, or a newer one of the
//! same player).
//!
//! Timeline: connect and join everyone (bounded by the connect timeout), then sending starts
//! for all at once, each connection at its own phase within the first period; after the
//! warm-up comes the measured window of D seconds, then a drain during which nothing is sent
//! but echoes of in-window inputs are still collected; then every player leaves.
//!
//! Schedule: a `tokio::time::interval` with `MissedTickBehavior::Burst`. When the generator
//! falls behind, the missed inputs are sent back to back, and each one's latency is still
//! measured from its scheduled instant, so a stalled generator (or a server that stops
//! reading) shows up as latency instead of being silently skipped (coordinated omission).
//! Inputs are sent only until the window ends: slots of the window still unsent then count
//! as missed in the schedule adherence, which therefore falls when the generator is
//! persistently behind. `late_sends` counts inputs sent more than one period late.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{encode, ClientMsg, Doc, Op};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, ConnError, SourceAddrs, Target, Ws};
use crate::procstat::{self, CpuWindow, NofileLimit};
use crate::report::{round, Report, Table, Validity};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary, Samples, Timeline};
use crate::wire::{self, Event};
use crate::Common;

/// Flags of `gamerelay-loadtest arena`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArenaArgs {
    /// Rooms (R).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Players per room (P); a room's players are spread over the `--url`s round-robin.
    #[arg(long, default_value_t = 8)]
    pub players: usize,
    /// Inputs per second per player (H).
    #[arg(long, default_value_t = 20.0)]
    pub hz: f64,
    /// Measured window in seconds (D).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Warm-up in seconds: sending, but nothing counted.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// After the window: seconds to keep collecting echoes of in-window inputs.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Distance moved per input (at most 5 units: the arena's speed limit of 400 units/s
    /// never clamps it at 20 Hz).
    #[arg(long, default_value_t = 4.0)]
    pub step: f64,
}

/// The figures of one arena run (the `--json` line).
#[derive(Debug, Serialize)]
struct ArenaFigures {
    scenario: &'static str,
    rooms: usize,
    players: usize,
    hz: f64,
    duration_s: f64,
    warmup_s: f64,
    threads: usize,
    urls: Vec<String>,
    connections: usize,
    connected: usize,
    join_s: f64,
    deliveries: u64,
    deliveries_per_sec: f64,
    /// rooms x players x players x hz: what a server that drops nothing delivers.
    expected_deliveries_per_sec: f64,
    /// Input-to-own-echo latency (null without samples).
    latency_ms: Option<LatencySummary>,
    errors: u64,
    errors_detail: ErrorCounts,
    /// Inputs scheduled in the window, and those of them sent before it ended.
    inputs_scheduled: u64,
    inputs_sent: u64,
    /// In-window inputs never acknowledged, not even by a newer delta, by the end of the drain.
    inputs_unacked: u64,
    schedule_adherence: f64,
    /// Inputs (whole run) sent more than one period after their scheduled instant.
    late_sends: u64,
    send_lag_max_ms: f64,
    /// `resync` frames: the server dropped messages for a lagging member.
    resyncs: u64,
    /// CPU of the generator over the window, as % of one core (all its threads together).
    generator_cpu_pct: f64,
    /// The validity limit for `generator_cpu_pct`: 90 % of each thread's core.
    generator_cpu_limit_pct: f64,
    /// CPU the rest of the machine used over the window (other processes, kernel work not
    /// charged to a process), % of one core. Other work on the pinned cores disturbs the run.
    other_cpu_pct: Option<f64>,
    /// CPU stolen by the hypervisor over the window, % of one core.
    steal_cpu_pct: Option<f64>,
    valid: bool,
    invalid_reasons: Vec<String>,
    server_pids: Vec<u32>,
    server_cpu_s: Option<f64>,
    server_cpu_pct: Option<f64>,
    server_cpu_s_per_million_deliveries: Option<f64>,
    /// Per server process (cluster runs: each node, Redis, HAProxy): CPU-s per 1 M deliveries.
    server_cpu_s_per_million_deliveries_by_pid: Vec<PidFigure>,
    server_rss_mib: Option<f64>,
    /// Server RSS before our connections were opened.
    server_rss_baseline_mib: Option<f64>,
    /// (RSS at window end - baseline) / connections.
    rss_per_connection_kib: Option<f64>,
    nofile_soft: u64,
    nofile_hard: u64,
    source_addrs: usize,
}

/// One server process's share of the CPU.
#[derive(Debug, Clone, Serialize)]
struct PidFigure {
    pid: u32,
    cpu_s: f64,
    cpu_s_per_million_deliveries: Option<f64>,
}

/// What one connection measured.
#[derive(Default)]
struct PlayerResult {
    joined: bool,
    deliveries: u64,
    inputs_scheduled: u64,
    inputs_sent: u64,
    inputs_unacked: u64,
    late_sends: u64,
    send_lag_max: Duration,
    resyncs: u64,
    errors: ErrorCounts,
    samples: Samples,
}

/// Read-only settings every connection task shares.
struct Shared {
    args: ArenaArgs,
    targets: Vec<Target>,
    sources: SourceAddrs,
    room_prefix: String,
    connect_timeout: Duration,
    connect_slots: Semaphore,
    period: Duration,
}

/// Most CPU (% of one core) the rest of the machine may use during a valid window. Loopback
/// TCP processing in softirq context is sometimes not charged to any process and counts here,
/// so the limit leaves room for it; a concurrent build or test run exceeds it.
pub(super) const OTHER_CPU_LIMIT_PCT: f64 = 25.0;
/// Most CPU (% of one core) the hypervisor may steal during a valid window.
pub(super) const STEAL_LIMIT_PCT: f64 = 10.0;

/// Runs the scenario and returns its report.
pub async fn run(common: &Common, args: &ArenaArgs, nofile: NofileLimit) -> Result<Report, String> {
    if args.rooms == 0 || args.players == 0 {
        return Err("--rooms and --players must be at least 1".into());
    }
    super::common::check_rate_flags(args.hz, args.duration, args.warmup, args.drain, args.step)?;
    let n = args.rooms * args.players;
    let mut validity = Validity::default();

    // One descriptor per connection, plus a few for the runtime, stdio and /proc reads.
    let fds_needed = n as u64 + 32;
    if nofile.soft < fds_needed {
        let msg = format!(
            "the open-files limit (soft {}, hard {}) caps this run at about {} connections; \
             {n} requested (raise the hard limit: ulimit -Hn)",
            nofile.soft,
            nofile.hard,
            nofile.soft.saturating_sub(32)
        );
        eprintln!("warning: {msg}");
        validity.check(true, || msg);
    }

    let targets = conn::resolve_targets(&common.urls).await?;
    let per_target = (0..targets.len())
        .map(|t| (0..args.players).filter(|j| j % targets.len() == t).count() * args.rooms)
        .max()
        .unwrap_or(n);
    let sources = SourceAddrs::plan(common.source_addrs, &targets, per_target)?;
    let server_pids = common.server_pids.clone();
    let rss_baseline = procstat::total_rss_kib(&server_pids);

    let shared = Arc::new(Shared {
        args: args.clone(),
        targets,
        sources,
        room_prefix: common.room_prefix(),
        connect_timeout: Duration::from_secs_f64(common.connect_timeout),
        connect_slots: Semaphore::new(common.connect_concurrency.max(1)),
        period: Duration::from_secs_f64(1.0 / args.hz),
    });

    eprintln!(
        "arena: {n} connections ({} rooms x {} players, prefix {:?}) to {} url(s){}",
        args.rooms,
        args.players,
        shared.room_prefix,
        shared.targets.len(),
        match shared.sources.len() {
            0 => String::new(),
            k => format!(" from {k} source addresses"),
        }
    );
    let (joined_tx, mut joined_rx) = mpsc::channel::<Result<(), ConnError>>(n);
    let (start_tx, start_rx) = watch::channel::<Option<Timeline>>(None);
    let connect_started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(player(shared.clone(), i, joined_tx.clone(), start_rx.clone())))
        .collect();
    drop(joined_tx);

    // Every task reports once; each is bounded by the connect timeout after it got a slot.
    let mut connected = 0usize;
    let mut failures: Vec<String> = Vec::new();
    while let Some(outcome) = joined_rx.recv().await {
        match outcome {
            Ok(()) => connected += 1,
            Err(e) => {
                if failures.len() < 5 {
                    failures.push(e.to_string());
                }
            }
        }
    }
    let join_s = connect_started.elapsed().as_secs_f64();
    eprintln!("arena: {connected}/{n} joined in {join_s:.1} s");
    for f in &failures {
        eprintln!("arena: connection failed: {f}");
    }
    if connected == 0 {
        return Err(format!(
            "no connection joined (first error: {})",
            failures.first().map_or("none", String::as_str)
        ));
    }

    let tl = Timeline::new(
        Instant::now() + Duration::from_millis(200),
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
        Duration::from_secs_f64(args.drain),
    );
    // Receivers are only gone if every task has ended already; nothing to start then.
    let _ = start_tx.send(Some(tl));
    eprintln!("arena: warm-up {} s, window {} s, drain {} s", args.warmup, args.duration, args.drain);

    time::sleep_until(tl.window_start).await;
    let cpu = CpuWindow::begin(&server_pids);
    time::sleep_until(tl.window_end).await;
    let cpu = cpu.finish();
    let rss_end = procstat::total_rss_kib(&server_pids);

    let mut total = PlayerResult::default();
    let mut histogram = LatencyHistogram::new();
    let mut lost_tasks = 0u64;
    let collect_deadline = tl.stop + Duration::from_secs(10);
    for task in tasks {
        match time::timeout_at(collect_deadline, task).await {
            Ok(Ok(r)) => {
                histogram.add(&r.samples);
                total.deliveries += r.deliveries;
                total.inputs_scheduled += r.inputs_scheduled;
                total.inputs_sent += r.inputs_sent;
                total.inputs_unacked += r.inputs_unacked;
                total.late_sends += r.late_sends;
                total.send_lag_max = total.send_lag_max.max(r.send_lag_max);
                total.resyncs += r.resyncs;
                total.errors.add(&r.errors);
            }
            // A task that panicked or hung past the deadline: its figures are lost.
            Ok(Err(_)) | Err(_) => lost_tasks += 1,
        }
    }

    let threads = common.threads.max(1);
    let generator_cpu_pct = 100.0 * cpu.generator_cpu_s / cpu.wall_s;
    let cpu_limit_pct = 90.0 * threads as f64;
    let deliveries_per_sec = total.deliveries as f64 / args.duration;
    let adherence = if total.inputs_scheduled > 0 {
        total.inputs_sent as f64 / total.inputs_scheduled as f64
    } else {
        0.0
    };
    validity.check(generator_cpu_pct > cpu_limit_pct, || {
        format!(
            "generator CPU {generator_cpu_pct:.1}% > {cpu_limit_pct:.0}% of its {threads} \
             thread(s): it measured itself, not the server"
        )
    });
    validity.check(adherence < 0.95, || {
        format!("schedule adherence {:.1}% < 95%: the generator could not send on time", adherence * 100.0)
    });
    let other_cpu_pct = cpu.other_cpu_s.map(|s| 100.0 * s / cpu.wall_s);
    let steal_cpu_pct = cpu.steal_s.map(|s| 100.0 * s / cpu.wall_s);
    validity.check(other_cpu_pct.is_some_and(|p| p > OTHER_CPU_LIMIT_PCT), || {
        format!(
            "other work used {:.0}% of a core during the window (limit {OTHER_CPU_LIMIT_PCT}%): \
             the machine was not quiet",
            other_cpu_pct.unwrap_or_default()
        )
    });
    validity.check(steal_cpu_pct.is_some_and(|p| p > STEAL_LIMIT_PCT), || {
        format!(
            "the hypervisor stole {:.0}% of a core during the window (limit {STEAL_LIMIT_PCT}%)",
            steal_cpu_pct.unwrap_or_default()
        )
    });
    validity.check(connected < n, || format!("only {connected} of {n} connections joined"));
    validity.check(lost_tasks > 0, || format!("{lost_tasks} connection tasks did not finish"));
    validity.check(total.deliveries == 0, || "no deliveries in the window".into());
    for e in &cpu.unreadable {
        validity.check(true, || e.clone());
    }

    let server_cpu_pct = cpu.server_cpu_s.map(|s| 100.0 * s / cpu.wall_s);
    let per_million = cpu
        .server_cpu_s
        .and_then(|s| (deliveries_per_sec > 0.0).then(|| s / cpu.wall_s / deliveries_per_sec * 1e6));
    let rss_per_conn = match (rss_baseline, rss_end) {
        (Some(b), Some(e)) => Some((e as f64 - b as f64) / connected as f64),
        _ => None,
    };
    let latency = histogram.summary();
    let valid = validity.is_valid();
    let figures = ArenaFigures {
        scenario: "arena",
        rooms: args.rooms,
        players: args.players,
        hz: args.hz,
        duration_s: args.duration,
        warmup_s: args.warmup,
        threads,
        urls: common.urls.clone(),
        connections: n,
        connected,
        join_s: round(join_s, 2),
        deliveries: total.deliveries,
        deliveries_per_sec: deliveries_per_sec.round(),
        expected_deliveries_per_sec: (n * args.players) as f64 * args.hz,
        latency_ms: latency.clone(),
        errors: total.errors.total(),
        errors_detail: total.errors,
        inputs_scheduled: total.inputs_scheduled,
        inputs_sent: total.inputs_sent,
        inputs_unacked: total.inputs_unacked,
        schedule_adherence: round(adherence, 4),
        late_sends: total.late_sends,
        send_lag_max_ms: round(total.send_lag_max.as_secs_f64() * 1000.0, 2),
        resyncs: total.resyncs,
        generator_cpu_pct: round(generator_cpu_pct, 1),
        generator_cpu_limit_pct: cpu_limit_pct,
        other_cpu_pct: other_cpu_pct.map(|v| round(v, 1)),
        steal_cpu_pct: steal_cpu_pct.map(|v| round(v, 1)),
        valid,
        invalid_reasons: validity.into_reasons(),
        server_pids,
        server_cpu_s: cpu.server_cpu_s.map(|v| round(v, 2)),
        server_cpu_pct: server_cpu_pct.map(|v| round(v, 1)),
        server_cpu_s_per_million_deliveries: per_million.map(|v| round(v, 2)),
        server_cpu_s_per_million_deliveries_by_pid: cpu
            .server_cpu_s_by_pid
            .iter()
            .map(|&(pid, s)| PidFigure {
                pid,
                cpu_s: round(s, 2),
                cpu_s_per_million_deliveries: (deliveries_per_sec > 0.0)
                    .then(|| round(s / cpu.wall_s / deliveries_per_sec * 1e6, 2)),
            })
            .collect(),
        server_rss_mib: rss_end.map(|k| round(k as f64 / 1024.0, 1)),
        server_rss_baseline_mib: rss_baseline.map(|k| round(k as f64 / 1024.0, 1)),
        rss_per_connection_kib: rss_per_conn.map(|v| round(v, 1)),
        nofile_soft: nofile.soft,
        nofile_hard: nofile.hard,
        source_addrs: shared.sources.len(),
    };
    let table = summary_table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn summary_table(f: &ArenaFigures) -> Table {
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v} {unit}"));
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "arena W1: {} rooms x {} players at {} Hz, {} s window",
            f.rooms, f.players, f.hz, f.duration_s
        ),
    )
    .row("connections", format!("{}/{} joined in {} s", f.connected, f.connections, f.join_s))
    .row("deliveries/s", format!("{} (expected {})", f.deliveries_per_sec, f.expected_deliveries_per_sec));
    match &f.latency_ms {
        Some(l) => t.row(
            "latency ms",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            ),
        ),
        None => t.row("latency ms", "no samples"),
    };
    t.row(
        "inputs",
        format!(
            "{}/{} sent in window (adherence {:.1}%), {} unacked, {} late, max lag {} ms",
            f.inputs_sent,
            f.inputs_scheduled,
            f.schedule_adherence * 100.0,
            f.inputs_unacked,
            f.late_sends,
            f.send_lag_max_ms
        ),
    )
    .row("errors", {
        let e = &f.errors_detail;
        format!(
            "{} (connect {}, rejects {}, error frames {}, closed {}, bad frames {}, \
                 send failures {}), resyncs {}",
            f.errors,
            e.connect,
            e.rejects,
            e.error_frames,
            e.closed,
            e.bad_frames,
            e.send_failures,
            f.resyncs
        )
    })
    .row(
        "generator cpu",
        format!("{}% of one core (limit {}%)", f.generator_cpu_pct, f.generator_cpu_limit_pct),
    )
    .row(
        "other cpu",
        format!(
            "{} (limit {OTHER_CPU_LIMIT_PCT}%), stolen {}",
            opt(f.other_cpu_pct, "% of a core"),
            opt(f.steal_cpu_pct, "% of a core")
        ),
    )
    .row(
        "server cpu",
        format!(
            "{} ({}), {} per 1M deliveries",
            opt(f.server_cpu_s, "s"),
            opt(f.server_cpu_pct, "% of a core"),
            opt(f.server_cpu_s_per_million_deliveries, "CPU-s")
        ),
    )
    .row(
        "server rss",
        format!(
            "{} (baseline {}), {} per connection",
            opt(f.server_rss_mib, "MiB"),
            opt(f.server_rss_baseline_mib, "MiB"),
            opt(f.rss_per_connection_kib, "KiB")
        ),
    )
    .row("valid", if f.valid { "yes".to_string() } else { format!("NO: {}", f.invalid_reasons.join("; ")) });
    t
}

/// A deterministic pseudo-random number in [0, 1) for connection `i` (splitmix64).
pub(super) fn unit_hash(i: u64, salt: u64) -> f64 {
    let mut z = i.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// One player: connect, join, then send inputs on schedule and read deltas until the end.
async fn player(
    sh: Arc<Shared>,
    i: usize,
    joined_tx: mpsc::Sender<Result<(), ConnError>>,
    mut start_rx: watch::Receiver<Option<Timeline>>,
) -> PlayerResult {
    let mut r = PlayerResult::default();
    let room = format!("{}{}", sh.room_prefix, i / sh.args.players);
    let target = &sh.targets[(i % sh.args.players) % sh.targets.len()];
    let source = sh.sources.for_connection(i);

    let setup = async {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = sh.connect_slots.acquire().await;
        let mut ws = time::timeout(sh.connect_timeout, conn::open(target, &room, source))
            .await
            .map_err(|_| ConnError::Timeout)??;
        let joined = time::timeout(sh.connect_timeout, conn::hello_join(&mut ws, &room, "arena"))
            .await
            .map_err(|_| ConnError::Timeout)??;
        Ok::<_, ConnError>((ws, joined))
    };
    let (ws, joined) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            r.errors.connect = 1;
            let _ = joined_tx.send(Err(e)).await;
            return r;
        }
    };
    r.joined = true;
    let _ = joined_tx.send(Ok(())).await;
    drop(joined_tx);

    let tl = match start_rx.wait_for(Option::is_some).await {
        Ok(t) => match *t {
            Some(t) => t,
            None => return r,
        },
        Err(_) => return r,
    };
    let x = conn::number_at(&joined.state, &format!("players/{}/x", joined.player));
    let y = conn::number_at(&joined.state, &format!("players/{}/y", joined.player));
    let mut mover = Mover::new(x.unwrap_or(500.0), y.unwrap_or(500.0), sh.args.step, unit_hash(i as u64, 1));
    let mut p = Player { ws, me: joined.player, tl, pending: VecDeque::with_capacity(16), r };
    let expected = (sh.args.hz * sh.args.duration * 1.02) as usize + 4;
    p.r.samples = Samples::with_capacity(expected);
    p.run(&sh, &mut mover, i).await;
    p.r
}

/// State of one connected player during the run.
struct Player {
    ws: Ws,
    me: String,
    tl: Timeline,
    /// Sent inputs not yet covered by an echo: (cid, scheduled instant), in cid order.
    pending: VecDeque<(u64, Instant)>,
    r: PlayerResult,
}

impl Player {
    async fn run(&mut self, sh: &Shared, mover: &mut Mover, i: usize) {
        let period = sh.period;
        let first = self.tl.start + period.mul_f64(unit_hash(i as u64, 2));
        self.r.inputs_scheduled = self.tl.slots_in_window(first, period);
        let mut ticker = time::interval_at(first, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let stop = time::sleep_until(self.tl.stop);
        tokio::pin!(stop);
        let path_x = format!("players/{}/x", self.me);
        let path_y = format!("players/{}/y", self.me);
        let mut cid = 0u64;
        let mut sending = true;
        let mut open = true;
        loop {
            tokio::select! {
                // Sends first: they are ready only when due, and must not queue behind a
                // backlog of frames to read.
                biased;
                scheduled = ticker.tick(), if sending => {
                    if Instant::now() >= self.tl.window_end {
                        sending = false;
                        continue;
                    }
                    cid += 1;
                    let (x, y) = mover.step();
                    let msg = ClientMsg::Ops {
                        cid,
                        ops: vec![
                            Op::Set { path: path_x.clone(), value: Doc::number(x).unwrap_or_default() },
                            Op::Set { path: path_y.clone(), value: Doc::number(y).unwrap_or_default() },
                        ],
                    };
                    if self.ws.send(Message::Binary(encode(&msg))).await.is_err() {
                        self.r.errors.send_failures += 1;
                        open = false;
                        break;
                    }
                    let lag = Instant::now().saturating_duration_since(scheduled);
                    self.r.send_lag_max = self.r.send_lag_max.max(lag);
                    if lag > period {
                        self.r.late_sends += 1;
                    }
                    if self.tl.in_window(scheduled) {
                        self.r.inputs_sent += 1;
                    }
                    self.pending.push_back((cid, scheduled));
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(frame))) => self.on_frame(&frame),
                    Some(Ok(Message::Text(_))) => self.r.errors.bad_frames += 1,
                    // Pings are answered by tungstenite; pongs and raw frames need nothing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        self.r.errors.closed += 1;
                        open = false;
                        break;
                    }
                },
                _ = &mut stop => break,
            }
        }
        self.r.inputs_unacked = self.pending.iter().filter(|(_, s)| self.tl.in_window(*s)).count() as u64;
        if open {
            // Leave for good, so the server does not keep our players through the reconnect
            // grace (back-to-back runs on one server would otherwise pile up).
            let leave = encode(&ClientMsg::Leave);
            let _ = time::timeout(Duration::from_secs(2), async {
                let _ = self.ws.send(Message::Binary(leave)).await;
                let _ = self.ws.close(None).await;
            })
            .await;
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let now = Instant::now();
        let in_window = self.tl.in_window(now);
        let Player { me, tl, pending, r, .. } = self;
        let mut on_event = |ev: Event| match ev {
            Event::Delta { mine, cid } => {
                if in_window {
                    r.deliveries += 1;
                }
                if let (true, Some(cid)) = (mine, cid) {
                    acknowledge(pending, &mut r.samples, tl, cid, now);
                }
            }
            Event::Ack { cid } => acknowledge(pending, &mut r.samples, tl, cid, now),
            Event::Reject { cid } => {
                r.errors.rejects += 1;
                if let Some(at) = pending.iter().position(|&(c, _)| c == cid) {
                    pending.remove(at);
                }
            }
            Event::Resync => r.resyncs += 1,
            Event::Error => r.errors.error_frames += 1,
            Event::Other => {}
        };
        if wire::scan_frame(frame, me.as_bytes(), &mut on_event).is_err() {
            r.errors.bad_frames += 1;
        }
    }
}

/// The delta of `cid` arrived at `now`: it covers `cid` and every older pending input (the
/// server applies a player's batches in order; a newer position supersedes older ones).
fn acknowledge(
    pending: &mut VecDeque<(u64, Instant)>,
    samples: &mut Samples,
    tl: &Timeline,
    cid: u64,
    now: Instant,
) {
    while let Some(&(c, scheduled)) = pending.front() {
        if c > cid {
            break;
        }
        pending.pop_front();
        if tl.in_window(scheduled) {
            samples.push(now.saturating_duration_since(scheduled));
        }
    }
}

/// Moves a player in a straight line at `step` units per input, bouncing off a margin inside
/// the 1000 x 1000 arena, so that no input is ever clamped by the server.
pub(super) struct Mover {
    x: f64,
    y: f64,
    dx: f64,
    dy: f64,
}

impl Mover {
    const MIN: f64 = 10.0;
    const MAX: f64 = 990.0;

    pub(super) fn new(x: f64, y: f64, step: f64, direction: f64) -> Self {
        let angle = direction * std::f64::consts::TAU;
        Mover {
            x: x.clamp(Self::MIN, Self::MAX),
            y: y.clamp(Self::MIN, Self::MAX),
            dx: step * angle.cos(),
            dy: step * angle.sin(),
        }
    }

    /// The next position, rounded to 1/100 of a unit.
    pub(super) fn step(&mut self) -> (f64, f64) {
        fn advance(v: &mut f64, d: &mut f64) {
            if !(Mover::MIN..=Mover::MAX).contains(&(*v + *d)) {
                *d = -*d;
            }
            *v = ((*v + *d) * 100.0).round() / 100.0;
        }
        advance(&mut self.x, &mut self.dx);
        advance(&mut self.y, &mut self.dy);
        (self.x, self.y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movers_stay_inside_and_move_little() {
        let mut m = Mover::new(995.0, 3.0, 5.0, 0.3);
        let (mut px, mut py) = (m.x, m.y);
        for _ in 0..10_000 {
            let (x, y) = m.step();
            assert!((Mover::MIN..=Mover::MAX).contains(&x));
            assert!((Mover::MIN..=Mover::MAX).contains(&y));
            assert!(((x - px).powi(2) + (y - py).powi(2)).sqrt() <= 5.02);
            (px, py) = (x, y);
        }
    }

    #[test]
    fn an_echo_covers_older_inputs() {
        let now = Instant::now();
        let tl = Timeline::new(now, Duration::ZERO, Duration::from_secs(10), Duration::ZERO);
        let mut pending: VecDeque<(u64, Instant)> =
            (1..=4).map(|c| (c, now + Duration::from_millis(50 * c))).collect();
        let mut samples = Samples::default();
        let arrival = now + Duration::from_millis(400);
        acknowledge(&mut pending, &mut samples, &tl, 3, arrival);
        assert_eq!(samples.len(), 3);
        assert_eq!(pending.front().map(|p| p.0), Some(4));
        let mut h = LatencyHistogram::new();
        h.add(&samples);
        let s = h.summary().expect("samples");
        assert!((s.max - 350.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn phases_are_spread() {
        let v: Vec<f64> = (0..1000).map(|i| unit_hash(i, 2)).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let low = v.iter().filter(|&&x| x < 0.5).count();
        assert!((400..600).contains(&low));
    }
}
