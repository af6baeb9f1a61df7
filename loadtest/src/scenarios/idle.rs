//! Scenario `idle`: N mostly idle connections, each joined to a room of P, held for
//! `--duration` seconds; what they cost the server in memory (and CPU while idle).
//!
//! After everyone has joined, each connection sends an application `ping` every
//! `--ping-interval` seconds (at its own phase; 0: never) and otherwise only reads: the
//! server's WebSocket pings are answered by the WebSocket library, which keeps the server's
//! idle timeout (45 s) away. A connection task holds only its socket, so thousands fit in
//! the generator (its own RSS per connection is reported too).
//!
//! Measured at the end of the hold: connections still open (`held`), server RSS and
//! `(RSS - RSS before connecting) / held` per connection, server CPU over the hold, the
//! ping round trips (`latency_ms`), and the generator's RSS per connection. The run is capped
//! (and marked invalid) when the open-files limit cannot hold N connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{decode_server, encode, ClientMsg, ServerMsg};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::arena::unit_hash;
use super::common::{
    self, cap_to_fd_budget, new_join, next_tick, FirstErrors, Layout, LimitFigures, MachineFigures, Net,
    Population, RoomType, ServerFigures,
};
use super::join_storm::error_row;
use crate::conn::{self, ConnError};
use crate::procstat::{self, CpuWindow, NofileLimit, Pid};
use crate::report::{round, Report, Table, Validity};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary, Samples};
use crate::Common;

/// Flags of `gamerelay-loadtest idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub pop: Population,
    /// Seconds to hold the connections once all have joined.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds between application pings of each connection (0: none; the server's
    /// WebSocket pings are answered either way).
    #[arg(long, default_value_t = 20.0)]
    pub ping_interval: f64,
}

/// The figures of one idle run (the `--json` line).
#[derive(Debug, Serialize)]
struct IdleFigures {
    scenario: &'static str,
    room_type: &'static str,
    players: usize,
    rooms: usize,
    connections: usize,
    urls: Vec<String>,
    connected: usize,
    join_s: f64,
    /// Connections still open at the end of the hold.
    held: usize,
    hold_s: f64,
    ping_interval_s: f64,
    pings: u64,
    pongs: u64,
    /// `ping` to `pong` round trips.
    latency_ms: Option<LatencySummary>,
    /// Deltas received during the hold (idle rooms: none expected).
    deliveries: u64,
    deliveries_per_sec: f64,
    errors: u64,
    errors_detail: ErrorCounts,
    /// The generator's own RSS at the end of the hold, and its growth per connection.
    generator_rss_mib: Option<f64>,
    generator_rss_per_connection_kib: Option<f64>,
    #[serde(flatten)]
    machine: MachineFigures,
    #[serde(flatten)]
    server: ServerFigures,
    #[serde(flatten)]
    limits: LimitFigures,
    valid: bool,
    invalid_reasons: Vec<String>,
}

/// What the connections do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Connecting,
    /// Pinging from this instant on.
    Hold(Instant),
    Leave,
}

#[derive(Debug, Default)]
struct ConnResult {
    errors: ErrorCounts,
    pings: u64,
    pongs: u64,
    rtts: Samples,
}

struct Shared {
    net: Net,
    layout: Layout,
    room_type: RoomType,
    ping_interval: Option<Duration>,
    open: AtomicUsize,
    deliveries: AtomicU64,
}

pub async fn run(common: &Common, args: &IdleArgs, nofile: NofileLimit) -> Result<Report, String> {
    if !(args.duration > 0.0 && args.ping_interval >= 0.0) {
        return Err("--duration must be > 0 and --ping-interval >= 0".into());
    }
    let mut layout = args.pop.layout(5000)?;
    let mut validity = Validity::default();
    let budget = cap_to_fd_budget(&mut layout, nofile, &mut validity);
    let n = layout.n;
    let net = Net::new(common, layout, 0).await?;
    let limits = LimitFigures::new(nofile, &net, &budget);
    eprintln!(
        "idle: {n} connections in {} {} rooms of {} to {} url(s){}",
        layout.rooms(),
        args.pop.room_type.as_str(),
        layout.per_room,
        net.targets.len(),
        match net.sources.len() {
            0 => String::new(),
            k => format!(" from {k} source addresses"),
        }
    );
    let sh = Arc::new(Shared {
        net,
        layout,
        room_type: args.pop.room_type,
        ping_interval: (args.ping_interval > 0.0).then(|| Duration::from_secs_f64(args.ping_interval)),
        open: 0.into(),
        deliveries: 0.into(),
    });
    let rss_baseline = procstat::total_rss_kib(&common.server_pids);
    let own_rss_baseline = procstat::rss_kib(Pid::Me).ok();

    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<Result<(), ConnError>>();
    let (state_tx, state_rx) = watch::channel(State::Connecting);
    let connect_started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(connection(sh.clone(), i, joined_tx.clone(), state_rx.clone())))
        .collect();
    drop(joined_tx);
    let mut connected = 0usize;
    let mut failures = FirstErrors::default();
    let mut next_progress = Instant::now() + Duration::from_secs(2);
    while let Some(outcome) = joined_rx.recv().await {
        match outcome {
            Ok(()) => connected += 1,
            Err(e) => failures.push(format!("connection failed: {e}")),
        }
        if Instant::now() >= next_progress {
            eprintln!("idle: {connected}/{n} joined");
            next_progress += Duration::from_secs(2);
        }
    }
    let join_s = connect_started.elapsed().as_secs_f64();
    eprintln!("idle: {connected}/{n} joined in {join_s:.1} s; holding for {} s", args.duration);
    failures.print("idle");
    if connected == 0 {
        return Err(format!("no connection joined (first error: {})", failures.first()));
    }

    let hold_start = Instant::now();
    let _ = state_tx.send(State::Hold(hold_start));
    let cpu = CpuWindow::begin(&common.server_pids);
    let deliveries_before = sh.deliveries.load(Ordering::Relaxed);
    time::sleep_until(hold_start + Duration::from_secs_f64(args.duration)).await;
    let cpu = cpu.finish();
    let held = sh.open.load(Ordering::Relaxed);
    let deliveries = sh.deliveries.load(Ordering::Relaxed) - deliveries_before;
    let rss_end = procstat::total_rss_kib(&common.server_pids);
    let own_rss_end = procstat::rss_kib(Pid::Me).ok();

    let _ = state_tx.send(State::Leave);
    let mut total = ConnResult::default();
    let mut rtt = LatencyHistogram::new();
    let collect_deadline = Instant::now() + Duration::from_secs(15);
    let mut lost = 0u64;
    for task in tasks {
        let abort = task.abort_handle();
        match time::timeout_at(collect_deadline, task).await {
            Ok(Ok(r)) => {
                total.errors.add(&r.errors);
                total.pings += r.pings;
                total.pongs += r.pongs;
                rtt.add(&r.rtts);
            }
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                lost += 1;
            }
        }
    }
    total.errors.connect = total.errors.connect.max((n - connected) as u64);

    let machine = common::machine_figures(&cpu, common.threads.max(1), &mut validity);
    let server = common::server_figures(common, &cpu, deliveries, rss_baseline, rss_end, held);
    validity.check(connected < n, || format!("only {connected} of {n} connections joined"));
    validity
        .check(held < connected, || format!("{} connections were lost during the hold", connected - held));
    validity.check(lost > 0, || format!("{lost} connection tasks did not finish"));
    let valid = validity.is_valid();
    let figures = IdleFigures {
        scenario: "idle",
        room_type: sh.room_type.as_str(),
        players: layout.per_room,
        rooms: layout.rooms(),
        connections: n,
        urls: common.urls.clone(),
        connected,
        join_s: round(join_s, 2),
        held,
        hold_s: args.duration,
        ping_interval_s: args.ping_interval,
        pings: total.pings,
        pongs: total.pongs,
        latency_ms: rtt.summary(),
        deliveries,
        deliveries_per_sec: round(deliveries as f64 / cpu.wall_s.max(1e-9), 1),
        errors: total.errors.total(),
        errors_detail: total.errors,
        generator_rss_mib: own_rss_end.map(|k| round(k as f64 / 1024.0, 1)),
        generator_rss_per_connection_kib: match (own_rss_baseline, own_rss_end) {
            (Some(b), Some(e)) if held > 0 => Some(round((e as f64 - b as f64) / held as f64, 2)),
            _ => None,
        },
        machine,
        server,
        limits,
        valid,
        invalid_reasons: validity.into_reasons(),
    };
    let table = table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn table(f: &IdleFigures) -> Table {
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v} {unit}"));
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "idle: {} connections in {} {} rooms of {}, held {} s, ping every {} s",
            f.connections, f.rooms, f.room_type, f.players, f.hold_s, f.ping_interval_s
        ),
    )
    .row(
        "connections",
        format!(
            "{}/{} joined in {} s, {} held to the end{}",
            f.connected,
            f.connections,
            f.join_s,
            f.held,
            if f.limits.fd_capped {
                format!(" (CAPPED by the open-files limit: {} requested)", f.limits.connections_requested)
            } else {
                String::new()
            }
        ),
    )
    .row("ping rtt ms", common::latency_row(f.latency_ms.as_ref()))
    .row("pings", format!("{} sent, {} answered", f.pings, f.pongs))
    .row("deliveries/s", format!("{} ({} deltas during the hold)", f.deliveries_per_sec, f.deliveries))
    .row("errors", error_row(f.errors, &f.errors_detail))
    .row(
        "generator rss",
        format!(
            "{}, {} per connection",
            opt(f.generator_rss_mib, "MiB"),
            opt(f.generator_rss_per_connection_kib, "KiB")
        ),
    );
    common::common_rows(&mut t, &f.machine, &f.server, f.valid, &f.invalid_reasons);
    t
}

/// One idle connection: join, then read and ping rarely until told to leave.
async fn connection(
    sh: Arc<Shared>,
    i: usize,
    joined_tx: mpsc::UnboundedSender<Result<(), ConnError>>,
    mut state: watch::Receiver<State>,
) -> ConnResult {
    let mut r = ConnResult::default();
    let room = sh.net.room(sh.layout.room_of(i));
    let target = sh.net.target(sh.layout.member_of(i));
    let setup = tokio::select! {
        s = sh.net.connect_join(i, target, new_join(room, sh.room_type)) => s,
        _ = state.wait_for(|s| *s == State::Leave) => return r,
    };
    let mut ws = match setup {
        // Nothing of `joined` is kept: an idle connection holds only its socket.
        Ok((ws, _joined, _)) => ws,
        Err(e) => {
            let _ = joined_tx.send(Err(e));
            return r;
        }
    };
    sh.open.fetch_add(1, Ordering::Relaxed);
    let _ = joined_tx.send(Ok(()));
    drop(joined_tx);

    let mut ticker: Option<time::Interval> = None;
    let mut outstanding: Option<(u64, Instant)> = None;
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                match *state.borrow_and_update() {
                    State::Hold(from) => {
                        if let (None, Some(iv)) = (&ticker, sh.ping_interval) {
                            let mut t = time::interval_at(from + iv.mul_f64(unit_hash(i as u64, 4)), iv);
                            t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                            ticker = Some(t);
                        }
                    }
                    State::Leave => break,
                    State::Connecting => {}
                }
            }
            _ = next_tick(&mut ticker) => {
                let id = r.pings + 1;
                if ws.send(Message::Binary(encode(&ClientMsg::Ping { id }))).await.is_err() {
                    r.errors.send_failures += 1;
                    open = false;
                    break;
                }
                r.pings = id;
                outstanding = Some((id, Instant::now()));
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(frame))) => match decode_server(&frame) {
                    Ok(msg) => on_msg(&sh, &mut r, &mut outstanding, msg),
                    Err(_) => r.errors.bad_frames += 1,
                },
                Some(Ok(Message::Text(_))) => r.errors.bad_frames += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    r.errors.closed += 1;
                    open = false;
                    break;
                }
            },
        }
    }
    if open {
        conn::leave(&mut ws).await;
    }
    sh.open.fetch_sub(1, Ordering::Relaxed);
    r
}

fn on_msg(sh: &Shared, r: &mut ConnResult, outstanding: &mut Option<(u64, Instant)>, msg: ServerMsg) {
    match msg {
        ServerMsg::Batch { msgs } => {
            for m in msgs {
                on_msg(sh, r, outstanding, m);
            }
        }
        ServerMsg::Pong { id, .. } => {
            if let Some((want, sent)) = *outstanding {
                if id == want {
                    r.pongs += 1;
                    r.rtts.push(sent.elapsed());
                    *outstanding = None;
                }
            }
        }
        ServerMsg::Delta(_) => {
            sh.deliveries.fetch_add(1, Ordering::Relaxed);
        }
        ServerMsg::Error { .. } => r.errors.error_frames += 1,
        ServerMsg::Reject { .. } => r.errors.rejects += 1,
        _ => {}
    }
}
