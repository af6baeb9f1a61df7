#!/usr/bin/env python3
"""Generates the Grafana dashboards in grafana/dashboards/ (Python 3.8+, standard library only).

    python3 grafana/generate.py            write the dashboards
    python3 grafana/generate.py --check    exit 1 if a committed dashboard differs from what
                                           this script generates (scripts/test runs this)

The dashboards query Prometheus's recording rules (prometheus/rules/) where one exists, and
the nodes' own series (docs/METRICS.md) otherwise; prometheus/tests/check_dashboards.py checks
that every name they use exists. Edit this file, not the JSON.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 11.0 - 11.2


class Layout:
    """Places panels left to right on Grafana's 24-column grid, rows full width."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self):
        self.next_id += 1
        return self.next_id - 1

    def row(self, title):
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": not instant}
    if instant:
        t["instant"] = True
    return t


def targets(queries, instant=False):
    return [target(q[0], q[1], chr(ord("A") + i), instant) for i, q in enumerate(queries)]


def timeseries(title, description, queries, unit="short", stack=False, min0=True, legend_table=False):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            # A table legend sorted by the maximum puts the few series that moved first
            # (e.g. one error code of the 19 registered at zero).
            "legend": (
                {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["max", "lastNotNull"], "sortBy": "Max", "sortDesc": True}
                if legend_table
                else {"displayMode": "list", "placement": "bottom", "showLegend": True}
            ),
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, description, expr, unit="short", thresholds=None, legend=""):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets([(expr, legend)], instant=True),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
    }


def red_below(limit):
    return [{"color": "red", "value": None}, {"color": "green", "value": limit}]


def red_above(limit):
    return [{"color": "green", "value": None}, {"color": "red", "value": limit}]


def datasource_var():
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_var(name, label, query, multi, include_all):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "hide": 0,
        "regex": "",
    }


def dashboard(uid, title, description, variables, layout, links):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["gamerelay"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "version": 1,
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": links,
        "panels": layout.panels,
    }


J = '{job=~"$job"}'


def overview():
    L = Layout()
    L.row("Fleet health")
    L.add(
        stat(
            "Nodes up",
            "Nodes whose /metrics answers (Prometheus `up`). Alert: GamerelayNodeDown.",
            'sum(up{job=~"$job"})',
            thresholds=red_below(1),
        ),
        4,
        4,
    )
    L.add(
        stat(
            "Nodes ready in HAProxy",
            "Servers up in HAProxy's ws_any backend (passing /readyz). Empty without an HAProxy target. Alert: HaproxyNoReadyNode.",
            'max(haproxy_backend_active_servers{job="haproxy", proxy="ws_any"})',
            thresholds=red_below(1),
        ),
        4,
        4,
    )
    L.add(stat("Connections", "Open WebSocket connections, fleet.", "sum(job:gamerelay_connections:sum" + J + ")"), 4, 4)
    L.add(stat("Rooms", "Live rooms, fleet.", "sum(job:gamerelay_rooms:sum" + J + ")"), 4, 4)
    L.add(stat("Players", "Players in rooms (connected or within the reconnect grace), fleet.", "sum(job:gamerelay_players:sum" + J + ")"), 4, 4)
    L.add(
        stat(
            "Fan-out p99",
            "Op received -> delta queued to every member, 99th percentile over the fleet (1 m). Alert above 100 ms.",
            "max(job:gamerelay_fanout_latency_seconds:p99_1m" + J + ")",
            unit="s",
            thresholds=red_above(0.1),
        ),
        4,
        4,
    )

    L.row("Connections and rooms")
    L.add(timeseries("Connections by node", "Open WebSocket connections per node.", [("instance:gamerelay_connections:sum" + J, "{{instance}}")], stack=True), 8, 8)
    L.add(timeseries("Rooms by node", "Live rooms per node.", [("instance:gamerelay_rooms:sum" + J, "{{instance}}")], stack=True), 8, 8)
    L.add(timeseries("Players by node", "Players per node.", [("instance:gamerelay_players:sum" + J, "{{instance}}")], stack=True), 8, 8)
    L.add(
        timeseries(
            "Connections opened and closed",
            "Connections accepted, and closed by reason (the close reason sent, or client_closed / client_gone / socket_error), per second, fleet.",
            [
                ("sum(instance:gamerelay_connections_opened:rate1m" + J + ")", "opened"),
                ("sum by (reason) (instance_reason:gamerelay_connections_closed:rate1m" + J + ")", "closed: {{reason}}"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Joins by outcome",
            "Joins per second: new players, resumes served with the missed deltas or with a snapshot, refusals.",
            [("job_outcome:gamerelay_joins:rate1m" + J, "{{outcome}}")],
            unit="ops",
        ),
        12,
        8,
    )

    L.row("Throughput")
    L.add(
        timeseries(
            "Deliveries per second",
            "Messages queued to members (one per member per delta, presence or msg), fleet and per node.",
            [("sum(job:gamerelay_deliveries:rate1m" + J + ")", "fleet"), ("instance:gamerelay_deliveries:rate1m" + J, "{{instance}}")],
            unit="ops",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Op batches accepted and rejected",
            "Op batches applied, and rejected by error code (every code is registered at zero), per second, fleet.",
            [
                ("sum(job:gamerelay_op_batches_accepted:rate1m" + J + ")", "accepted"),
                ("sum by (code) (job_code:gamerelay_op_batches_rejected:rate1m" + J + ")", "rejected: {{code}}"),
            ],
            unit="ops",
            legend_table=True,
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Deltas per second",
            "Deltas sequenced by the rooms each node owns.",
            [("sum(job:gamerelay_deltas:rate1m" + J + ")", "fleet"), ("instance:gamerelay_deltas:rate1m" + J, "{{instance}}")],
            unit="ops",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Socket bytes per second",
            "Bytes written to (out) and read from (in) client sockets, per node.",
            [
                ("instance:gamerelay_sent_bytes:rate1m" + J, "out {{instance}}"),
                ("instance:gamerelay_received_bytes:rate1m" + J, "in {{instance}}"),
            ],
            unit="Bps",
        ),
        24,
        7,
    )

    L.row("Latency")
    L.add(
        timeseries(
            "Fan-out latency (fleet)",
            "Op batch received by the session -> its delta queued to every member, from the histogram (1 m). Buckets end at 1 s.",
            [
                ("job:gamerelay_fanout_latency_seconds:p50_1m" + J, "p50"),
                ("job:gamerelay_fanout_latency_seconds:p99_1m" + J, "p99"),
            ],
            unit="s",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Fan-out p99 by node",
            "99th percentile of fan-out latency per node (1 m).",
            [("instance:gamerelay_fanout_latency_seconds:p99_1m" + J, "{{instance}}")],
            unit="s",
        ),
        12,
        8,
    )

    L.row("Redis (cluster mode)")
    L.add(
        timeseries(
            "Redis latency by op",
            "One backplane operation against Redis as the caller waited for it, p50 and p99 over the fleet (1 m), by op.",
            [
                ("job_op:gamerelay_redis_op_duration_seconds:p50_1m" + J, "p50 {{op}}"),
                ("job_op:gamerelay_redis_op_duration_seconds:p99_1m" + J, "p99 {{op}}"),
            ],
            unit="s",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Redis errors by op",
            "Failed Redis round trips per second, fleet, by op. Alert: GamerelayRedisErrors.",
            [("job_op:gamerelay_redis_errors:rate1m" + J, "{{op}}")],
            unit="ops",
        ),
        12,
        8,
    )

    L.row("Player experience")
    L.add(
        timeseries(
            "Resyncs, slow consumers, drops",
            "Members that fell behind: resync snapshots sent, members closed with 4102 (slow consumer), messages dropped at a full outbound queue; per second, fleet. Alert: GamerelaySlowConsumers.",
            [
                ("job:gamerelay_resyncs:rate1m" + J, "resyncs"),
                ("job:gamerelay_slow_consumer_disconnects:rate1m" + J, "slow-consumer disconnects"),
                ("job:gamerelay_outbox_dropped:rate1m" + J, "outbox drops"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Outbound queue depth",
            "Frames waiting in a connection's outbound queue when its writer wakes up, p50 and p99 over the fleet: how far behind the sockets run (the queue holds --outbox-frames; a full one means a resync).",
            [
                ("histogram_quantile(%s, sum by (le) (rate(gamerelay_outbox_depth_frames_bucket" % q + J + "[$__rate_interval])))", "p" + p)
                for q, p in (("0.5", "50"), ("0.99", "99"))
            ],
            unit="short",
        ),
        12,
        8,
    )

    L.row("Limits and authentication")
    L.add(
        timeseries(
            "Limit hits by limit",
            "Times a limit was hit, per second, fleet, by limit (docs/SECURITY.md lists each: rates, connections per address, frame and state sizes, overload shedding, ...). Alert: GamerelayShedding.",
            [("sum by (limit) (rate(gamerelay_limit_hits_total" + J + "[$__rate_interval]))", "{{limit}}")],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Refused join tokens by reason",
            "Joins refused for their token (then closed with 4003), per second, fleet, by reason: missing, invalid, expired, room_not_allowed. Alert: GamerelayAuthFailures.",
            [("sum by (reason) (rate(gamerelay_auth_failures_total" + J + "[$__rate_interval]))", "{{reason}}")],
            unit="ops",
        ),
        12,
        8,
    )

    L.row("Game backend")
    L.add(
        timeseries(
            "join_or_create choices",
            "join_or_create calls per second, fleet, by outcome: a seat in an open listed room (existing) or a new listed room (created). Mostly created with few players each: seats are not being filled (docs/ADMIN.md).",
            [("sum by (outcome) (rate(gamerelay_join_or_create_total" + J + "[$__rate_interval]))", "{{outcome}}")],
            unit="ops",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Admin API requests",
            "Admin API requests per second, fleet, by outcome: ok, error (an error status), unauthorized (missing or wrong token), disabled (no --admin-token). Alert: GamerelayAdminUnauthorized.",
            [("sum by (outcome) (rate(gamerelay_admin_requests_total" + J + "[$__rate_interval]))", "{{outcome}}")],
            unit="reqps",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Webhook deliveries",
            "Webhook delivery attempts per second, fleet, by outcome (delivered, retried, failed: given up after every retry), and events dropped from a full queue. Alert: GamerelayWebhooksFailing.",
            [
                ("sum by (outcome) (rate(gamerelay_webhook_deliveries_total" + J + "[$__rate_interval]))", "{{outcome}}"),
                ("sum(rate(gamerelay_webhook_events_dropped_total" + J + "[$__rate_interval]))", "dropped"),
            ],
            unit="ops",
        ),
        8,
        8,
    )

    L.row("Failovers")
    L.add(
        timeseries(
            "Room claims and handoffs",
            "Rooms claimed (new, or restored from Redis after a move), and rooms handed off because their node was fenced or a commit failed; per second, fleet. Alert: GamerelayHandoffsRising.",
            [
                ("job_outcome:gamerelay_room_claims:rate1m" + J, "claimed: {{outcome}}"),
                ("job:gamerelay_room_handoffs:rate1m" + J, "handed off"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Fencing by op",
            "Times a node was fenced off a room it owned, per second, by op (commit, snapshot, renew, renew_timeout). Alert: GamerelayFencingRising.",
            [("job_op:gamerelay_fencing_rejections:rate1m" + J, "{{op}}")],
            unit="ops",
        ),
        12,
        8,
    )

    L.row("Process")
    L.add(timeseries("CPU by node", "CPU cores used by each node process (whole-second counter: read over minutes).", [("instance:process_cpu_seconds:rate1m" + J, "{{instance}}")], unit="none"), 8, 8)
    L.add(timeseries("Resident memory by node", "RSS of each node process.", [("instance:process_resident_memory_bytes:max" + J, "{{instance}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Open file descriptors by node", "Open descriptors (one per connection, plus a few). Alert at 80 % of the limit.", [("instance:process_open_fds:max" + J, "{{instance}}")]), 8, 8)

    variables = [
        datasource_var(),
        query_var("job", "Job", "label_values(gamerelay_build_info, job)", multi=True, include_all=True),
    ]
    links = [{"title": "Node", "type": "dashboards", "tags": ["gamerelay"], "asDropdown": True, "includeVars": True, "keepTime": True}]
    return dashboard(
        "gamerelay-overview",
        "gamerelay / Overview",
        "The fleet at a glance: health, population, throughput, latency, Redis, player experience, limits and authentication, game backend, failovers, processes.",
        variables,
        L,
        links,
    )


def node():
    I = '{job=~"$job", instance=~"$instance"}'
    L = Layout()
    L.row("Node")
    L.add(
        {
            **stat("Version", "gamerelay_build_info: version and --node-id of the selected node.", "gamerelay_build_info" + I, legend="{{node}} {{version}}"),
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "none",
                "graphMode": "none",
                "justifyMode": "auto",
                "textMode": "name",
                "orientation": "auto",
            },
        },
        6,
        4,
    )
    L.add(stat("Up", "Prometheus scrape of this node succeeds.", "up" + I, thresholds=red_below(1)), 3, 4)
    L.add(stat("Uptime", "Since the process started.", "time() - process_start_time_seconds" + I, unit="s"), 3, 4)
    L.add(stat("Connections", "Open WebSocket connections.", "sum(gamerelay_connections" + I + ")"), 4, 4)
    L.add(stat("Rooms", "Live rooms.", "sum(gamerelay_rooms" + I + ")"), 4, 4)
    L.add(stat("Players", "Players in rooms.", "sum(gamerelay_players" + I + ")"), 4, 4)

    L.row("Traffic")
    L.add(
        timeseries(
            "Frames received by kind",
            "Frames received per second, by message kind (or invalid).",
            [("sum by (kind) (rate(gamerelay_frames_received_total" + I + "[$__rate_interval]))", "{{kind}}")],
            unit="ops",
            stack=True,
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Frames sent and deliveries",
            "Frames written to sockets and messages queued to members, per second.",
            [
                ("sum(rate(gamerelay_frames_sent_total" + I + "[$__rate_interval]))", "frames sent"),
                ("sum(rate(gamerelay_deliveries_total" + I + "[$__rate_interval]))", "deliveries"),
                ("sum(rate(gamerelay_deltas_total" + I + "[$__rate_interval]))", "deltas"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Ops rejected by code",
            "Op batches rejected per second, by error code; duplicates are retried cids answered with their first ack.",
            [
                ("sum by (code) (rate(gamerelay_op_batches_rejected_total" + I + "[$__rate_interval]))", "{{code}}"),
                ("sum(rate(gamerelay_op_batches_duplicate_total" + I + "[$__rate_interval]))", "duplicates"),
            ],
            unit="ops",
            legend_table=True,
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Delta, state and snapshot size p99",
            "Encoded delta size and room state size at snapshots sent to clients, 99th percentile, by room type; room snapshots written to Redis (cluster mode).",
            [
                ("histogram_quantile(0.99, sum by (type, le) (rate(gamerelay_delta_size_bytes_bucket" + I + "[$__rate_interval])))", "delta {{type}}"),
                ("histogram_quantile(0.99, sum by (type, le) (rate(gamerelay_state_size_bytes_bucket" + I + "[$__rate_interval])))", "state {{type}}"),
                ("histogram_quantile(0.99, sum by (le) (rate(gamerelay_snapshot_size_bytes_bucket" + I + "[$__rate_interval])))", "Redis snapshot"),
            ],
            unit="bytes",
        ),
        12,
        8,
    )

    L.row("Latency")
    L.add(
        timeseries(
            "Fan-out latency",
            "Op received -> delta queued to every member: p50, p90, p99.",
            [
                ("histogram_quantile(%s, sum by (le) (rate(gamerelay_fanout_latency_seconds_bucket" % q + I + "[$__rate_interval])))", "p" + p)
                for q, p in (("0.5", "50"), ("0.9", "90"), ("0.99", "99"))
            ],
            unit="s",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Redis p99 by op",
            "One backplane operation against Redis as the caller waited for it, p99 by op; snapshot writes as the room saw them.",
            [
                ("histogram_quantile(0.99, sum by (op, le) (rate(gamerelay_redis_op_duration_seconds_bucket" + I + "[$__rate_interval])))", "{{op}}"),
                ("histogram_quantile(0.99, sum by (le) (rate(gamerelay_snapshot_duration_seconds_bucket" + I + "[$__rate_interval])))", "room snapshot"),
            ],
            unit="s",
        ),
        12,
        8,
    )

    L.row("Errors and failovers")
    L.add(
        timeseries(
            "Redis errors and fencing",
            "Failed Redis round trips and fencings, per second, by op.",
            [
                ("sum by (op) (rate(gamerelay_redis_errors_total" + I + "[$__rate_interval]))", "error {{op}}"),
                ("sum by (op) (rate(gamerelay_fencing_rejections_total" + I + "[$__rate_interval]))", "fenced {{op}}"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Players falling behind",
            "Resyncs, slow-consumer disconnects, outbox drops, expired sessions and malformed frames, per second.",
            [
                ("sum(rate(gamerelay_resyncs_total" + I + "[$__rate_interval]))", "resyncs"),
                ("sum(rate(gamerelay_slow_consumer_disconnects_total" + I + "[$__rate_interval]))", "slow consumers"),
                ("sum(rate(gamerelay_outbox_dropped_total" + I + "[$__rate_interval]))", "outbox drops"),
                ("sum(rate(gamerelay_sessions_expired_total" + I + "[$__rate_interval]))", "sessions expired"),
                ('sum(rate(gamerelay_frames_received_total{job=~"$job", instance=~"$instance", kind="invalid"}[$__rate_interval]))', "malformed frames"),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Rooms created, disposed, claimed, handed off",
            "Per second, by room type (created, disposed) and outcome (claimed).",
            [
                ("sum by (type) (rate(gamerelay_rooms_created_total" + I + "[$__rate_interval]))", "created {{type}}"),
                ("sum by (type) (rate(gamerelay_rooms_disposed_total" + I + "[$__rate_interval]))", "disposed {{type}}"),
                ("sum by (outcome) (rate(gamerelay_room_claims_total" + I + "[$__rate_interval]))", "claimed {{outcome}}"),
                ("sum(rate(gamerelay_room_handoffs_total" + I + "[$__rate_interval]))", "handed off"),
            ],
            unit="ops",
        ),
        24,
        8,
    )

    L.row("Limits and authentication")
    L.add(
        timeseries(
            "Limit hits by limit",
            "Times a limit was hit on this node, per second, by limit (docs/SECURITY.md).",
            [("sum by (limit) (rate(gamerelay_limit_hits_total" + I + "[$__rate_interval]))", "{{limit}}")],
            unit="ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Refused join tokens by reason",
            "Joins refused for their token on this node, per second, by reason.",
            [("sum by (reason) (rate(gamerelay_auth_failures_total" + I + "[$__rate_interval]))", "{{reason}}")],
            unit="ops",
        ),
        12,
        8,
    )

    L.row("Process")
    L.add(timeseries("CPU", "CPU cores used (whole-second counter: read over minutes).", [("rate(process_cpu_seconds_total" + I + "[2m])", "cores")], unit="none"), 6, 8)
    L.add(
        timeseries(
            "Memory",
            "Resident and virtual memory.",
            [("process_resident_memory_bytes" + I, "resident"), ("process_virtual_memory_bytes" + I, "virtual")],
            unit="bytes",
        ),
        6,
        8,
    )
    L.add(
        timeseries(
            "File descriptors",
            "Open descriptors against the limit.",
            [("process_open_fds" + I, "open"), ("process_max_fds" + I, "limit")],
        ),
        6,
        8,
    )
    L.add(timeseries("Threads", "OS threads.", [("process_threads" + I, "threads")]), 6, 8)

    variables = [
        datasource_var(),
        query_var("job", "Job", "label_values(gamerelay_build_info, job)", multi=True, include_all=True),
        query_var("instance", "Node", 'label_values(gamerelay_build_info{job=~"$job"}, instance)', multi=False, include_all=False),
    ]
    links = [{"title": "Overview", "type": "dashboards", "tags": ["gamerelay"], "asDropdown": True, "includeVars": True, "keepTime": True}]
    return dashboard(
        "gamerelay-node",
        "gamerelay / Node",
        "One node in detail: traffic, latency, Redis, errors, failovers, process.",
        variables,
        L,
        links,
    )


DASHBOARDS = {"gamerelay-overview.json": overview, "gamerelay-node.json": node}


def render(build):
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv):
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
            print("wrote", path)
    if stale:
        print("out of date (run python3 grafana/generate.py):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
