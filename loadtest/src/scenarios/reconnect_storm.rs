//! Scenario `reconnect-storm`: N connected players, all dropped at once, all resuming.
//!
//! Timeline: everyone joins (rooms of P) and keeps a mirror of its room (snapshot + deltas,
//! [`crate::mirror`]); players send inputs at `--hz` (0: none) during a warm-up; then at one
//! instant every connection is dropped abruptly (the socket is closed without a WebSocket
//! close frame; `--rst` resets it instead). Each player at once (or after its share of
//! `--jitter`) reconnects and resumes with `join{session, epoch, seq}` of its mirror, retrying
//! a failed connect up to `--attempts` times; after `joined{resumed: true}` it takes the
//! snapshot, or applies the missed deltas that follow, and re-sends its unacknowledged input
//! batches with their original cids (the server answers `ack` for those it had applied).
//! Resumed players go on sending, so players still away miss deltas they must get on resume.
//!
//! Measured: the time from the drop until every player has resumed (`all_resumed_s`), the
//! resume latency of each player (the drop to its `joined`: connect slot queueing, retries,
//! TCP, WebSocket and join included), the handshake time of the successful attempt alone,
//! how resumes were served (missed deltas or snapshot), and server CPU over the storm.
//!
//! Correctness: `--after` seconds after the last resume inputs stop; one fresh observer per
//! room joins and its `joined.snapshot` is the room's state at `(epoch, seq)` with its hash;
//! a second later (the observer's own arrival is a delta the players receive) every player
//! compares its mirror: same epoch and seq, and the same state hash. Any difference, a stale
//! mirror (broken history), a snapshot whose hash does not match its state, or a failed
//! resume is an error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{decode_server, encode, ClientMsg, Doc, Join, Op, ServerMsg};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::arena::{unit_hash, Mover};
use super::common::{
    self, fd_budget, new_join, next_tick, FirstErrors, Layout, LimitFigures, MachineFigures, Net, Population,
    RoomType, ServerFigures,
};
use super::join_storm::error_row;
use crate::conn::{self, ConnError, Ws};
use crate::mirror::{Applied, Checkpoint, Mirror};
use crate::procstat::{self, CpuWindow, NofileLimit};
use crate::report::{round, Report, Table, Validity};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary};
use crate::Common;

/// Flags of `gamerelay-loadtest reconnect-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconnectStormArgs {
    #[command(flatten)]
    pub pop: Population,
    /// Inputs per second per player, before, during and after the storm (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub hz: f64,
    /// Seconds everyone is connected (and sending) before the drop.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Most seconds after the drop for everyone to resume; players not resumed by then
    /// count as failed. Keep it below the server's reconnect grace (default 30 s).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of inputs after the last resume, before the correctness check.
    #[arg(long, default_value_t = 1.0)]
    pub after: f64,
    /// Spread the reconnects uniformly over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Drop with a TCP RST (SO_LINGER 0) instead of a FIN; never a WebSocket close frame.
    #[arg(long)]
    pub rst: bool,
    /// Resume attempts per player; a failed connect or join (other than `session_expired`)
    /// is retried after 100 ms x 2^k.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Distance moved per input (arena: at most 5 units, never clamped).
    #[arg(long, default_value_t = 4.0)]
    pub step: f64,
}

/// How the correctness check went.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Correctness {
    /// Mirrors compared with their room's observer.
    checked: u64,
    /// Same epoch, seq and state hash as the room.
    ok: u64,
    /// Same (epoch, seq) but another state hash.
    hash_mismatch: u64,
    /// Another (epoch, seq) than the room's (missed or extra deltas).
    seq_mismatch: u64,
    /// Mirrors that broke (a delta that did not continue their history).
    stale: u64,
    /// Resumed players whose mirror could not be checked (their room's observer failed, or
    /// they did not answer the check).
    unchecked: u64,
    /// Snapshots (joined or resync, players and observers) whose hash did not match the state.
    snapshot_hash_mismatch: u64,
}

impl Correctness {
    fn failures(&self) -> u64 {
        self.hash_mismatch + self.seq_mismatch + self.stale + self.unchecked + self.snapshot_hash_mismatch
    }
}

/// The figures of one reconnect storm (the `--json` line).
#[derive(Debug, Serialize)]
struct ReconnectFigures {
    scenario: &'static str,
    room_type: &'static str,
    players: usize,
    rooms: usize,
    connections: usize,
    hz: f64,
    drop: &'static str,
    jitter_s: f64,
    concurrency: usize,
    urls: Vec<String>,
    connected: usize,
    resumed: usize,
    /// The drop to the last `joined{resumed}`; null when not everyone resumed.
    all_resumed_s: Option<f64>,
    /// Resume latency: the drop to `joined` (queueing, retries, connect, join).
    latency_ms: Option<LatencySummary>,
    /// The successful attempt alone: TCP + WebSocket + hello/join.
    handshake_ms: Option<LatencySummary>,
    resumed_with_deltas: u64,
    resumed_with_snapshot: u64,
    /// Failed attempts that were retried.
    retries: u64,
    resume_failures: u64,
    /// `session_expired` answers (included in `resume_failures`).
    sessions_expired: u64,
    correctness: Correctness,
    /// Deltas received by all players between the drop and the last resume (or deadline).
    deliveries: u64,
    deliveries_per_sec: f64,
    inputs_sent: u64,
    /// Unacknowledged batches re-sent after the resume with their original cids.
    inputs_resent: u64,
    /// `ack` answers (a re-sent batch the server had applied before the drop).
    acks: u64,
    resyncs: u64,
    /// Deltas that broke a mirror's history (the mirror then counts as stale).
    history_breaks: u64,
    errors: u64,
    errors_detail: ErrorCounts,
    server_cpu_ms_per_resume: Option<f64>,
    #[serde(flatten)]
    machine: MachineFigures,
    #[serde(flatten)]
    server: ServerFigures,
    #[serde(flatten)]
    limits: LimitFigures,
    valid: bool,
    invalid_reasons: Vec<String>,
}

/// When the drop happens and when inputs start.
#[derive(Debug, Clone, Copy)]
struct Start {
    inputs_from: Instant,
    drop_at: Instant,
    /// A resume after this counts as failed (`--duration`).
    resume_deadline: Instant,
}

/// What the players do after the resumes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Sending inputs.
    Run,
    /// Inputs stopped; reading only.
    Quiet,
    /// Report the mirror's checkpoint, keep the connection.
    Check,
    /// Leave and end.
    Leave,
}

/// How a player's resume went.
enum Resume {
    Done { latency: Duration, handshake: Duration, snapshot: bool, retries: u32 },
    Failed { why: String, expired: bool, retries: u32 },
}

/// What one player counted.
#[derive(Debug, Default)]
struct PlayerResult {
    errors: ErrorCounts,
    inputs_sent: u64,
    inputs_resent: u64,
    acks: u64,
    resyncs: u64,
    /// Deltas that did not continue the mirror's history (gap, other epoch, bad op).
    history_breaks: u64,
    snapshot_hash_mismatch: u64,
}

struct Shared {
    args: ReconnectStormArgs,
    net: Net,
    layout: Layout,
    room_type: RoomType,
    period: Option<Duration>,
    deliveries: AtomicU64,
}

/// Channels a player reports on.
struct Reports {
    joined: mpsc::UnboundedSender<Result<(), ConnError>>,
    resumed: mpsc::UnboundedSender<Resume>,
    checked: mpsc::UnboundedSender<(usize, Checkpoint)>,
}

pub async fn run(common: &Common, args: &ReconnectStormArgs, nofile: NofileLimit) -> Result<Report, String> {
    if !(args.hz >= 0.0 && args.hz <= 100.0) {
        return Err("--hz must be in [0, 100]".into());
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.after >= 0.0 && args.jitter >= 0.0) {
        return Err("--duration must be > 0; --warmup, --after and --jitter >= 0".into());
    }
    if !(args.step > 0.0 && args.step <= 5.0) {
        return Err("--step must be in (0, 5]".into());
    }
    if args.attempts == 0 {
        return Err("--attempts must be at least 1".into());
    }
    let mut layout = args.pop.layout(1000)?;
    let requested = layout.n;
    // One observer per room joins at the end.
    let budget = fd_budget(layout.n + layout.rooms(), nofile);
    let mut validity = Validity::default();
    if let Some(msg) = &budget.capped {
        eprintln!("warning: {msg}");
        validity.check(true, || msg.clone());
        layout.n = budget.allowed * layout.per_room / (layout.per_room + 1);
        if layout.n == 0 {
            return Err(msg.clone());
        }
    }
    let n = layout.n;
    let rooms = layout.rooms();
    let net = Net::new(common, layout, rooms).await?;
    let mut limits = LimitFigures::new(nofile, &net, &budget);
    // The budget also counted one observer per room.
    limits.connections_requested = requested;
    eprintln!(
        "reconnect-storm: {n} players in {rooms} {} rooms of {}, inputs at {} Hz, to {} url(s)",
        args.pop.room_type.as_str(),
        layout.per_room,
        args.hz,
        net.targets.len()
    );
    let sh = Arc::new(Shared {
        args: args.clone(),
        net,
        layout,
        room_type: args.pop.room_type,
        period: (args.hz > 0.0).then(|| Duration::from_secs_f64(1.0 / args.hz)),
        deliveries: 0.into(),
    });
    let rss_baseline = procstat::total_rss_kib(&common.server_pids);

    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    let (resumed_tx, mut resumed_rx) = mpsc::unbounded_channel();
    let (checked_tx, mut checked_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel::<Option<Start>>(None);
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let connect_started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let reports = Reports {
                joined: joined_tx.clone(),
                resumed: resumed_tx.clone(),
                checked: checked_tx.clone(),
            };
            tokio::spawn(player(sh.clone(), i, reports, start_rx.clone(), phase_rx.clone()))
        })
        .collect();
    drop((joined_tx, resumed_tx, checked_tx));

    // Every task reports once (each setup step is bounded by the connect timeout).
    let (mut connected, mut failed) = (0usize, 0usize);
    let mut failures = FirstErrors::default();
    while connected + failed < n {
        match joined_rx.recv().await {
            Some(Ok(())) => connected += 1,
            Some(Err(e)) => {
                failed += 1;
                failures.push(format!("connection failed: {e}"));
            }
            None => break,
        }
    }
    eprintln!("reconnect-storm: {connected}/{n} joined in {:.1} s", connect_started.elapsed().as_secs_f64());
    failures.print("reconnect-storm");
    if connected == 0 {
        return Err(format!("no player joined (first error: {})", failures.first()));
    }

    let inputs_from = Instant::now() + Duration::from_millis(200);
    let drop_at = inputs_from + Duration::from_secs_f64(args.warmup);
    let deadline = drop_at + Duration::from_secs_f64(args.duration);
    let _ = start_tx.send(Some(Start { inputs_from, drop_at, resume_deadline: deadline }));
    time::sleep_until(drop_at).await;
    let cpu = CpuWindow::begin(&common.server_pids);
    let deliveries_before = sh.deliveries.load(Ordering::Relaxed);
    eprintln!(
        "reconnect-storm: dropped {connected} connections ({}), resuming",
        if args.rst { "RST" } else { "FIN" }
    );

    let mut latency = LatencyHistogram::new();
    let mut handshake = LatencyHistogram::new();
    let (mut resumed, mut failed) = (0usize, 0usize);
    let (mut with_snapshot, mut retries_total, mut expired) = (0u64, 0u64, 0u64);
    let mut last = Duration::ZERO;
    let mut resume_failures = FirstErrors::default();
    while resumed + failed < connected {
        match time::timeout_at(deadline, resumed_rx.recv()).await {
            Ok(Some(Resume::Done { latency: l, handshake: h, snapshot, retries })) => {
                resumed += 1;
                last = last.max(l);
                latency.record(l);
                handshake.record(h);
                with_snapshot += u64::from(snapshot);
                retries_total += u64::from(retries);
            }
            Ok(Some(Resume::Failed { why, expired: e, retries })) => {
                failed += 1;
                expired += u64::from(e);
                retries_total += u64::from(retries);
                resume_failures.push(format!("resume failed: {why}"));
            }
            Ok(None) => break,
            Err(_) => {
                resume_failures
                    .push(format!("{} players not resumed within --duration", connected - resumed - failed));
                break;
            }
        }
    }
    let cpu = cpu.finish();
    let deliveries = sh.deliveries.load(Ordering::Relaxed) - deliveries_before;
    let rss_end = procstat::total_rss_kib(&common.server_pids);
    let all_resumed = (resumed == connected).then_some(last);
    eprintln!(
        "reconnect-storm: {resumed}/{connected} resumed{}",
        all_resumed.map_or(String::new(), |d| format!(", all within {:.2} s", d.as_secs_f64()))
    );
    resume_failures.print("reconnect-storm");

    // Correctness: stop inputs, let them settle, then compare every mirror with its room.
    time::sleep(Duration::from_secs_f64(args.after)).await;
    let _ = phase_tx.send(Phase::Quiet);
    time::sleep(Duration::from_secs(1)).await;
    let (obs_tx, mut obs_rx) = mpsc::unbounded_channel();
    let observers: Vec<_> =
        (0..rooms).map(|r| tokio::spawn(observer(sh.clone(), r, obs_tx.clone(), phase_rx.clone()))).collect();
    drop(obs_tx);
    let mut room_state: Vec<Option<Checkpoint>> = vec![None; rooms];
    let mut correctness = Correctness::default();
    let mut observer_failures = FirstErrors::default();
    while let Some((r, outcome)) = obs_rx.recv().await {
        match outcome {
            Ok((cp, hash_ok)) => {
                correctness.snapshot_hash_mismatch += u64::from(!hash_ok);
                room_state[r] = Some(cp);
            }
            Err(e) => observer_failures.push(format!("observer of room {r} failed: {e}")),
        }
    }
    observer_failures.print("reconnect-storm");
    time::sleep(Duration::from_secs(1)).await;
    let _ = phase_tx.send(Phase::Check);
    let mut checkpoints: Vec<Option<Checkpoint>> = vec![None; n];
    let check_deadline = Instant::now() + Duration::from_secs(5);
    let mut answers = 0usize;
    while answers < resumed {
        match time::timeout_at(check_deadline, checked_rx.recv()).await {
            Ok(Some((i, cp))) => {
                answers += 1;
                checkpoints[i] = Some(cp);
            }
            Ok(None) | Err(_) => break,
        }
    }
    correctness.unchecked = resumed.saturating_sub(answers) as u64;
    for (i, cp) in checkpoints.iter().enumerate() {
        let Some(cp) = cp else { continue };
        let verdict = compare(cp, room_state[layout.room_of(i)].as_ref());
        let counter = match verdict {
            Verdict::Ok => &mut correctness.ok,
            Verdict::HashMismatch => &mut correctness.hash_mismatch,
            Verdict::SeqMismatch => &mut correctness.seq_mismatch,
            Verdict::Stale => &mut correctness.stale,
            Verdict::Unchecked => &mut correctness.unchecked,
        };
        *counter += 1;
        if verdict != Verdict::Unchecked {
            correctness.checked += 1;
        }
    }
    eprintln!(
        "reconnect-storm: mirrors checked {}: {} ok, {} hash mismatch, {} seq mismatch, {} stale, {} unchecked",
        correctness.checked,
        correctness.ok,
        correctness.hash_mismatch,
        correctness.seq_mismatch,
        correctness.stale,
        correctness.unchecked
    );

    let _ = phase_tx.send(Phase::Leave);
    let mut total = PlayerResult::default();
    let collect_deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = 0u64;
    for task in tasks.into_iter().chain(observers) {
        let abort = task.abort_handle();
        match time::timeout_at(collect_deadline, task).await {
            Ok(Ok(r)) => {
                total.errors.add(&r.errors);
                total.inputs_sent += r.inputs_sent;
                total.inputs_resent += r.inputs_resent;
                total.acks += r.acks;
                total.resyncs += r.resyncs;
                total.history_breaks += r.history_breaks;
                total.snapshot_hash_mismatch += r.snapshot_hash_mismatch;
            }
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                lost += 1;
            }
        }
    }
    correctness.snapshot_hash_mismatch += total.snapshot_hash_mismatch;
    let resume_failed = (connected - resumed) as u64;
    let mut errors = total.errors;
    errors.connect = errors.connect.max((n - connected) as u64);
    let errors_total = errors.total() + resume_failed + correctness.failures();

    let machine = common::machine_figures(&cpu, common.threads.max(1), &mut validity);
    let server = common::server_figures(common, &cpu, deliveries, rss_baseline, rss_end, resumed);
    validity.check(connected < n, || format!("only {connected} of {n} players joined"));
    validity.check(lost > 0, || format!("{lost} tasks did not finish"));
    let storm_s = cpu.wall_s;
    let valid = validity.is_valid();
    let figures = ReconnectFigures {
        scenario: "reconnect-storm",
        room_type: sh.room_type.as_str(),
        players: layout.per_room,
        rooms,
        connections: n,
        hz: args.hz,
        drop: if args.rst { "rst" } else { "fin" },
        jitter_s: args.jitter,
        concurrency: common.connect_concurrency,
        urls: common.urls.clone(),
        connected,
        resumed,
        all_resumed_s: all_resumed.map(|d| round(d.as_secs_f64(), 3)),
        latency_ms: latency.summary(),
        handshake_ms: handshake.summary(),
        resumed_with_deltas: resumed as u64 - with_snapshot,
        resumed_with_snapshot: with_snapshot,
        retries: retries_total,
        resume_failures: resume_failed,
        sessions_expired: expired,
        correctness,
        deliveries,
        deliveries_per_sec: if storm_s > 0.0 { (deliveries as f64 / storm_s).round() } else { 0.0 },
        inputs_sent: total.inputs_sent,
        inputs_resent: total.inputs_resent,
        acks: total.acks,
        resyncs: total.resyncs,
        history_breaks: total.history_breaks,
        errors: errors_total,
        errors_detail: errors,
        server_cpu_ms_per_resume: cpu
            .server_cpu_s
            .and_then(|s| (resumed > 0).then(|| round(s * 1000.0 / resumed as f64, 3))),
        machine,
        server,
        limits,
        valid,
        invalid_reasons: validity.into_reasons(),
    };
    let table = table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn table(f: &ReconnectFigures) -> Table {
    let c = &f.correctness;
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "reconnect-storm: {} players in {} {} rooms of {}, inputs at {} Hz, drop by {}",
            f.connections, f.rooms, f.room_type, f.players, f.hz, f.drop
        ),
    )
    .row(
        "resumed",
        format!(
            "{}/{} ({} with deltas, {} with a snapshot), {} retries, {} failed ({} expired)",
            f.resumed,
            f.connected,
            f.resumed_with_deltas,
            f.resumed_with_snapshot,
            f.retries,
            f.resume_failures,
            f.sessions_expired
        ),
    )
    .row("all resumed", f.all_resumed_s.map_or("NOT everyone resumed".to_string(), |s| format!("in {s} s")))
    .row("resume latency ms", common::latency_row(f.latency_ms.as_ref()))
    .row("handshake ms", common::latency_row(f.handshake_ms.as_ref()))
    .row(
        "correctness",
        format!(
            "{}/{} mirrors equal the room; {} hash mismatch, {} seq mismatch, {} stale, {} unchecked, \
             {} bad snapshot hashes",
            c.ok, c.checked, c.hash_mismatch, c.seq_mismatch, c.stale, c.unchecked, c.snapshot_hash_mismatch
        ),
    )
    .row(
        "inputs",
        format!(
            "{} sent, {} re-sent after resume, {} acks, {} resyncs",
            f.inputs_sent, f.inputs_resent, f.acks, f.resyncs
        ),
    )
    .row("deliveries/s", format!("{} during the storm ({} deltas)", f.deliveries_per_sec, f.deliveries))
    .row(
        "errors",
        format!(
            "{} total; frames and connections: {}",
            f.errors,
            error_row(f.errors_detail.total(), &f.errors_detail)
        ),
    )
    .row("server cpu/resume", f.server_cpu_ms_per_resume.map_or("n/a".to_string(), |v| format!("{v} ms")));
    common::common_rows(&mut t, &f.machine, &f.server, f.valid, &f.invalid_reasons);
    t
}

/// A player's mirror against its room's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    HashMismatch,
    SeqMismatch,
    Stale,
    /// No room state to compare with.
    Unchecked,
}

fn compare(mirror: &Checkpoint, room: Option<&Checkpoint>) -> Verdict {
    let Some(room) = room else { return Verdict::Unchecked };
    match &mirror.hash {
        None => Verdict::Stale,
        Some(_) if (mirror.epoch, mirror.seq) != (room.epoch, room.seq) => Verdict::SeqMismatch,
        Some(h) if Some(h) != room.hash.as_ref() => Verdict::HashMismatch,
        Some(_) => Verdict::Ok,
    }
}

/// One player's connection state between drops.
struct Conn {
    me: String,
    mirror: Mirror,
    /// Sent batches not yet acknowledged: (cid, encoded frame), in cid order.
    pending: VecDeque<(u64, Bytes)>,
    r: PlayerResult,
}

impl Conn {
    fn on_frame(&mut self, sh: &Shared, frame: &[u8]) {
        match decode_server(frame) {
            Ok(msg) => self.on_msg(sh, msg),
            Err(_) => self.r.errors.bad_frames += 1,
        }
    }

    fn on_msg(&mut self, sh: &Shared, msg: ServerMsg) {
        match msg {
            ServerMsg::Batch { msgs } => {
                for m in msgs {
                    self.on_msg(sh, m);
                }
            }
            ServerMsg::Delta(d) => {
                sh.deliveries.fetch_add(1, Ordering::Relaxed);
                // A broken history leaves the mirror stale: the check counts it.
                if matches!(self.mirror.apply(&d), Applied::Gap | Applied::Bad) {
                    self.r.history_breaks += 1;
                }
                if let (Some(cid), true) = (d.cid, d.by.as_deref() == Some(self.me.as_str())) {
                    self.settle(cid);
                }
            }
            ServerMsg::Ack { cid, .. } => {
                self.r.acks += 1;
                self.settle(cid);
            }
            ServerMsg::Reject { cid, .. } => {
                self.r.errors.rejects += 1;
                self.pending.retain(|(c, _)| *c != cid);
            }
            ServerMsg::Resync { snapshot, cid, .. } => {
                self.r.resyncs += 1;
                if !self.mirror.reset(snapshot) {
                    self.r.snapshot_hash_mismatch += 1;
                }
                self.settle(cid);
            }
            ServerMsg::Error { .. } => self.r.errors.error_frames += 1,
            _ => {}
        }
    }

    /// Batches up to `cid` are settled (a player's batches are applied in order).
    fn settle(&mut self, cid: u64) {
        while self.pending.front().is_some_and(|(c, _)| *c <= cid) {
            self.pending.pop_front();
        }
    }
}

/// One player: join, run, be dropped, resume, run, report its mirror, leave.
async fn player(
    sh: Arc<Shared>,
    i: usize,
    reports: Reports,
    mut start_rx: watch::Receiver<Option<Start>>,
    mut phase: watch::Receiver<Phase>,
) -> PlayerResult {
    let room = sh.net.room(sh.layout.room_of(i));
    let target = sh.net.target(sh.layout.member_of(i));
    let (ws, joined) = match sh.net.connect_join(i, target, new_join(room.clone(), sh.room_type)).await {
        Ok((ws, joined, _)) => (ws, joined),
        Err(e) => {
            let _ = reports.joined.send(Err(e));
            return PlayerResult::default();
        }
    };
    let Some(snapshot) = joined.snapshot else {
        let _ = reports.joined.send(Err(ConnError::Refused {
            code: "protocol".into(),
            message: "joined without a snapshot for a new player".into(),
        }));
        return PlayerResult::default();
    };
    let _ = reports.joined.send(Ok(()));
    let x = conn::number_at(&snapshot.state, &format!("players/{}/x", joined.player));
    let y = conn::number_at(&snapshot.state, &format!("players/{}/y", joined.player));
    let mut mover = Mover::new(x.unwrap_or(500.0), y.unwrap_or(500.0), sh.args.step, unit_hash(i as u64, 1));
    let (mirror, hash_ok) = Mirror::new(snapshot);
    let mut c = Conn { me: joined.player, mirror, pending: VecDeque::new(), r: PlayerResult::default() };
    c.r.snapshot_hash_mismatch += u64::from(!hash_ok);
    let session = joined.session;
    let mut cid = joined.cid;

    let start = match start_rx.wait_for(Option::is_some).await {
        Ok(s) => match *s {
            Some(s) => s,
            None => return c.r,
        },
        Err(_) => return c.r,
    };
    let mut ticker = sh.period.map(|p| {
        let mut t = time::interval_at(start.inputs_from + p.mul_f64(unit_hash(i as u64, 2)), p);
        // Inputs missed while away are not made up for: nothing measures their latency here.
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t
    });
    let path_x = format!("players/{}/x", c.me);
    let path_y = format!("players/{}/y", c.me);
    let mut input = |cid: u64| {
        let (x, y) = mover.step();
        encode(&ClientMsg::Ops {
            cid,
            ops: vec![
                Op::Set { path: path_x.clone(), value: Doc::number(x).unwrap_or_default() },
                Op::Set { path: path_y.clone(), value: Doc::number(y).unwrap_or_default() },
            ],
        })
    };

    // Before the drop.
    let mut ws = ws;
    let drop_sleep = time::sleep_until(start.drop_at);
    tokio::pin!(drop_sleep);
    loop {
        tokio::select! {
            biased;
            _ = &mut drop_sleep => break,
            _ = next_tick(&mut ticker) => {
                cid += 1;
                let frame = input(cid);
                c.pending.push_back((cid, frame.clone()));
                if ws.send(Message::Binary(frame)).await.is_err() {
                    c.r.errors.send_failures += 1;
                }
                c.r.inputs_sent += 1;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(frame))) => c.on_frame(&sh, &frame),
                Some(Ok(Message::Text(_))) => c.r.errors.bad_frames += 1,
                Some(Ok(_)) => {}
                // Closed before the drop: it resumes like everyone else.
                Some(Err(_)) | None => {
                    c.r.errors.closed += 1;
                    time::sleep_until(start.drop_at).await;
                    break;
                }
            },
        }
    }

    // The drop: no close frame.
    let resume_point = c.mirror.resume_point();
    conn::drop_abruptly(ws, sh.args.rst);
    if sh.args.jitter > 0.0 {
        time::sleep(Duration::from_secs_f64(sh.args.jitter * unit_hash(i as u64, 3))).await;
    }
    let mut retries = 0u32;
    let mut ws: Ws = loop {
        let join = Join {
            room: room.clone(),
            room_type: sh.room_type.as_str().to_string(),
            session: Some(session.clone()),
            epoch: resume_point.map(|p| p.0),
            seq: resume_point.map(|p| p.1),
            attempt: Some(u64::from(retries) + 1),
            ..Join::default()
        };
        let attempt = tokio::select! {
            r = sh.net.connect_join(i, target, join) => r,
            _ = phase.wait_for(|p| *p >= Phase::Leave) => return c.r,
        };
        match attempt {
            Ok((ws, joined, times)) => {
                let now = Instant::now();
                let latency = now.saturating_duration_since(start.drop_at);
                let late = now > start.resume_deadline;
                if !joined.resumed || late {
                    // The coordinator no longer waits for a late one: it stays out of the check.
                    let why =
                        if late { "resumed after --duration" } else { "joined as a new player, not resumed" };
                    let _ = reports.resumed.send(Resume::Failed { why: why.into(), expired: false, retries });
                    let _ = phase.wait_for(|p| *p >= Phase::Leave).await;
                    let mut ws = ws;
                    conn::leave(&mut ws).await;
                    return c.r;
                }
                let snapshot = joined.snapshot.is_some();
                if let Some(s) = joined.snapshot {
                    if !c.mirror.reset(s) {
                        c.r.snapshot_hash_mismatch += 1;
                    }
                }
                // Batches up to joined.cid were applied; they are re-sent below all the same,
                // as a client does, to exercise the server's at-most-once (it answers `ack`).
                cid = cid.max(joined.cid);
                let _ = reports.resumed.send(Resume::Done {
                    latency,
                    handshake: times.connect + times.join,
                    snapshot,
                    retries,
                });
                break ws;
            }
            Err(e) => {
                let expired = matches!(&e, ConnError::Refused { code, .. } if code == "session_expired");
                if expired || retries + 1 >= sh.args.attempts {
                    let _ = reports.resumed.send(Resume::Failed { why: e.to_string(), expired, retries });
                    let _ = phase.wait_for(|p| *p >= Phase::Leave).await;
                    return c.r;
                }
                time::sleep(Duration::from_millis(100 << retries.min(6))).await;
                retries += 1;
            }
        }
    };

    // Re-send everything not acknowledged, with the original cids, in order: the server
    // applies the ones it never got and answers `ack` for the ones it had applied.
    let resend: Vec<Bytes> = c.pending.iter().map(|(_, f)| f.clone()).collect();
    for frame in resend {
        if ws.send(Message::Binary(frame)).await.is_err() {
            c.r.errors.send_failures += 1;
        }
        c.r.inputs_resent += 1;
    }

    // After the resume: inputs until Quiet, the checkpoint at Check, leave at Leave.
    let mut open = true;
    let mut current = *phase.borrow_and_update();
    let mut reported = false;
    loop {
        if current >= Phase::Check && !reported {
            reported = true;
            let _ = reports.checked.send((i, c.mirror.checkpoint()));
        }
        if current >= Phase::Leave {
            break;
        }
        tokio::select! {
            biased;
            changed = phase.changed() => match changed {
                Ok(()) => current = *phase.borrow_and_update(),
                Err(_) => break,
            },
            _ = next_tick(&mut ticker), if open && current == Phase::Run => {
                cid += 1;
                let frame = input(cid);
                c.pending.push_back((cid, frame.clone()));
                if ws.send(Message::Binary(frame)).await.is_err() {
                    c.r.errors.send_failures += 1;
                }
                c.r.inputs_sent += 1;
            }
            // After the checkpoint the mirror is not touched: leaves change the room.
            msg = ws.next(), if open && !reported => match msg {
                Some(Ok(Message::Binary(frame))) => c.on_frame(&sh, &frame),
                Some(Ok(Message::Text(_))) => c.r.errors.bad_frames += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    c.r.errors.closed += 1;
                    open = false;
                }
            },
        }
    }
    if open {
        conn::leave(&mut ws).await;
    }
    c.r
}

/// Room number, and its state at the observer's join with whether the snapshot's hash matched.
type ObserverReport = (usize, Result<(Checkpoint, bool), ConnError>);

/// A fresh player per room at the end: its `joined.snapshot` is the room's state. It stays
/// (reading) until everyone leaves, so that its own leave does not change the room before
/// the check.
async fn observer(
    sh: Arc<Shared>,
    r: usize,
    out: mpsc::UnboundedSender<ObserverReport>,
    mut phase: watch::Receiver<Phase>,
) -> PlayerResult {
    let mut res = PlayerResult::default();
    let target = &sh.net.targets[r % sh.net.targets.len()];
    let i = sh.layout.n + r;
    let (mut ws, joined) = match sh.net.connect_join(i, target, new_join(sh.net.room(r), sh.room_type)).await
    {
        Ok((ws, joined, _)) => (ws, joined),
        Err(e) => {
            let _ = out.send((r, Err(e)));
            return res;
        }
    };
    match joined.snapshot {
        Some(s) => {
            let hash_ok = s.state.state_hash() == s.hash;
            let cp = Checkpoint { epoch: s.epoch, seq: s.seq, hash: Some(s.hash) };
            let _ = out.send((r, Ok((cp, hash_ok))));
        }
        None => {
            let _ = out.send((r, Err(ConnError::Closed)));
        }
    }
    drop(out);
    loop {
        tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p >= Phase::Leave) => break,
            msg = ws.next() => match msg {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    res.errors.closed += 1;
                    return res;
                }
            },
        }
    }
    conn::leave(&mut ws).await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(epoch: u64, seq: u64, hash: Option<&str>) -> Checkpoint {
        Checkpoint { epoch, seq, hash: hash.map(str::to_string) }
    }

    #[test]
    fn mirrors_are_compared_by_position_then_hash() {
        let room = cp(1, 10, Some("aa"));
        assert_eq!(compare(&cp(1, 10, Some("aa")), Some(&room)), Verdict::Ok);
        assert_eq!(compare(&cp(1, 10, Some("bb")), Some(&room)), Verdict::HashMismatch);
        assert_eq!(compare(&cp(1, 9, Some("aa")), Some(&room)), Verdict::SeqMismatch);
        assert_eq!(compare(&cp(2, 10, Some("aa")), Some(&room)), Verdict::SeqMismatch);
        assert_eq!(compare(&cp(1, 10, None), Some(&room)), Verdict::Stale);
        assert_eq!(compare(&cp(1, 10, Some("aa")), None), Verdict::Unchecked);
    }

    #[test]
    fn acks_settle_every_older_batch() {
        let (mirror, _) = Mirror::new(gamerelay::protocol::Snapshot {
            epoch: 1,
            seq: 0,
            state: Doc::map(),
            hash: Doc::map().state_hash(),
        });
        let mut c = Conn {
            me: "p-1".into(),
            mirror,
            pending: (1..=5).map(|c| (c, Bytes::new())).collect(),
            r: PlayerResult::default(),
        };
        c.settle(3);
        assert_eq!(c.pending.iter().map(|p| p.0).collect::<Vec<_>>(), vec![4, 5]);
        c.settle(2);
        assert_eq!(c.pending.len(), 2);
    }
}
