//! Scenario `join-storm`: N players arrive at once and join rooms of P as fast as the
//! connect slots (`--connect-concurrency`, alias `--concurrency`) allow.
//!
//! Every player is one task: wait for a connect slot, open TCP + WebSocket, send `hello` +
//! `join` (pipelined), wait for `joined`, release the slot, then stay in the room (reading,
//! so the server never queues for it) until the storm is over; then everyone leaves.
//!
//! Measured: joins/s (players joined / time from the start of the storm to the last
//! `joined`), the join latency (`hello` + `join` sent to `joined` received: the server's
//! work), the connect latency (TCP + WebSocket upgrade) and the time to join from the start
//! of the storm (what a player arriving in the storm waits, slot queueing included). The
//! storm is bounded by `--duration`: players not joined by then count as failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gamerelay::protocol::Join;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::common::{
    self, cap_to_fd_budget, new_join, FirstErrors, LimitFigures, MachineFigures, Net, Population, RoomType,
    ServerFigures, SetupTimes,
};
use crate::conn::{self, ConnError};
use crate::procstat::{self, CpuWindow, NofileLimit};
use crate::report::{round, Report, Table, Validity};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary};
use crate::wire::{self, Event};
use crate::Common;

/// Flags of `gamerelay-loadtest join-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinStormArgs {
    #[command(flatten)]
    pub pop: Population,
    /// Most seconds the storm may take; players not joined by then count as failed.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Join with `join_or_create` (the server chooses the rooms, with the seats of its
    /// --join-or-create-max-players) instead of by room id. The report then also counts the
    /// rooms the players landed in and the fullest one.
    #[arg(long)]
    pub join_or_create: bool,
}

/// The figures of one join storm (the `--json` line).
#[derive(Debug, Serialize)]
struct JoinStormFigures {
    scenario: &'static str,
    room_type: &'static str,
    players: usize,
    rooms: usize,
    connections: usize,
    concurrency: usize,
    urls: Vec<String>,
    joined: usize,
    /// Start of the storm to the last `joined`.
    storm_s: f64,
    joins_per_sec: f64,
    /// Join latency: `hello` + `join` sent to `joined` received.
    latency_ms: Option<LatencySummary>,
    /// TCP connect + WebSocket upgrade.
    connect_ms: Option<LatencySummary>,
    /// Start of the storm to `joined` (waiting for a connect slot included).
    time_to_join_ms: Option<LatencySummary>,
    /// Whether players joined with `join_or_create`.
    join_or_create: bool,
    /// Distinct rooms the players landed in, and the most players in one of them.
    rooms_joined: usize,
    largest_room: usize,
    /// Deltas received by all players during the storm (arena: each join is a server delta
    /// to every member).
    deliveries: u64,
    deliveries_per_sec: f64,
    errors: u64,
    errors_detail: ErrorCounts,
    /// Server CPU per join over the storm.
    server_cpu_ms_per_join: Option<f64>,
    #[serde(flatten)]
    machine: MachineFigures,
    #[serde(flatten)]
    server: ServerFigures,
    #[serde(flatten)]
    limits: LimitFigures,
    valid: bool,
    invalid_reasons: Vec<String>,
}

/// What a player reports when its join is done.
type Outcome = Result<SetupTimes, ConnError>;

struct Shared {
    net: Net,
    layout: common::Layout,
    room_type: RoomType,
    join_or_create: bool,
    deliveries: AtomicU64,
    /// Players per room joined.
    landed: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

pub async fn run(common: &Common, args: &JoinStormArgs, nofile: NofileLimit) -> Result<Report, String> {
    if args.duration.is_nan() || args.duration <= 0.0 {
        return Err("--duration must be > 0".into());
    }
    let mut layout = args.pop.layout(1000)?;
    let mut validity = Validity::default();
    let budget = cap_to_fd_budget(&mut layout, nofile, &mut validity);
    let n = layout.n;
    let net = Net::new(common, layout, 0).await?;
    let limits = LimitFigures::new(nofile, &net, &budget);
    eprintln!(
        "join-storm: {n} players in {} {} rooms of {}, {} at once, to {} url(s)",
        layout.rooms(),
        args.pop.room_type.as_str(),
        layout.per_room,
        common.connect_concurrency,
        net.targets.len()
    );
    let sh = Arc::new(Shared {
        net,
        layout,
        room_type: args.pop.room_type,
        join_or_create: args.join_or_create,
        deliveries: 0.into(),
        landed: Default::default(),
    });
    let rss_baseline = procstat::total_rss_kib(&common.server_pids);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let (leave_tx, leave_rx) = watch::channel(false);

    let cpu = CpuWindow::begin(&common.server_pids);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> =
        (0..n).map(|i| tokio::spawn(player(sh.clone(), i, done_tx.clone(), leave_rx.clone()))).collect();
    drop(done_tx);

    let mut join_h = LatencyHistogram::new();
    let mut connect_h = LatencyHistogram::new();
    let mut total_h = LatencyHistogram::new();
    let mut joined = 0usize;
    let mut failed = 0usize;
    let mut failures = FirstErrors::default();
    let mut last_join = start;
    while joined + failed < n {
        match time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Ok(t))) => {
                let now = Instant::now();
                joined += 1;
                last_join = now;
                join_h.record(t.join);
                connect_h.record(t.connect);
                total_h.record(now - start);
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                failures.push(format!("connection failed: {e}"));
            }
            Ok(None) => break,
            Err(_) => {
                failures.push(format!("{} players not joined within --duration", n - joined - failed));
                break;
            }
        }
    }
    let cpu = cpu.finish();
    let deliveries = sh.deliveries.load(Ordering::Relaxed);
    let rss_end = procstat::total_rss_kib(&common.server_pids);
    let storm_s = (last_join - start).as_secs_f64();
    eprintln!("join-storm: {joined}/{n} joined in {storm_s:.2} s");
    failures.print("join-storm");
    if joined == 0 {
        return Err(format!("no player joined (first error: {})", failures.first()));
    }

    // Everyone leaves; tasks still connecting give up.
    let _ = leave_tx.send(true);
    let mut errors = ErrorCounts::default();
    let collect_deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = 0u64;
    for task in tasks {
        let abort = task.abort_handle();
        match time::timeout_at(collect_deadline, task).await {
            Ok(Ok(e)) => errors.add(&e),
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                lost += 1;
            }
        }
    }
    // Players that never reported (still connecting at the deadline) failed to join too.
    errors.connect = errors.connect.max((n - joined) as u64);

    let machine = common::machine_figures(&cpu, common.threads.max(1), &mut validity);
    let server = common::server_figures(common, &cpu, deliveries, rss_baseline, rss_end, joined);
    validity.check(joined < n, || format!("only {joined} of {n} players joined"));
    validity.check(lost > 0, || format!("{lost} player tasks did not finish"));
    let joins_per_sec = if storm_s > 0.0 { joined as f64 / storm_s } else { 0.0 };
    let (rooms_joined, largest_room) = {
        let landed = sh.landed.lock().unwrap_or_else(|p| p.into_inner());
        (landed.len(), landed.values().copied().max().unwrap_or(0))
    };
    let valid = validity.is_valid();
    let figures = JoinStormFigures {
        scenario: "join-storm",
        room_type: sh.room_type.as_str(),
        players: layout.per_room,
        rooms: layout.rooms(),
        connections: n,
        concurrency: common.connect_concurrency,
        urls: common.urls.clone(),
        joined,
        storm_s: round(storm_s, 3),
        joins_per_sec: round(joins_per_sec, 1),
        latency_ms: join_h.summary(),
        connect_ms: connect_h.summary(),
        time_to_join_ms: total_h.summary(),
        join_or_create: sh.join_or_create,
        rooms_joined,
        largest_room,
        deliveries,
        deliveries_per_sec: if storm_s > 0.0 { (deliveries as f64 / storm_s).round() } else { 0.0 },
        errors: errors.total(),
        errors_detail: errors,
        server_cpu_ms_per_join: cpu.server_cpu_s.map(|s| round(s * 1000.0 / joined as f64, 3)),
        machine,
        server,
        limits,
        valid,
        invalid_reasons: validity.into_reasons(),
    };
    let table = table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn table(f: &JoinStormFigures) -> Table {
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "join-storm: {} players into {} {} rooms of {}, {} at once{}",
            f.connections,
            f.rooms,
            f.room_type,
            f.players,
            f.concurrency,
            if f.join_or_create { " (join_or_create: the server picks the rooms)" } else { "" }
        ),
    )
    .row("joined", format!("{}/{} in {} s: {} joins/s", f.joined, f.connections, f.storm_s, f.joins_per_sec))
    .row(
        "rooms joined",
        format!(
            "{} (fullest: {} players){}",
            f.rooms_joined,
            f.largest_room,
            if f.join_or_create { ", chosen by join_or_create" } else { "" }
        ),
    )
    .row("join latency ms", common::latency_row(f.latency_ms.as_ref()))
    .row("connect ms", common::latency_row(f.connect_ms.as_ref()))
    .row("time to join ms", common::latency_row(f.time_to_join_ms.as_ref()))
    .row("deliveries/s", format!("{} ({} deltas during the storm)", f.deliveries_per_sec, f.deliveries))
    .row("errors", error_row(f.errors, &f.errors_detail))
    .row("server cpu/join", f.server_cpu_ms_per_join.map_or("n/a".to_string(), |v| format!("{v} ms")));
    common::common_rows(&mut t, &f.machine, &f.server, f.valid, &f.invalid_reasons);
    t
}

/// The errors row of a table.
pub(super) fn error_row(total: u64, e: &ErrorCounts) -> String {
    format!(
        "{total} (connect {}, rejects {}, error frames {}, closed {}, bad frames {}, send failures {})",
        e.connect, e.rejects, e.error_frames, e.closed, e.bad_frames, e.send_failures
    )
}

/// One player: join, report, stay until everyone leaves. Returns its errors after the join
/// (a failed join is reported through `done` and counted by the coordinator).
async fn player(
    sh: Arc<Shared>,
    i: usize,
    done: mpsc::UnboundedSender<Outcome>,
    mut leave: watch::Receiver<bool>,
) -> ErrorCounts {
    let mut errors = ErrorCounts::default();
    let target = sh.net.target(sh.layout.member_of(i));
    let join = if sh.join_or_create {
        Join { join_or_create: true, ..new_join(String::new(), sh.room_type) }
    } else {
        new_join(sh.net.room(sh.layout.room_of(i)), sh.room_type)
    };
    let setup = tokio::select! {
        r = sh.net.connect_join(i, target, join) => r,
        _ = leave.wait_for(|l| *l) => return errors,
    };
    let (mut ws, joined) = match setup {
        Ok((ws, joined, times)) => {
            *sh.landed.lock().unwrap_or_else(|p| p.into_inner()).entry(joined.room.clone()).or_default() += 1;
            let _ = done.send(Ok(times));
            (ws, joined)
        }
        Err(e) => {
            let _ = done.send(Err(e));
            return errors;
        }
    };
    drop(done);
    let me = joined.player.into_bytes();
    drop(joined.members);
    drop(joined.snapshot);
    loop {
        tokio::select! {
            biased;
            _ = leave.wait_for(|l| *l) => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(frame))) => {
                    let mut on = |ev| match ev {
                        Event::Delta { .. } => {
                            sh.deliveries.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Error => errors.error_frames += 1,
                        Event::Reject { .. } => errors.rejects += 1,
                        _ => {}
                    };
                    if wire::scan_frame(&frame, &me, &mut on).is_err() {
                        errors.bad_frames += 1;
                    }
                }
                Some(Ok(Message::Text(_))) => errors.bad_frames += 1,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    errors.closed += 1;
                    return errors;
                }
            },
        }
    }
    conn::leave(&mut ws).await;
    errors
}
