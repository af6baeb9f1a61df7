//! Scenario `fanout`: per room one writer sending inputs at H Hz and K readers that only
//! read; every input becomes a delta delivered to all K + 1 members.
//!
//! The writer sends on a fixed schedule (`tokio::time::interval`, `MissedTickBehavior::Burst`):
//! input `cid` k of room r is due at `first(r) + (k - 1) / H`. Readers run in the same
//! process and share the clock, so each reader computes that scheduled instant itself and
//! times the arrival of the writer's delta against it (coordinated-omission aware: a writer
//! that falls behind shows as latency). A delta for cid k also covers older cids not seen
//! yet (an input coalesced with a newer one is timed to the delta that covers it). Readers
//! recognise the writer's deltas by their cid (readers send no ops; server deltas have none).
//!
//! Timeline as in `arena`: connect and join everyone, warm-up, the measured window, a drain
//! (collecting late deltas of in-window inputs), then everyone leaves. Deliveries are all
//! deltas received inside the window; latency samples are the readers' deliveries of inputs
//! scheduled inside the window.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{encode, ClientMsg, Doc, Op};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::arena::{unit_hash, Mover};
use super::common::{
    self, fd_budget, new_join, FirstErrors, Layout, LimitFigures, MachineFigures, Net, RoomType,
    ServerFigures,
};
use super::join_storm::error_row;
use crate::conn::{self, ConnError, Ws};
use crate::procstat::{self, CpuWindow, NofileLimit};
use crate::report::{round, Report, Table, Validity};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary, Samples, Timeline};
use crate::wire::{self, Event};
use crate::Common;

/// Flags of `gamerelay-loadtest fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Rooms (R), each with one writer and `--readers` readers.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Readers per room (K). 63 + the writer = 64 members, the server's default room limit.
    #[arg(long, default_value_t = 63)]
    pub readers: usize,
    /// Inputs per second of each writer (H).
    #[arg(long, default_value_t = 20.0)]
    pub hz: f64,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Warm-up in seconds: sending, nothing counted.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// After the window: seconds to keep collecting deltas of in-window inputs.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Room type.
    #[arg(long, value_enum, default_value_t = RoomType::Arena)]
    pub room_type: RoomType,
    /// Distance moved per input (arena: at most 5 units, never clamped at 20 Hz).
    #[arg(long, default_value_t = 4.0)]
    pub step: f64,
}

/// The figures of one fanout run (the `--json` line).
#[derive(Debug, Serialize)]
struct FanoutFigures {
    scenario: &'static str,
    room_type: &'static str,
    rooms: usize,
    readers: usize,
    hz: f64,
    duration_s: f64,
    warmup_s: f64,
    urls: Vec<String>,
    connections: usize,
    connected: usize,
    join_s: f64,
    deliveries: u64,
    deliveries_per_sec: f64,
    /// rooms x (readers + 1) x hz.
    expected_deliveries_per_sec: f64,
    /// Writer's scheduled send instant to the delta's arrival at a reader.
    latency_ms: Option<LatencySummary>,
    inputs_scheduled: u64,
    inputs_sent: u64,
    schedule_adherence: f64,
    late_sends: u64,
    send_lag_max_ms: f64,
    /// (reader, in-window input) pairs never delivered by the end of the drain.
    reader_inputs_missed: u64,
    resyncs: u64,
    errors: u64,
    errors_detail: ErrorCounts,
    #[serde(flatten)]
    machine: MachineFigures,
    #[serde(flatten)]
    server: ServerFigures,
    #[serde(flatten)]
    limits: LimitFigures,
    valid: bool,
    invalid_reasons: Vec<String>,
}

#[derive(Debug, Default)]
struct MemberResult {
    deliveries: u64,
    inputs_scheduled: u64,
    inputs_sent: u64,
    late_sends: u64,
    send_lag_max: Duration,
    missed: u64,
    resyncs: u64,
    errors: ErrorCounts,
    samples: Samples,
}

struct Shared {
    args: FanoutArgs,
    net: Net,
    layout: Layout,
    period: Duration,
}

impl Shared {
    /// When the first input of room `r`'s writer is due (each room at its own phase).
    fn first_input(&self, tl: &Timeline, r: usize) -> Instant {
        tl.start + self.period.mul_f64(unit_hash(r as u64, 2))
    }
}

pub async fn run(common: &Common, args: &FanoutArgs, nofile: NofileLimit) -> Result<Report, String> {
    if args.rooms == 0 || args.readers == 0 {
        return Err("--rooms and --readers must be at least 1".into());
    }
    super::common::check_rate_flags(args.hz, args.duration, args.warmup, args.drain, args.step)?;
    let per_room = args.readers + 1;
    let layout = Layout { n: args.rooms * per_room, per_room };
    let n = layout.n;
    let budget = fd_budget(n, nofile);
    let mut validity = Validity::default();
    if let Some(msg) = &budget.capped {
        // A room without all its readers measures something else: say so, run anyway.
        eprintln!("warning: {msg}");
        validity.check(true, || msg.clone());
    }
    let net = Net::new(common, layout, 0).await?;
    let limits = LimitFigures::new(nofile, &net, &budget);
    eprintln!(
        "fanout: {} {} rooms x (1 writer at {} Hz + {} readers) = {n} connections to {} url(s)",
        args.rooms,
        args.room_type.as_str(),
        args.hz,
        args.readers,
        net.targets.len()
    );
    let sh =
        Arc::new(Shared { args: args.clone(), net, layout, period: Duration::from_secs_f64(1.0 / args.hz) });
    let rss_baseline = procstat::total_rss_kib(&common.server_pids);

    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<Result<(), ConnError>>();
    let (start_tx, start_rx) = watch::channel::<Option<Timeline>>(None);
    let connect_started = Instant::now();
    let tasks: Vec<_> =
        (0..n).map(|i| tokio::spawn(member(sh.clone(), i, joined_tx.clone(), start_rx.clone()))).collect();
    drop(joined_tx);
    let mut connected = 0usize;
    let mut failures = FirstErrors::default();
    while let Some(outcome) = joined_rx.recv().await {
        match outcome {
            Ok(()) => connected += 1,
            Err(e) => failures.push(format!("connection failed: {e}")),
        }
    }
    let join_s = connect_started.elapsed().as_secs_f64();
    eprintln!("fanout: {connected}/{n} joined in {join_s:.1} s");
    failures.print("fanout");
    if connected == 0 {
        return Err(format!("no connection joined (first error: {})", failures.first()));
    }

    let tl = Timeline::new(
        Instant::now() + Duration::from_millis(200),
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
        Duration::from_secs_f64(args.drain),
    );
    let _ = start_tx.send(Some(tl));
    eprintln!("fanout: warm-up {} s, window {} s, drain {} s", args.warmup, args.duration, args.drain);
    time::sleep_until(tl.window_start).await;
    let cpu = CpuWindow::begin(&common.server_pids);
    time::sleep_until(tl.window_end).await;
    let cpu = cpu.finish();
    let rss_end = procstat::total_rss_kib(&common.server_pids);

    let mut total = MemberResult::default();
    let mut histogram = LatencyHistogram::new();
    let collect_deadline = tl.stop + Duration::from_secs(10);
    let mut lost = 0u64;
    for task in tasks {
        let abort = task.abort_handle();
        match time::timeout_at(collect_deadline, task).await {
            Ok(Ok(r)) => {
                histogram.add(&r.samples);
                total.deliveries += r.deliveries;
                total.inputs_scheduled += r.inputs_scheduled;
                total.inputs_sent += r.inputs_sent;
                total.late_sends += r.late_sends;
                total.send_lag_max = total.send_lag_max.max(r.send_lag_max);
                total.missed += r.missed;
                total.resyncs += r.resyncs;
                total.errors.add(&r.errors);
            }
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                lost += 1;
            }
        }
    }
    total.errors.connect = total.errors.connect.max((n - connected) as u64);

    let deliveries_per_sec = total.deliveries as f64 / args.duration;
    let adherence = if total.inputs_scheduled > 0 {
        total.inputs_sent as f64 / total.inputs_scheduled as f64
    } else {
        0.0
    };
    let machine = common::machine_figures(&cpu, common.threads.max(1), &mut validity);
    let server = common::server_figures(
        common,
        &cpu,
        (deliveries_per_sec * cpu.wall_s).round() as u64,
        rss_baseline,
        rss_end,
        connected,
    );
    validity.check(adherence < 0.95, || {
        format!("schedule adherence {:.1}% < 95%: the writers could not send on time", adherence * 100.0)
    });
    validity.check(connected < n, || format!("only {connected} of {n} connections joined"));
    validity.check(lost > 0, || format!("{lost} connection tasks did not finish"));
    validity.check(total.deliveries == 0, || "no deliveries in the window".into());
    let valid = validity.is_valid();
    let figures = FanoutFigures {
        scenario: "fanout",
        room_type: args.room_type.as_str(),
        rooms: args.rooms,
        readers: args.readers,
        hz: args.hz,
        duration_s: args.duration,
        warmup_s: args.warmup,
        urls: common.urls.clone(),
        connections: n,
        connected,
        join_s: round(join_s, 2),
        deliveries: total.deliveries,
        deliveries_per_sec: deliveries_per_sec.round(),
        expected_deliveries_per_sec: (args.rooms * per_room) as f64 * args.hz,
        latency_ms: histogram.summary(),
        inputs_scheduled: total.inputs_scheduled,
        inputs_sent: total.inputs_sent,
        schedule_adherence: round(adherence, 4),
        late_sends: total.late_sends,
        send_lag_max_ms: round(total.send_lag_max.as_secs_f64() * 1000.0, 2),
        reader_inputs_missed: total.missed,
        resyncs: total.resyncs,
        errors: total.errors.total(),
        errors_detail: total.errors,
        machine,
        server,
        limits,
        valid,
        invalid_reasons: validity.into_reasons(),
    };
    let table = table(&figures);
    Ok(Report::new(&figures, table, valid))
}

fn table(f: &FanoutFigures) -> Table {
    let mut t = Table::default();
    t.row(
        "workload",
        format!(
            "fanout: {} {} rooms x (1 writer at {} Hz + {} readers), {} s window",
            f.rooms, f.room_type, f.hz, f.readers, f.duration_s
        ),
    )
    .row("connections", format!("{}/{} joined in {} s", f.connected, f.connections, f.join_s))
    .row("deliveries/s", format!("{} (expected {})", f.deliveries_per_sec, f.expected_deliveries_per_sec))
    .row("latency ms", common::latency_row(f.latency_ms.as_ref()))
    .row(
        "writer inputs",
        format!(
            "{}/{} sent in window (adherence {:.1}%), {} late, max lag {} ms; {} reader deliveries missed",
            f.inputs_sent,
            f.inputs_scheduled,
            f.schedule_adherence * 100.0,
            f.late_sends,
            f.send_lag_max_ms,
            f.reader_inputs_missed
        ),
    )
    .row("errors", format!("{}, resyncs {}", error_row(f.errors, &f.errors_detail), f.resyncs));
    common::common_rows(&mut t, &f.machine, &f.server, f.valid, &f.invalid_reasons);
    t
}

/// One member: the writer (member 0 of its room) or a reader.
async fn member(
    sh: Arc<Shared>,
    i: usize,
    joined_tx: mpsc::UnboundedSender<Result<(), ConnError>>,
    mut start_rx: watch::Receiver<Option<Timeline>>,
) -> MemberResult {
    let mut r = MemberResult::default();
    let room = sh.layout.room_of(i);
    let target = sh.net.target(sh.layout.member_of(i));
    let join = new_join(sh.net.room(room), sh.args.room_type);
    let (ws, joined) = match sh.net.connect_join(i, target, join).await {
        Ok((ws, joined, _)) => (ws, joined),
        Err(e) => {
            let _ = joined_tx.send(Err(e));
            return r;
        }
    };
    let _ = joined_tx.send(Ok(()));
    drop(joined_tx);
    let tl = match start_rx.wait_for(Option::is_some).await {
        Ok(t) => match *t {
            Some(t) => t,
            None => return r,
        },
        Err(_) => return r,
    };
    let first = sh.first_input(&tl, room);
    if sh.layout.member_of(i) == 0 {
        let state = joined.snapshot.map(|s| s.state).unwrap_or_default();
        let x = conn::number_at(&state, &format!("players/{}/x", joined.player));
        let y = conn::number_at(&state, &format!("players/{}/y", joined.player));
        let mover =
            Mover::new(x.unwrap_or(500.0), y.unwrap_or(500.0), sh.args.step, unit_hash(room as u64, 1));
        writer(&sh, ws, joined.player, mover, tl, first, r).await
    } else {
        drop(joined);
        r.samples = Samples::with_capacity((sh.args.hz * sh.args.duration * 1.02) as usize + 4);
        reader(&sh, ws, tl, first, r).await
    }
}

/// Sends inputs on schedule until the window ends, reads (its own deltas) until the stop.
async fn writer(
    sh: &Shared,
    mut ws: Ws,
    me: String,
    mut mover: Mover,
    tl: Timeline,
    first: Instant,
    mut r: MemberResult,
) -> MemberResult {
    let period = sh.period;
    r.inputs_scheduled = tl.slots_in_window(first, period);
    let mut ticker = time::interval_at(first, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let stop = time::sleep_until(tl.stop);
    tokio::pin!(stop);
    let path_x = format!("players/{me}/x");
    let path_y = format!("players/{me}/y");
    let mut cid = 0u64;
    let mut sending = true;
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            scheduled = ticker.tick(), if sending => {
                if Instant::now() >= tl.window_end {
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
                if ws.send(Message::Binary(encode(&msg))).await.is_err() {
                    r.errors.send_failures += 1;
                    open = false;
                    break;
                }
                let lag = Instant::now().saturating_duration_since(scheduled);
                r.send_lag_max = r.send_lag_max.max(lag);
                if lag > period {
                    r.late_sends += 1;
                }
                if tl.in_window(scheduled) {
                    r.inputs_sent += 1;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(frame))) => {
                    let in_window = tl.in_window(Instant::now());
                    let mut on = |ev| match ev {
                        Event::Delta { .. } => r.deliveries += u64::from(in_window),
                        Event::Reject { .. } => r.errors.rejects += 1,
                        Event::Error => r.errors.error_frames += 1,
                        Event::Resync => r.resyncs += 1,
                        Event::Ack { .. } | Event::Other => {}
                    };
                    if wire::scan_frame(&frame, me.as_bytes(), &mut on).is_err() {
                        r.errors.bad_frames += 1;
                    }
                }
                Some(Ok(Message::Text(_))) => r.errors.bad_frames += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    r.errors.closed += 1;
                    open = false;
                    break;
                }
            },
            _ = &mut stop => break,
        }
    }
    if open {
        conn::leave(&mut ws).await;
    }
    r
}

/// What a reader has seen of its writer's inputs.
struct Coverage {
    first: Instant,
    period: Duration,
    /// Highest writer cid delivered so far.
    last: u64,
    /// In-window inputs delivered.
    covered: u64,
}

impl Coverage {
    /// When the writer's input `cid` was due.
    fn scheduled(&self, cid: u64) -> Instant {
        self.first + self.period.mul_f64(cid.saturating_sub(1) as f64)
    }

    /// The writer's delta for `cid` arrived at `now`: it delivers `cid` and every older input
    /// not delivered yet. Records the latency of those scheduled in the window.
    fn deliver(&mut self, tl: &Timeline, cid: u64, now: Instant, samples: &mut Samples) {
        while self.last < cid {
            self.last += 1;
            let due = self.scheduled(self.last);
            if tl.in_window(due) {
                self.covered += 1;
                samples.push(now.saturating_duration_since(due));
            }
        }
    }
}

/// Reads until the stop, timing the writer's deltas against its schedule.
async fn reader(sh: &Shared, mut ws: Ws, tl: Timeline, first: Instant, mut r: MemberResult) -> MemberResult {
    let mut cov = Coverage { first, period: sh.period, last: 0, covered: 0 };
    let stop = time::sleep_until(tl.stop);
    tokio::pin!(stop);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(frame))) => {
                    let now = Instant::now();
                    let in_window = tl.in_window(now);
                    let MemberResult { deliveries, samples, errors, resyncs, .. } = &mut r;
                    let mut on = |ev| match ev {
                        Event::Delta { cid, .. } => {
                            *deliveries += u64::from(in_window);
                            // Only the writer sends ops: a delta with a cid is its input.
                            if let Some(cid) = cid {
                                cov.deliver(&tl, cid, now, samples);
                            }
                        }
                        Event::Reject { .. } => errors.rejects += 1,
                        Event::Error => errors.error_frames += 1,
                        Event::Resync => *resyncs += 1,
                        Event::Ack { .. } | Event::Other => {}
                    };
                    if wire::scan_frame(&frame, b"", &mut on).is_err() {
                        r.errors.bad_frames += 1;
                    }
                }
                Some(Ok(Message::Text(_))) => r.errors.bad_frames += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    r.errors.closed += 1;
                    open = false;
                    break;
                }
            },
            _ = &mut stop => break,
        }
    }
    r.missed = tl.slots_in_window(first, sh.period).saturating_sub(cov.covered);
    if open {
        conn::leave(&mut ws).await;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_covers_every_older_input_of_the_window() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, Duration::from_millis(100), Duration::from_secs(1), Duration::ZERO);
        let period = Duration::from_millis(50);
        let mut cov = Coverage { first: t0, period, last: 0, covered: 0 };
        assert_eq!(cov.scheduled(1), t0);
        assert_eq!(cov.scheduled(3), t0 + Duration::from_millis(100));
        let mut samples = Samples::default();
        // cids 1 and 2 are due in the warm-up: covered, not sampled.
        cov.deliver(&tl, 2, t0 + Duration::from_millis(60), &mut samples);
        assert_eq!((cov.last, cov.covered, samples.len()), (2, 0, 0));
        // One delta for cid 5 (due at 200 ms) also delivers 3 and 4.
        let at = t0 + Duration::from_millis(230);
        cov.deliver(&tl, 5, at, &mut samples);
        assert_eq!((cov.last, cov.covered, samples.len()), (5, 3, 3));
        let mut h = LatencyHistogram::new();
        h.add(&samples);
        let s = h.summary().expect("samples");
        assert!((s.max - 130.0).abs() < 0.5 && (s.p50 - 80.0).abs() < 0.5, "{s:?}");
        // An old or repeated cid changes nothing.
        cov.deliver(&tl, 4, at, &mut samples);
        assert_eq!((cov.last, cov.covered), (5, 3));
        // In-window slots: 100 ms ..< 1100 ms at 50 ms = 20; 3 delivered.
        assert_eq!(tl.slots_in_window(t0, period).saturating_sub(cov.covered), 17);
    }
}
