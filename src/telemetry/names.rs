//! Every metric name, as a constant, so dashboards and alerts can be grepped against code.
//! `docs/METRICS.md` describes each one. Labels never carry room or player ids.

/// Gauge: open WebSocket connections.
pub const CONNECTIONS: &str = "gamerelay_connections";
/// Counter: connections accepted.
pub const CONNECTIONS_OPENED: &str = "gamerelay_connections_opened_total";
/// Counter: connections closed, by `reason` (the close reason sent, e.g. `replaced`, or
/// `client_closed`, `client_gone`, `socket_error` when the client ended it).
pub const CONNECTIONS_CLOSED: &str = "gamerelay_connections_closed_total";
/// Counter: upgrades refused because `--max-connections` was reached.
pub const CONNECTIONS_REFUSED: &str = "gamerelay_connections_refused_total";
/// Gauge: live rooms on this node.
pub const ROOMS: &str = "gamerelay_rooms";
/// Counter: rooms created, by `type`.
pub const ROOMS_CREATED: &str = "gamerelay_rooms_created_total";
/// Counter: rooms disposed, by `type`.
pub const ROOMS_DISPOSED: &str = "gamerelay_rooms_disposed_total";
/// Gauge: players in rooms on this node (connected or within grace).
pub const PLAYERS: &str = "gamerelay_players";
/// Counter: frames received, by `kind` (the message `t`, or `invalid`).
pub const FRAMES_IN: &str = "gamerelay_frames_received_total";
/// Counter: bytes received in binary frames.
pub const BYTES_IN: &str = "gamerelay_received_bytes_total";
/// Counter: frames written to sockets.
pub const FRAMES_OUT: &str = "gamerelay_frames_sent_total";
/// Counter: bytes written to sockets (frame payloads).
pub const BYTES_OUT: &str = "gamerelay_sent_bytes_total";
/// Counter: op batches applied.
pub const OPS_ACCEPTED: &str = "gamerelay_op_batches_accepted_total";
/// Counter: op batches rejected, by `code`.
pub const OPS_REJECTED: &str = "gamerelay_op_batches_rejected_total";
/// Counter: retried cids answered with their original ack (exactly-once at work).
pub const OPS_DUPLICATE: &str = "gamerelay_op_batches_duplicate_total";
/// Counter: deltas sequenced by rooms owned here.
pub const DELTAS: &str = "gamerelay_deltas_total";
/// Counter: messages queued to members (one per member per delta/presence/msg).
pub const DELIVERIES: &str = "gamerelay_deliveries_total";
/// Histogram (seconds): op batch received by the session -> its delta queued to every member.
pub const FANOUT_SECONDS: &str = "gamerelay_fanout_latency_seconds";
/// Histogram (bytes): encoded size of each delta, by `type`.
pub const DELTA_BYTES: &str = "gamerelay_delta_size_bytes";
/// Histogram (bytes): room state size at each snapshot sent to a client, by `type`.
pub const STATE_BYTES: &str = "gamerelay_state_size_bytes";
/// Counter: joins, by `outcome` (`new`, `resumed_deltas`, `resumed_snapshot`, `refused`).
pub const JOINS: &str = "gamerelay_joins_total";
/// Counter: `join_or_create` choices, by `outcome` (`existing`: a seat in an open listed
/// room; `created`: a new listed room).
pub const JOIN_OR_CREATE: &str = "gamerelay_join_or_create_total";
/// Counter: admin API requests, by `outcome` (`ok`, `error`: answered with an error
/// status, `unauthorized`: wrong or missing token, `disabled`: no --admin-token).
pub const ADMIN_REQUESTS: &str = "gamerelay_admin_requests_total";
/// Counter: sessions that expired at the end of the reconnect grace.
pub const SESSIONS_EXPIRED: &str = "gamerelay_sessions_expired_total";
/// Counter: connections closed because a newer connection resumed their session.
pub const SESSIONS_REPLACED: &str = "gamerelay_sessions_replaced_total";
/// Counter: messages dropped because a member's outbound queue was full.
pub const OUTBOX_DROPPED: &str = "gamerelay_outbox_dropped_total";
/// Counter: `resync` snapshots sent to members that fell behind.
pub const RESYNCS: &str = "gamerelay_resyncs_total";
/// Counter: members closed with 4102 after lagging past the slow-consumer timeout.
pub const SLOW_CONSUMERS: &str = "gamerelay_slow_consumer_disconnects_total";
/// Counter: malformed frames, by `code`.
pub const BAD_FRAMES: &str = "gamerelay_bad_frames_total";
/// Histogram (seconds): writing one room snapshot to the backplane (cluster mode).
pub const SNAPSHOT_SECONDS: &str = "gamerelay_snapshot_duration_seconds";
/// Histogram (bytes): one room snapshot as written to Redis (cluster mode).
pub const SNAPSHOT_BYTES: &str = "gamerelay_snapshot_size_bytes";
/// Histogram (frames): a connection's outbound queue depth each time its writer wakes up.
pub const OUTBOX_DEPTH: &str = "gamerelay_outbox_depth_frames";
/// Counter: rooms claimed (ownership taken) by this node, by `outcome` (`new`, `restored`).
pub const CLAIMS: &str = "gamerelay_room_claims_total";
/// Counter: rooms this node stopped owning because it was fenced or a commit failed.
pub const HANDOFFS: &str = "gamerelay_room_handoffs_total";
/// Histogram (seconds): one Redis round trip of the backplane (a script or command), by `op`
/// (one of [`REDIS_OPS`]), whatever its outcome (fencing refusals and failures included).
pub const REDIS_SECONDS: &str = "gamerelay_redis_op_duration_seconds";
/// Counter: Redis round trips of the backplane that failed (unreachable, timed out, or an
/// error other than a fencing refusal), by `op` (one of [`REDIS_OPS`]). Every failed attempt
/// counts, also one that a retry then recovered.
pub const REDIS_ERRORS: &str = "gamerelay_redis_errors_total";
/// Counter: times this node was fenced off a room it owned, by `op` (one of
/// [`FENCING_OPS`]): `commit`/`snapshot` when Redis refused a write (lease, epoch or head no
/// longer ours), `renew` when a renewal found the lease or epoch taken, `renew_timeout` when
/// the lease could not be renewed within two thirds of its TTL (fenced locally, before it can
/// expire in Redis).
pub const FENCING_REJECTIONS: &str = "gamerelay_fencing_rejections_total";
/// Counter: times a limit was hit, by `limit` (one of `limits::LIMITS`, e.g. `ops_rate`,
/// `connections_per_ip`, `overload`; docs/SECURITY.md lists each).
pub const LIMIT_HITS: &str = "gamerelay_limit_hits_total";
/// Counter: joins refused for their join token, by `reason` (`missing`, `invalid`,
/// `expired`, `room_not_allowed`).
pub const AUTH_FAILURES: &str = "gamerelay_auth_failures_total";
/// Gauge (seconds): how late the node's runtime woke a task that asked to wake every 100 ms
/// (the latest sample): CPU saturation or a stalled process. Drives `--shed-lag-ms`.
pub const SCHEDULING_LAG: &str = "gamerelay_scheduling_lag_seconds";
/// Counter: webhook delivery attempts, by `outcome` (one of [`WEBHOOK_OUTCOMES`]):
/// `delivered` (a 2xx answer), `retried` (an attempt failed and will be retried), `failed`
/// (given up after `--webhook-max-attempts`, or at the end of the shutdown drain).
pub const WEBHOOK_DELIVERIES: &str = "gamerelay_webhook_deliveries_total";
/// Counter: webhook events dropped before any attempt (the queue was full, or the node was
/// shutting down).
pub const WEBHOOK_DROPPED: &str = "gamerelay_webhook_events_dropped_total";
/// Gauge: webhook events queued and not yet taken by the delivery task.
pub const WEBHOOK_QUEUE_DEPTH: &str = "gamerelay_webhook_queue_depth";
/// Histogram (seconds): one webhook POST, from sending to the answer (or error, timeout).
pub const WEBHOOK_SECONDS: &str = "gamerelay_webhook_delivery_seconds";
/// Gauge: 1, with labels `version` and `node`.
pub const BUILD_INFO: &str = "gamerelay_build_info";

/// Counter (seconds, from the `metrics-process` collector, refreshed at each scrape): user
/// and system CPU time of the process, in whole seconds.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge (bytes, `metrics-process`): resident memory (RSS).
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge (bytes, `metrics-process`): virtual memory size.
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Gauge (bytes, `metrics-process`): the address-space limit (`RLIMIT_AS`; 0 when unlimited).
pub const PROCESS_VIRTUAL_MEMORY_MAX: &str = "process_virtual_memory_max_bytes";
/// Gauge (`metrics-process`): open file descriptors (sockets included).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge (`metrics-process`): the file descriptor limit (`RLIMIT_NOFILE`; 0 when unlimited).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Gauge (seconds, `metrics-process`): process start time, Unix seconds.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// Gauge (`metrics-process`): OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

/// The `op` label values of [`REDIS_SECONDS`] and [`REDIS_ERRORS`]: the backplane's scripts
/// (`claim`, `commit`, `snapshot`, `renew`, `release`, `reseed`) and the renewer's `ping`
/// while the node owns no room, and `wait` (replicas after a commit, `--redis-wait-replicas`).
pub const REDIS_OPS: &[&str] = &[
    "claim",
    "commit",
    "snapshot",
    "renew",
    "release",
    "reseed",
    "ping",
    "wait",
    "lobby_register",
    "lobby_reserve",
    "lobby_take",
    "lobby_free",
    "lobby_remove",
    "lobby_get",
    "lobby_list",
];
/// The `op` label values of [`FENCING_REJECTIONS`].
pub const FENCING_OPS: &[&str] = &["commit", "snapshot", "renew", "renew_timeout"];
/// The `outcome` label values of [`WEBHOOK_DELIVERIES`].
pub const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "retried", "failed"];

/// Every metric name above, for documentation checks.
pub const ALL: &[&str] = &[
    CONNECTIONS,
    CONNECTIONS_OPENED,
    CONNECTIONS_CLOSED,
    CONNECTIONS_REFUSED,
    ROOMS,
    ROOMS_CREATED,
    ROOMS_DISPOSED,
    PLAYERS,
    FRAMES_IN,
    BYTES_IN,
    FRAMES_OUT,
    BYTES_OUT,
    OPS_ACCEPTED,
    OPS_REJECTED,
    OPS_DUPLICATE,
    DELTAS,
    DELIVERIES,
    FANOUT_SECONDS,
    DELTA_BYTES,
    STATE_BYTES,
    JOINS,
    JOIN_OR_CREATE,
    ADMIN_REQUESTS,
    SESSIONS_EXPIRED,
    SESSIONS_REPLACED,
    OUTBOX_DROPPED,
    RESYNCS,
    SLOW_CONSUMERS,
    BAD_FRAMES,
    SNAPSHOT_SECONDS,
    SNAPSHOT_BYTES,
    OUTBOX_DEPTH,
    CLAIMS,
    HANDOFFS,
    REDIS_SECONDS,
    REDIS_ERRORS,
    FENCING_REJECTIONS,
    LIMIT_HITS,
    AUTH_FAILURES,
    SCHEDULING_LAG,
    WEBHOOK_DELIVERIES,
    WEBHOOK_DROPPED,
    WEBHOOK_QUEUE_DEPTH,
    WEBHOOK_SECONDS,
    BUILD_INFO,
    PROCESS_CPU_SECONDS,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_VIRTUAL_MEMORY,
    PROCESS_VIRTUAL_MEMORY_MAX,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME,
    PROCESS_THREADS,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_documented_in_metrics_md() {
        let doc = include_str!("../../docs/METRICS.md");
        for name in super::ALL {
            assert!(doc.contains(&format!("`{name}`")), "{name} is missing from docs/METRICS.md");
        }
        for op in super::REDIS_OPS.iter().chain(super::FENCING_OPS) {
            assert!(doc.contains(&format!("`{op}`")), "op {op} is missing from docs/METRICS.md");
        }
        for outcome in super::WEBHOOK_OUTCOMES {
            assert!(
                doc.contains(&format!("`{outcome}`")),
                "outcome {outcome} is missing from docs/METRICS.md"
            );
        }
    }

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for name in super::ALL {
            assert!(seen.insert(name), "{name} is listed twice");
            assert!(
                name.starts_with("gamerelay_") || name.starts_with("process_"),
                "{name}: own metrics start with gamerelay_"
            );
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}: lower-case snake case only"
            );
            assert!(!name.ends_with("_milliseconds") && !name.ends_with("_ms"), "{name}: base units only");
        }
    }
}
