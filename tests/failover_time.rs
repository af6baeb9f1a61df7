//! Measures (does not assert) how long a room is unavailable after its owner is killed with
//! `kill -9`: from the kill to the first op acknowledged again, for a player on a surviving
//! node that keeps sending. A benchmark, not a test: ignored by default. Run with
//!
//! ```text
//! cargo test --release --test failover_time -- --ignored --nocapture
//! ```
//!
//! and see BENCHMARKS.md for recorded figures.
#![cfg(feature = "server")]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::cluster::{tools_available, wait_for, Cluster, Tool};
use support::player::{inc, Player};

const RUNS: usize = 5;

async fn one_run(lease_ttl_ms: u64, run: usize) -> Duration {
    let ttl = lease_ttl_ms.to_string();
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", &ttl]).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let room = format!("failover-{lease_ttl_ms}-{run}");
    // The owner is node-1 (first join); the measuring player sits on node-2.
    let owner = Player::join("owner-side", &urls[..1], &room, "doc").await;
    let mut b = Player::join("B", &urls[1..], &room, "doc").await;
    let progress = b.progress();
    let task = tokio::spawn(async move {
        b.stream(usize::MAX / 2, 1, Duration::from_secs(60), |_| vec![inc("n", 1)]).await;
    });
    let p = &progress;
    wait_for("B streaming", Duration::from_secs(10), || async move {
        (p.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    owner.abandon();
    cluster.nodes[0].kill9();
    let killed = Instant::now();
    // Acks already in flight from the dead owner arrive within a few ms; after that, the next
    // ack comes from the room's new owner.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = progress.load(Ordering::SeqCst);
    wait_for("an ack from the new owner", Duration::from_secs(30), || async move {
        (p.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    let took = killed.elapsed();
    task.abort();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly, see the module docs"]
async fn measure_time_from_owner_kill_to_room_served_again() {
    if !tools_available(&[Tool::RedisServer]) {
        return;
    }
    for ttl in [1000u64, 3000] {
        let mut times = Vec::new();
        for run in 0..RUNS {
            times.push(one_run(ttl, run).await);
        }
        times.sort();
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        println!(
            "lease_ttl_ms={ttl} runs={RUNS} kill->served ms: median={} min={} max={} all={ms:?}",
            ms[RUNS / 2],
            ms[0],
            ms[RUNS - 1]
        );
    }
}
