//! `chaos`: faults injected into a running cluster while clients write, then a checker over
//! what every client recorded (see `check` for the rules, `faults` for the faults).
//!
//! Clients are real `gamerelay-client`s (the Rust client library: reconnect, resume,
//! re-sending unacknowledged batches), in `doc` rooms, connecting through HAProxy: half of
//! each room's clients name the room in the URL (routed by the room's hash), half do not
//! (least connections), so a room has members on several nodes and failovers move rooms.
//! Each sends `[set players/<me>/o<k> = k, inc players/<me>/n 1]` at a fixed rate. Meanwhile
//! faults are injected on a seeded schedule. Then sending stops, every client waits for its
//! last batch to be acknowledged (bounded), a fresh observer per room reads the owner's
//! state, and the checker runs. Verdict `fail` (exit status 3) on any violation, on a client
//! closed for good, or when a history is incomplete (events dropped).

pub mod check;
pub mod faults;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gamerelay::protocol::{Doc, Op};
use gamerelay_client::{Client, ClientConfig, Event, ReconnectPolicy};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::{self, Instant, MissedTickBehavior};

use crate::report::{Report, Table};
use crate::stats::{LatencyHistogram, LatencySummary, Samples};
use crate::Common;
use check::{History, RoomFinal, Seen, Sent, Violation};
use faults::{Cluster, FaultKind, Rng, SlowLink};

/// Flags of `gamerelay-loadtest chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Directory of a cluster started with `scripts/cluster up --dir DIR`.
    #[arg(long)]
    pub cluster_dir: PathBuf,
    /// The cluster script (signals and restarts the cluster's processes).
    #[arg(long, default_value = "scripts/cluster")]
    pub cluster_script: PathBuf,
    /// Rooms.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Op batches per second per client.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of writing (faults are injected during it).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seed of the fault schedule (which fault, which node).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fault kinds to pick from (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Drop,
            FaultKind::RedisRestart,
            FaultKind::RedisCut,
            FaultKind::RedisReset,
            FaultKind::HaproxyReload,
            FaultKind::Slow,
        ]
    )]
    pub faults: Vec<FaultKind>,
    /// Seconds between the end of one fault and the start of the next.
    #[arg(long, default_value_t = 6.0)]
    pub fault_every: f64,
    /// The nodes' `--lease-ttl-ms` (a pause lasts the lease plus 1.5 s).
    #[arg(long, default_value_t = 3000)]
    pub lease_ttl_ms: u64,
    /// Clients per room (the last ones) that connect through a link the `slow` fault
    /// throttles.
    #[arg(long, default_value_t = 1)]
    pub slow_clients: usize,
    /// Seconds each client may take, after writing stops, until its last batch is
    /// acknowledged.
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
struct FaultRecord {
    kind: FaultKind,
    node: String,
    at_ms: u64,
    /// The fault was undone (node restarted or continued) at.
    undone_ms: u64,
    /// From the fault until every client had a batch sent after it acknowledged.
    recovery_ms: Option<u64>,
    error: Option<String>,
}

/// Recovery times of one fault kind.
#[derive(Debug, Serialize)]
struct KindRecovery {
    kind: FaultKind,
    faults: usize,
    recovered: usize,
    p50_ms: Option<f64>,
    max_ms: Option<f64>,
}

/// The figures of a chaos run (the `--json` line).
#[derive(Debug, Serialize)]
struct ChaosFigures {
    scenario: &'static str,
    verdict: &'static str,
    seed: u64,
    nodes: Vec<String>,
    rooms: usize,
    clients: usize,
    duration_s: f64,
    faults: Vec<FaultRecord>,
    faults_by_kind: Vec<(FaultKind, usize)>,
    /// Time from a fault to every client writing again (faults that recovered).
    recovery_ms: Option<LatencySummary>,
    /// The same per fault kind.
    recovery_by_kind: Vec<KindRecovery>,
    faults_not_recovered: usize,
    ops_sent: u64,
    ops_acked: u64,
    /// Refused by the room (a `reject`): not applied; retryable or not, never lost.
    ops_refused: u64,
    /// Sent but neither acknowledged nor refused by the end of the settle time.
    ops_unresolved: u64,
    /// Acknowledged but missing from the final state (also listed as G2 violations).
    ops_lost: u64,
    disconnects: u64,
    resumes: u64,
    snapshots: u64,
    /// Epoch changes seen per room (failovers), summed over rooms.
    failovers: u64,
    clients_closed: Vec<String>,
    events_dropped: u64,
    violations: Vec<Violation>,
    failures: Vec<String>,
}

/// Runs the scenario and returns its report.
pub async fn run(_common: &Common, args: &ChaosArgs) -> Result<Report, String> {
    if args.rooms == 0 || args.clients == 0 || args.rate.is_nan() || args.rate <= 0.0 || args.duration <= 0.0
    {
        return Err("--rooms, --clients, --rate and --duration must be positive".into());
    }
    if args.faults.is_empty() {
        return Err("--faults needs at least one kind".into());
    }
    let cluster = Cluster::attach(&args.cluster_dir, &args.cluster_script)?;
    let mut args = args.clone();
    if !cluster.redis_proxies {
        let (kept, dropped): (Vec<FaultKind>, Vec<FaultKind>) =
            args.faults.iter().partition(|k| !k.needs_redis_proxies());
        if !dropped.is_empty() {
            eprintln!("chaos: no Redis proxies in this cluster (scripts/cluster up --redis-proxies): not injecting {dropped:?}");
        }
        args.faults = kept;
    }
    if args.slow_clients == 0 {
        args.faults.retain(|k| *k != FaultKind::Slow);
    }
    let args = &args;
    if args.faults.is_empty() {
        return Err("no fault kind left to inject".into());
    }
    let t0 = Instant::now();
    let prefix = format!("chaos{}-{}-", std::process::id(), args.seed);
    eprintln!(
        "chaos: {} rooms x {} clients through {} ({} nodes), {} s, faults {:?} every {} s, seed {}",
        args.rooms,
        args.clients,
        cluster.ws_url,
        cluster.nodes.len(),
        args.duration,
        args.faults,
        args.fault_every,
        args.seed
    );

    let slow_link = match args.slow_clients {
        0 => None,
        _ => Some(SlowLink::start(&cluster).await?),
    };
    // Connect everyone before the first fault.
    let mut players = Vec::new();
    for r in 0..args.rooms {
        for c in 0..args.clients {
            let room = format!("{prefix}{r}");
            let url = match &slow_link {
                Some(link) if c + args.slow_clients >= args.clients => link.ws_url.clone(),
                _ => cluster.ws_url.clone(),
            };
            let config = || {
                let mut cfg = ClientConfig::new(url.clone(), room.clone(), "doc")
                    .with_client_name("gamerelay-loadtest-chaos")
                    .with_event_buffer(1 << 16)
                    .with_reconnect(ReconnectPolicy {
                        initial_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(1),
                        max_attempts: None,
                        jitter: 0.5,
                    });
                cfg.room_query = c % 2 == 0;
                cfg
            };
            let client =
                connect_patiently(config, &room).await.map_err(|e| format!("client {c} of {room}: {e}"))?;
            players.push(Player::start(client, room, t0));
        }
    }
    eprintln!("chaos: {} clients joined in {:.1} s", players.len(), t0.elapsed().as_secs_f64());

    let write_end = Instant::now() + Duration::from_secs_f64(args.duration);
    let senders: Vec<JoinHandle<Vec<Sent>>> = players
        .iter()
        .map(|p| tokio::spawn(send_until(p.client.clone(), p.me.clone(), args.rate, write_end, t0)))
        .collect();
    let faults = inject_faults(&cluster, slow_link.as_ref(), args, write_end, t0).await;
    let mut sent_by_player = Vec::new();
    for s in senders {
        sent_by_player.push(s.await.map_err(|e| format!("a sender task failed: {e}"))?);
    }
    eprintln!("chaos: writing stopped; {} faults injected; settling", faults.len());

    // Every client's last batch acknowledged (batches are applied in order), bounded.
    let settle_end = Instant::now() + Duration::from_secs_f64(args.settle);
    let mut failures = Vec::new();
    for (p, sent) in players.iter().zip(&sent_by_player) {
        if let Some(last) = sent.last() {
            match time::timeout_at(settle_end, p.client.wait_ack(last.cid)).await {
                Ok(Ok(_)) | Ok(Err(gamerelay_client::ClientError::Rejected { .. })) => {}
                Ok(Err(e)) => failures.push(format!("{}: last batch: {e}", p.me)),
                Err(_) => failures
                    .push(format!("{}: last batch cid {} not acknowledged within --settle", p.me, last.cid)),
            }
        }
    }

    // The owners' states, read by a fresh observer per room. A join refused for a passing
    // reason (a node whose Redis connection broke in the last fault answers `unavailable`
    // once) is retried, as any client would, for up to JOIN_PATIENCE.
    let mut finals = Vec::new();
    for r in 0..args.rooms {
        let room = format!("{prefix}{r}");
        match observe(&cluster.ws_url, &room).await {
            Ok(o) => {
                finals.push(RoomFinal { room, seq: o.seq(), hash: o.state_hash(), state: o.state() });
                o.leave().await.ok();
            }
            Err(e) => failures.push(format!("observer of {room}: {e}")),
        }
    }

    // Each client's final mirror (once it reached the owner's seq), then its history.
    let mut histories = Vec::new();
    let mut events_dropped = 0;
    let mut clients_closed = Vec::new();
    for (p, sent) in players.into_iter().zip(sent_by_player) {
        let target = finals.iter().find(|f| f.room == p.room).map_or(0, |f| f.seq);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.client.seq() < target && Instant::now() < deadline {
            time::sleep(Duration::from_millis(20)).await;
        }
        let closed = p.client.close_reason();
        let (final_hash, final_seq) = match &closed {
            None => (Some(p.client.state_hash()), p.client.seq()),
            Some(e) => {
                clients_closed.push(format!("{}: {e}", p.me));
                (None, p.client.seq())
            }
        };
        p.client.close().await;
        let (seen, dropped) = p.recorder.await.map_err(|e| format!("a recorder task failed: {e}"))?;
        events_dropped += dropped;
        histories.push(History {
            room: p.room,
            player: p.me,
            joined_seq: p.joined_seq,
            sent,
            seen,
            final_hash,
            final_seq,
        });
    }

    let violations = check::check(&histories, &finals);
    let figures =
        figures(args, &cluster, faults, &histories, violations, clients_closed, events_dropped, failures);
    let table = table(&figures);
    let pass = figures.verdict == "pass";
    Ok(Report::new(&figures, table, pass))
}

/// How long a client of the run keeps retrying its first join.
const JOIN_PATIENCE: Duration = Duration::from_secs(15);

/// Joins `room` as a fresh observer.
async fn observe(url: &str, room: &str) -> Result<Client, gamerelay_client::ClientError> {
    connect_patiently(|| ClientConfig::new(url.to_string(), room.to_string(), "doc"), room).await
}

/// Connects and joins, retrying refusals the protocol calls retryable and failed connections
/// until [`JOIN_PATIENCE`] has passed.
async fn connect_patiently(
    config: impl Fn() -> ClientConfig,
    room: &str,
) -> Result<Client, gamerelay_client::ClientError> {
    let deadline = Instant::now() + JOIN_PATIENCE;
    loop {
        match Client::connect(config()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline && passing(&e) => {
                eprintln!("chaos: joining {room}: {e}; retrying");
                time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed join may succeed if tried again: a connection that failed or closed, or
/// a refusal the protocol calls retryable.
fn passing(e: &gamerelay_client::ClientError) -> bool {
    use gamerelay_client::ClientError;
    match e {
        ClientError::Connect(_) | ClientError::HandshakeTimeout(_) | ClientError::Closed { .. } => true,
        ClientError::JoinRefused { code, .. } => code.is_retryable(),
        _ => false,
    }
}

/// A connected client and the task recording its events.
struct Player {
    client: Arc<Client>,
    room: String,
    me: String,
    joined_seq: u64,
    recorder: JoinHandle<(Vec<(u64, Seen)>, u64)>,
}

impl Player {
    fn start(client: Client, room: String, t0: Instant) -> Player {
        let mut events = client.subscribe();
        let recorder = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(ev) = events.next().await {
                let at = t0.elapsed().as_millis() as u64;
                let s = match ev {
                    Event::Delta(d) => Seen::Delta {
                        epoch: d.epoch,
                        seq: d.seq,
                        digest: digest(&d.by, d.cid, &d.ops),
                        by: d.by,
                        cid: d.cid,
                    },
                    Event::Acked { cid, seq } => Seen::Acked { cid, seq },
                    Event::Rejected { cid, .. } => Seen::Rejected { cid },
                    Event::Resync => Seen::Snapshot,
                    Event::Resumed { with_snapshot } => {
                        if with_snapshot {
                            seen.push((at, Seen::Snapshot));
                        }
                        Seen::Resumed
                    }
                    Event::Disconnected { .. } => Seen::Disconnected,
                    Event::Closed { .. } => break,
                    _ => continue,
                };
                seen.push((at, s));
            }
            (seen, events.dropped())
        });
        let me = client.player_id().to_string();
        let joined_seq = client.seq();
        Player { client: Arc::new(client), room, me, joined_seq, recorder }
    }
}

fn digest(by: &Option<String>, cid: Option<u64>, ops: &[Op]) -> u64 {
    let mut h = DefaultHasher::new();
    by.hash(&mut h);
    cid.hash(&mut h);
    format!("{ops:?}").hash(&mut h);
    h.finish()
}

/// Sends batch k = 1, 2, ... at `rate` per second until `end`.
async fn send_until(client: Arc<Client>, me: String, rate: f64, end: Instant, t0: Instant) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut tick = time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut k = 0u64;
    while tick.tick().await < end {
        k += 1;
        let ops = vec![
            Op::Set { path: format!("players/{me}/o{k}"), value: Doc::Int(k as i64) },
            Op::Inc { path: format!("players/{me}/n"), by: Doc::Int(1) },
        ];
        let at_ms = t0.elapsed().as_millis() as u64;
        match client.send_ops(ops).await {
            Ok(cid) => sent.push(Sent { cid, k, at_ms }),
            // Closed for good: the history says so; nothing more to send.
            Err(_) => break,
        }
    }
    sent
}

/// How long the `slow` fault throttles the slow clients' link.
const SLOW_FOR: Duration = Duration::from_secs(8);

/// Injects faults on the seeded schedule until writing ends.
async fn inject_faults(
    cluster: &Cluster,
    slow_link: Option<&SlowLink>,
    args: &ChaosArgs,
    end: Instant,
    t0: Instant,
) -> Vec<FaultRecord> {
    let mut rng = Rng::new(args.seed);
    let lease = Duration::from_millis(args.lease_ttl_ms);
    let gap = Duration::from_secs_f64(args.fault_every);
    let mut out = Vec::new();
    loop {
        time::sleep(gap).await;
        let kind = args.faults[rng.below(args.faults.len())];
        let node = match kind {
            FaultKind::HaproxyReload => "haproxy".to_string(),
            FaultKind::RedisRestart => "redis".to_string(),
            FaultKind::Slow => "slow clients".to_string(),
            _ => cluster.nodes[rng.below(cluster.nodes.len())].clone(),
        };
        let worst = (lease + Duration::from_secs(3)).max(SLOW_FOR);
        if Instant::now() + worst >= end {
            break;
        }
        let at_ms = t0.elapsed().as_millis() as u64;
        eprintln!("chaos: {at_ms} ms: {kind:?} {node}");
        let error = match (kind, slow_link) {
            (FaultKind::Slow, Some(link)) => link.slow_for(SLOW_FOR).await.err(),
            _ => cluster.inject(kind, &node, lease).await.err(),
        };
        if let Some(e) = &error {
            eprintln!("chaos: fault failed: {e}");
        }
        out.push(FaultRecord {
            kind,
            node,
            at_ms,
            undone_ms: t0.elapsed().as_millis() as u64,
            recovery_ms: None,
            error,
        });
    }
    out
}

/// From a fault until every client had a batch sent at or after it acknowledged.
fn recovery_ms(at_ms: u64, histories: &[History]) -> Option<u64> {
    let mut worst = 0;
    for h in histories {
        let sent_at: std::collections::HashMap<u64, u64> = h.sent.iter().map(|s| (s.cid, s.at_ms)).collect();
        let first = h.seen.iter().find_map(|(at, s)| match s {
            Seen::Acked { cid, .. } if sent_at.get(cid).is_some_and(|&t| t >= at_ms) => Some(*at),
            _ => None,
        })?;
        worst = worst.max(first.saturating_sub(at_ms));
    }
    Some(worst)
}

/// p50, max, ... of recovery times in ms (None without any).
fn summarize(ms: impl Iterator<Item = u64>) -> Option<LatencySummary> {
    let mut samples = Samples::default();
    for m in ms {
        samples.push(Duration::from_millis(m));
    }
    let mut hist = LatencyHistogram::new();
    hist.add(&samples);
    hist.summary()
}

#[allow(clippy::too_many_arguments)]
fn figures(
    args: &ChaosArgs,
    cluster: &Cluster,
    mut faults: Vec<FaultRecord>,
    histories: &[History],
    violations: Vec<Violation>,
    clients_closed: Vec<String>,
    events_dropped: u64,
    mut failures: Vec<String>,
) -> ChaosFigures {
    for f in &mut faults {
        f.recovery_ms = recovery_ms(f.at_ms, histories);
    }
    let mut kinds: Vec<FaultKind> = Vec::new();
    for k in &args.faults {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let recovery_by_kind: Vec<KindRecovery> = kinds
        .into_iter()
        .map(|kind| {
            let of_kind: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == kind).collect();
            let summary = summarize(of_kind.iter().filter_map(|f| f.recovery_ms));
            KindRecovery {
                kind,
                faults: of_kind.len(),
                recovered: of_kind.iter().filter(|f| f.recovery_ms.is_some()).count(),
                p50_ms: summary.as_ref().map(|l| l.p50),
                max_ms: summary.as_ref().map(|l| l.max),
            }
        })
        .collect();
    let count = |pred: &dyn Fn(&Seen) -> bool| -> u64 {
        histories.iter().map(|h| h.seen.iter().filter(|(_, s)| pred(s)).count() as u64).sum()
    };
    let acked = count(&|s| matches!(s, Seen::Acked { .. }));
    let refused = count(&|s| matches!(s, Seen::Rejected { .. }));
    let sent: u64 = histories.iter().map(|h| h.sent.len() as u64).sum();
    let mut failovers = 0;
    let mut rooms: Vec<&str> = histories.iter().map(|h| h.room.as_str()).collect();
    rooms.dedup();
    for room in rooms {
        let mut epochs: Vec<u64> = histories
            .iter()
            .filter(|h| h.room == room)
            .flat_map(|h| {
                h.seen
                    .iter()
                    .filter_map(|(_, s)| if let Seen::Delta { epoch, .. } = s { Some(*epoch) } else { None })
            })
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        failovers += epochs.len().saturating_sub(1) as u64;
    }
    if events_dropped > 0 {
        failures.push(format!("{events_dropped} client events were dropped: the histories are incomplete"));
    }
    failures.extend(
        faults.iter().filter_map(|f| f.error.as_ref().map(|e| format!("fault {:?} {}: {e}", f.kind, f.node))),
    );
    let verdict = if violations.is_empty() && clients_closed.is_empty() && failures.is_empty() {
        "pass"
    } else {
        "fail"
    };
    let by_kind = recovery_by_kind.iter().map(|r| (r.kind, r.faults)).collect();
    let recovery_ms = summarize(faults.iter().filter_map(|f| f.recovery_ms));
    ChaosFigures {
        scenario: "chaos",
        verdict,
        seed: args.seed,
        nodes: cluster.nodes.clone(),
        rooms: args.rooms,
        clients: args.clients,
        duration_s: args.duration,
        faults_not_recovered: faults.iter().filter(|f| f.recovery_ms.is_none()).count(),
        faults_by_kind: by_kind,
        faults,
        recovery_ms,
        recovery_by_kind,
        ops_sent: sent,
        ops_acked: acked,
        ops_refused: refused,
        ops_unresolved: sent.saturating_sub(acked + refused),
        ops_lost: violations
            .iter()
            .filter(|v| v.guarantee == "G2" && v.detail.contains("acknowledged"))
            .count() as u64,
        disconnects: count(&|s| matches!(s, Seen::Disconnected)),
        resumes: count(&|s| matches!(s, Seen::Resumed)),
        snapshots: count(&|s| matches!(s, Seen::Snapshot)),
        failovers,
        clients_closed,
        events_dropped,
        violations,
        failures,
    }
}

fn table(f: &ChaosFigures) -> Table {
    let mut t = Table::default();
    t.row(
        "cluster",
        format!(
            "{} nodes, {} rooms x {} clients, {} s, seed {}",
            f.nodes.len(),
            f.rooms,
            f.clients,
            f.duration_s,
            f.seed
        ),
    )
    .row(
        "faults",
        format!(
            "{} ({}), {} not recovered",
            f.faults.len(),
            f.faults_by_kind.iter().map(|(k, n)| format!("{k:?} {n}")).collect::<Vec<_>>().join(", "),
            f.faults_not_recovered
        ),
    )
    .row(
        "recovery ms",
        f.recovery_ms
            .as_ref()
            .map_or("n/a".into(), |l| format!("p50 {}  max {}  ({} faults)", l.p50, l.max, l.samples)),
    )
    .row(
        "by kind",
        f.recovery_by_kind
            .iter()
            .filter(|r| r.faults > 0)
            .map(|r| match (r.p50_ms, r.max_ms) {
                (Some(p50), Some(max)) => format!("{:?} p50 {p50} max {max}", r.kind),
                _ => format!("{:?} not recovered", r.kind),
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
    .row(
        "ops",
        format!(
            "{} sent, {} acked, {} refused, {} unresolved, {} lost",
            f.ops_sent, f.ops_acked, f.ops_refused, f.ops_unresolved, f.ops_lost
        ),
    )
    .row(
        "clients",
        format!(
            "{} disconnects, {} resumes, {} snapshots, {} failovers, {} closed for good",
            f.disconnects,
            f.resumes,
            f.snapshots,
            f.failovers,
            f.clients_closed.len()
        ),
    );
    for v in f.violations.iter().take(10) {
        t.row(&format!("VIOLATION {}", v.guarantee), format!("room {}: {}", v.room, v.detail));
    }
    if f.violations.len() > 10 {
        t.row("violations", format!("... {} more (see --json)", f.violations.len() - 10));
    }
    for e in f.failures.iter().chain(&f.clients_closed).take(10) {
        t.row("failure", e);
    }
    t.row("verdict", if f.verdict == "pass" { "PASS".to_string() } else { "FAIL".to_string() });
    t
}
