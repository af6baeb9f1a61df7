//! Logs and metrics: the tracing subscriber, the process-wide Prometheus recorder, the
//! process collector (`process_*`, refreshed at each scrape by [`render`]), and the
//! pre-registered metric handles used on hot paths. Metric names live in [`names`].

pub mod names;

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, LogFormat};

/// Installs the tracing subscriber (human or JSON). Safe to call more than once.
pub fn init_tracing(config: &Config) {
    let Ok(filter) = config.log_filter() else {
        return;
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ = match config.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. Several servers in one
/// process (tests) share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            // Webhook POSTs cross the internet and may take up to --webhook-timeout-ms
            // (a full-name match wins over the `_seconds` suffix below).
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(names::WEBHOOK_SECONDS.into()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
                    &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_frames".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
                )
            })
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder is installed (an embedding application's); then
        // our handle renders an empty page rather than taking the process down.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        process_collector().describe();
        register_at_zero();
        handle
    })
}

/// How often histogram samples are folded into their buckets (see [`spawn_upkeep`]).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until
/// `shutdown`. The exporter keeps every sample of a histogram until it is rendered or upkept:
/// a node nobody scrapes would otherwise grow by 8 bytes per fan-out latency and queue depth
/// sample (about 1.6 MB/s at 100 k deliveries/s) for ever.
pub fn spawn_upkeep(shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => prometheus().run_upkeep(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// The `process_*` collector (CPU, memory, file descriptors, threads).
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The Prometheus text of `GET /metrics`: refreshes the `process_*` metrics, then renders
/// every metric.
pub fn render() -> String {
    let handle = prometheus();
    process_collector().collect();
    handle.render()
}

/// Registers the gauges and the counters of rare events at zero, with every bounded label
/// value known in advance, so a fresh node exports their series (dashboards and alerts see
/// 0 rather than nothing, and `rate()` sees the first increment).
fn register_at_zero() {
    use metrics::{counter, gauge};
    use names::*;
    for name in [CONNECTIONS, ROOMS, PLAYERS, SCHEDULING_LAG, WEBHOOK_QUEUE_DEPTH] {
        gauge!(name).increment(0.0);
    }
    for name in [
        CONNECTIONS_OPENED,
        CONNECTIONS_REFUSED,
        OPS_ACCEPTED,
        OPS_DUPLICATE,
        DELTAS,
        DELIVERIES,
        SESSIONS_EXPIRED,
        SESSIONS_REPLACED,
        OUTBOX_DROPPED,
        RESYNCS,
        SLOW_CONSUMERS,
        HANDOFFS,
        WEBHOOK_DROPPED,
    ] {
        counter!(name).increment(0);
    }
    for code in crate::protocol::ErrorCode::ALL {
        counter!(OPS_REJECTED, "code" => code.as_str()).increment(0);
    }
    counter!(FRAMES_IN, "kind" => "invalid").increment(0);
    for room_type in crate::room::types::ROOM_TYPES {
        counter!(ROOMS_CREATED, "type" => room_type).increment(0);
        counter!(ROOMS_DISPOSED, "type" => room_type).increment(0);
    }
    for outcome in ["new", "resumed_deltas", "resumed_snapshot", "refused"] {
        counter!(JOINS, "outcome" => outcome).increment(0);
    }
    for outcome in ["ok", "error", "unauthorized", "disabled"] {
        counter!(ADMIN_REQUESTS, "outcome" => outcome).increment(0);
    }
    for outcome in ["existing", "created"] {
        counter!(JOIN_OR_CREATE, "outcome" => outcome).increment(0);
    }
    for outcome in ["new", "restored"] {
        counter!(CLAIMS, "outcome" => outcome).increment(0);
    }
    for op in REDIS_OPS {
        counter!(REDIS_ERRORS, "op" => *op).increment(0);
    }
    for op in FENCING_OPS {
        counter!(FENCING_REJECTIONS, "op" => *op).increment(0);
    }
    for outcome in WEBHOOK_OUTCOMES {
        counter!(WEBHOOK_DELIVERIES, "outcome" => *outcome).increment(0);
    }
    for limit in crate::limits::LIMITS {
        counter!(LIMIT_HITS, "limit" => *limit).increment(0);
    }
    for reason in crate::auth::AuthError::LABELS {
        counter!(AUTH_FAILURES, "reason" => reason).increment(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections accepted");
    describe_counter!(CONNECTIONS_CLOSED, "WebSocket connections closed, by reason");
    describe_counter!(CONNECTIONS_REFUSED, "Upgrades refused at --max-connections");
    describe_gauge!(ROOMS, "Live rooms on this node");
    describe_counter!(ROOMS_CREATED, "Rooms created, by type");
    describe_counter!(ROOMS_DISPOSED, "Rooms disposed, by type");
    describe_gauge!(PLAYERS, "Players in rooms on this node, connected or within grace");
    describe_counter!(FRAMES_IN, "Frames received, by message kind");
    describe_counter!(BYTES_IN, Unit::Bytes, "Bytes received in binary frames");
    describe_counter!(FRAMES_OUT, "Frames written to sockets");
    describe_counter!(BYTES_OUT, Unit::Bytes, "Bytes written to sockets");
    describe_counter!(OPS_ACCEPTED, "Op batches applied");
    describe_counter!(OPS_REJECTED, "Op batches rejected, by error code");
    describe_counter!(LIMIT_HITS, "Times a limit was hit, by limit");
    describe_counter!(AUTH_FAILURES, "Joins refused for their join token, by reason");
    describe_gauge!(
        SCHEDULING_LAG,
        Unit::Seconds,
        "How late the runtime woke a 100 ms ticker (latest sample)"
    );
    describe_counter!(OPS_DUPLICATE, "Retried cids answered with their original ack");
    describe_counter!(DELTAS, "Deltas sequenced");
    describe_counter!(DELIVERIES, "Messages queued to members");
    describe_histogram!(FANOUT_SECONDS, Unit::Seconds, "Op received to delta queued to all members");
    describe_histogram!(DELTA_BYTES, Unit::Bytes, "Encoded delta size, by room type");
    describe_histogram!(STATE_BYTES, Unit::Bytes, "Room state size at snapshots, by room type");
    describe_counter!(JOINS, "Joins, by outcome");
    describe_counter!(ADMIN_REQUESTS, "Admin API requests, by outcome");
    describe_counter!(JOIN_OR_CREATE, "join_or_create choices, by outcome (existing room or created)");
    describe_counter!(SESSIONS_EXPIRED, "Sessions expired after the reconnect grace");
    describe_counter!(SESSIONS_REPLACED, "Connections replaced by a newer one for the same session");
    describe_counter!(OUTBOX_DROPPED, "Messages dropped at a full outbound queue");
    describe_counter!(RESYNCS, "Resync snapshots sent to lagging members");
    describe_counter!(SLOW_CONSUMERS, "Members closed after lagging past the slow-consumer timeout");
    describe_counter!(BAD_FRAMES, "Malformed frames, by error code");
    describe_histogram!(SNAPSHOT_SECONDS, Unit::Seconds, "Writing one room snapshot to the backplane");
    describe_histogram!(SNAPSHOT_BYTES, Unit::Bytes, "One room snapshot as written to Redis");
    describe_histogram!(
        OUTBOX_DEPTH,
        Unit::Count,
        "A connection's outbound queue depth when its writer wakes up"
    );
    describe_counter!(CLAIMS, "Rooms claimed by this node, by outcome");
    describe_counter!(HANDOFFS, "Rooms this node stopped owning because it was fenced or a commit failed");
    describe_histogram!(REDIS_SECONDS, Unit::Seconds, "One Redis round trip of the backplane, by op");
    describe_counter!(REDIS_ERRORS, "Failed Redis round trips of the backplane, by op");
    describe_counter!(FENCING_REJECTIONS, "Times this node was fenced off a room it owned, by op");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts, by outcome");
    describe_counter!(
        WEBHOOK_DROPPED,
        "Webhook events dropped before any attempt (queue full or shutting down)"
    );
    describe_gauge!(WEBHOOK_QUEUE_DEPTH, "Webhook events queued for delivery");
    describe_histogram!(WEBHOOK_SECONDS, Unit::Seconds, "One webhook POST, sent to answered");
    describe_gauge!(BUILD_INFO, "Build information");
}

/// Metric handles registered once and cloned into tasks, so hot paths skip the registry.
#[derive(Clone)]
pub struct HotMetrics {
    pub frames_out: Counter,
    pub bytes_out: Counter,
    pub bytes_in: Counter,
    pub deltas: Counter,
    pub deliveries: Counter,
    pub ops_accepted: Counter,
    pub fanout_seconds: Histogram,
    pub outbox_depth: Histogram,
    /// `gamerelay_frames_received_total{kind}` for the hot kinds.
    pub frames_in_ops: Counter,
    pub frames_in_ping: Counter,
}

impl HotMetrics {
    /// Registers the handles (installing the recorder if needed).
    pub fn new() -> HotMetrics {
        prometheus();
        HotMetrics {
            frames_out: metrics::counter!(names::FRAMES_OUT),
            bytes_out: metrics::counter!(names::BYTES_OUT),
            bytes_in: metrics::counter!(names::BYTES_IN),
            deltas: metrics::counter!(names::DELTAS),
            deliveries: metrics::counter!(names::DELIVERIES),
            ops_accepted: metrics::counter!(names::OPS_ACCEPTED),
            fanout_seconds: metrics::histogram!(names::FANOUT_SECONDS),
            outbox_depth: metrics::histogram!(names::OUTBOX_DEPTH),
            frames_in_ops: metrics::counter!(names::FRAMES_IN, "kind" => "ops"),
            frames_in_ping: metrics::counter!(names::FRAMES_IN, "kind" => "ping"),
        }
    }
}

impl Default for HotMetrics {
    fn default() -> Self {
        HotMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn render_has_process_metrics_and_rare_counters_at_zero() {
        let text = super::render();
        for name in [
            names::PROCESS_CPU_SECONDS,
            names::PROCESS_RESIDENT_MEMORY,
            names::PROCESS_OPEN_FDS,
            names::PROCESS_MAX_FDS,
            names::PROCESS_START_TIME,
            names::PROCESS_THREADS,
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} is not rendered:\n{text}");
        }
        for op in names::REDIS_OPS {
            let series = format!("{}{{op=\"{op}\"}}", names::REDIS_ERRORS);
            assert!(text.contains(&series), "{series} is not rendered:\n{text}");
        }
        for op in names::FENCING_OPS {
            let series = format!("{}{{op=\"{op}\"}}", names::FENCING_REJECTIONS);
            assert!(text.contains(&series), "{series} is not rendered:\n{text}");
        }
        for name in [names::HANDOFFS, names::SLOW_CONSUMERS, names::RESYNCS] {
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name} is not rendered:\n{text}");
        }
    }

    #[test]
    fn every_rendered_metric_is_a_named_constant() {
        // Rendered families (histograms as their base name) must all be in `names::ALL`, so
        // nothing reaches /metrics undocumented.
        let text = super::render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let family = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(names::ALL.contains(&family), "{family} is rendered but not in names::ALL");
        }
    }
}
