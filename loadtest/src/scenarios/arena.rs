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
//!
//! Probe mode (`--probes K`): every player still sends on schedule and counts what it
//! receives, but only K players per room keep the per-input bookkeeping that latency needs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{encode, ClientMsg, Doc, Op};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::common::{self, LimitFigures, MachineFigures, ServerFigures};
use crate::conn::{self, ConnError, SourceAddrs, Target, Ws};
use crate::procstat::{self, CpuWindow, NofileLimit};
use crate::progress::{Counter, Progress};
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
    /// Probe mode: only the first K players of each room measure latency (and unacked
    /// inputs); the others send on the same schedule and count deliveries but keep no
    /// per-input bookkeeping, which keeps the generator lean at high R. 0 = every player.
    #[arg(long, default_value_t = 0)]
    pub probes: usize,
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
    /// Players per room that measure latency (= players without `--probes`).
    probes_per_room: usize,
    hz: f64,
    duration_s: f64,
    warmup_s: f64,
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
    #[serde(flatten)]
    machine: MachineFigures,
    #[serde(flatten)]
    server: ServerFigures,
    #[serde(flatten)]
    limits: LimitFigures,
    valid: bool,
    invalid_reasons: Vec<String>,
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
    /// Deltas received (all phases), for the progress line.
    delivered: Counter,
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
        delivered: Counter::default(),
    });
    let progress = Progress::new(common.no_progress);

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
    let bar = progress.connecting("arena", n as u64);
    while let Some(outcome) = joined_rx.recv().await {
        bar.inc(1);
        match outcome {
            Ok(()) => connected += 1,
            Err(e) => {
                if failures.len() < 5 {
                    failures.push(e.to_string());
                }
            }
        }
    }
    bar.finish_and_clear();
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
    let bar = progress.timed("arena", tl, Some(shared.delivered.clone()));

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
    bar.finish_and_clear();

    let deliveries_per_sec = total.deliveries as f64 / args.duration;
    let adherence = if total.inputs_scheduled > 0 {
        total.inputs_sent as f64 / total.inputs_scheduled as f64
    } else {
        0.0
    };
    validity.check(adherence < 0.95, || {
        format!("schedule adherence {:.1}% < 95%: the generator could not send on time", adherence * 100.0)
    });
    validity.check(connected < n, || format!("only {connected} of {n} connections joined"));
    validity.check(lost_tasks > 0, || format!("{lost_tasks} connection tasks did not finish"));
    validity.check(total.deliveries == 0, || "no deliveries in the window".into());
    let machine = common::machine_figures(&cpu, common.threads.max(1), &mut validity);
    let server = common::server_figures(common, &cpu, total.deliveries, rss_baseline, rss_end, connected);
    let valid = validity.is_valid();
    let figures = ArenaFigures {
        scenario: "arena",
        rooms: args.rooms,
        players: args.players,
        probes_per_room: probes_per_room(args),
        hz: args.hz,
        duration_s: args.duration,
        warmup_s: args.warmup,
        urls: common.urls.clone(),
        connections: n,
        connected,
        join_s: round(join_s, 2),
        deliveries: total.deliveries,
        deliveries_per_sec: deliveries_per_sec.round(),
        expected_deliveries_per_sec: (n * args.players) as f64 * args.hz,
        latency_ms: histogram.summary(),
        errors: total.errors.total(),
        errors_detail: total.errors,
        inputs_scheduled: total.inputs_scheduled,
        inputs_sent: total.inputs_sent,
        inputs_unacked: total.inputs_unacked,
        schedule_adherence: round(adherence, 4),
        late_sends: total.late_sends,
        send_lag_max_ms: round(total.send_lag_max.as_secs_f64() * 1000.0, 2),
        resyncs: total.resyncs,
        machine,
        server,
        limits: LimitFigures {
            nofile_soft: nofile.soft,
            nofile_hard: nofile.hard,
            source_addrs: shared.sources.len(),
            connections_requested: n,
            fd_capped: nofile.soft < fds_needed,
        },
        valid,
        invalid_reasons: validity.into_reasons(),
    };
    let table = summary_table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn summary_table(f: &ArenaFigures) -> Table {
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "arena W1: {} rooms x {} players at {} Hz, {} s window{}",
            f.rooms,
            f.players,
            f.hz,
            f.duration_s,
            if f.probes_per_room < f.players {
                format!(", latency from {} probe(s) per room", f.probes_per_room)
            } else {
                String::new()
            }
        ),
    )
    .row("connections", format!("{}/{} joined in {} s", f.connected, f.connections, f.join_s))
    .row("deliveries/s", format!("{} (expected {})", f.deliveries_per_sec, f.expected_deliveries_per_sec));
    t.row("latency ms", common::latency_row(f.latency_ms.as_ref()))
        .row(
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
        });
    common::common_rows(&mut t, &f.machine, &f.server, f.valid, &f.invalid_reasons);
    t
}

/// Players per room that measure latency.
fn probes_per_room(args: &ArenaArgs) -> usize {
    match args.probes {
        0 => args.players,
        k => k.min(args.players),
    }
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
    let probe = i % sh.args.players < probes_per_room(&sh.args);
    let mut p = Player { ws, me: joined.player, tl, probe, pending: VecDeque::with_capacity(16), r };
    if probe {
        let expected = (sh.args.hz * sh.args.duration * 1.02) as usize + 4;
        p.r.samples = Samples::with_capacity(expected);
    }
    p.run(&sh, &mut mover, i).await;
    p.r
}

/// State of one connected player during the run.
struct Player {
    ws: Ws,
    me: String,
    tl: Timeline,
    /// Whether this player measures latency (all do unless `--probes` is given).
    probe: bool,
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
                    if self.probe {
                        self.pending.push_back((cid, scheduled));
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(frame))) => self.on_frame(&frame, &sh.delivered),
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

    fn on_frame(&mut self, frame: &[u8], delivered: &Counter) {
        let now = Instant::now();
        let in_window = self.tl.in_window(now);
        let Player { me, tl, pending, r, .. } = self;
        let mut deltas = 0;
        let mut on_event = |ev: Event| match ev {
            Event::Delta { mine, cid } => {
                deltas += 1;
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
        let scanned = wire::scan_frame(frame, me.as_bytes(), &mut on_event);
        delivered.add(deltas);
        if scanned.is_err() {
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
