//! CI smoke: every scenario runs briefly against a real node on a free port and reports
//! sane figures (the tool works end to end). No thresholds on speed: speed is measured in
//! BENCHMARKS.md, not here.

use std::process::Command;

use gamerelay::config::Config;
use gamerelay::server::Server;
use serde_json::Value;

/// Starts a node on a free loopback port; it stops when the test's runtime ends.
async fn node() -> String {
    let config =
        <Config as clap::Parser>::parse_from(["gamerelay", "--listen", "127.0.0.1:0", "--log", "warn"]);
    let server = Server::bind(config).await.expect("bind a node");
    let url = format!("ws://{}/ws", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    url
}

/// Runs `gamerelay-loadtest <args> --json` and returns its JSON report.
async fn run(args: Vec<String>) -> Value {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gamerelay-loadtest")).args(&args).arg("--json").output()
    })
    .await
    .expect("join")
    .expect("run gamerelay-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("no JSON report ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

fn args(list: &[&str], url: &str) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.extend(["--url".to_string(), url.to_string()]);
    v
}

fn errors(report: &Value) -> u64 {
    report["errors"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arena_delivers_and_measures_latency() {
    let url = node().await;
    let r = run(args(&["arena", "--rooms", "2", "--players", "4", "--duration", "2", "--warmup", "1"], &url))
        .await;
    assert_eq!(errors(&r), 0, "{r}");
    assert!(r["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().is_some_and(|p| p > 0.0), "{r}");
}

#[tokio::test]
async fn arena_probe_mode_measures_latency_from_probes_only() {
    let url = node().await;
    let r = run(args(
        &["arena", "--rooms", "2", "--players", "4", "--probes", "1", "--duration", "2", "--warmup", "1"],
        &url,
    ))
    .await;
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!(r["probes_per_room"], 1, "{r}");
    // Everyone still sends and receives: 2 rooms x 4 x 4 x 20 Hz.
    assert_eq!(r["expected_deliveries_per_sec"].as_f64(), Some(640.0), "{r}");
    assert!(r["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 320.0, "{r}");
    // Samples come from one player per room: at most 2 x 20 Hz x 2 s (+ one per phase edge).
    let samples = r["latency_ms"]["samples"].as_u64().unwrap_or(0);
    assert!((1..=84).contains(&samples), "{samples} samples: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_joins_everyone() {
    let url = node().await;
    let r = run(args(&["join-storm", "-n", "64", "--players", "8"], &url)).await;
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!(r["joined"].as_u64(), Some(64), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_resumes_everyone_correctly() {
    let url = node().await;
    let r = run(args(&["reconnect-storm", "-n", "48", "--players", "8", "--warmup", "1"], &url)).await;
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!(r["resumed"].as_u64(), Some(48), "{r}");
    assert_eq!(r["correctness"]["ok"].as_u64(), Some(48), "every mirror equals its room: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_its_connections() {
    let url = node().await;
    let r = run(args(&["idle", "-n", "100", "--duration", "1"], &url)).await;
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!(r["held"].as_u64(), Some(100), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_reader() {
    let url = node().await;
    let r =
        run(args(&["fanout", "--rooms", "1", "--readers", "8", "--duration", "2", "--warmup", "1"], &url))
            .await;
    assert_eq!(errors(&r), 0, "{r}");
    assert!(r["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
}
