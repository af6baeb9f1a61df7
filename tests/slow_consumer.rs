//! Slow consumers: a client that reads slowly or not at all has bounded memory on the node,
//! gets a catch-up `resync` instead of a backlog, is closed only past the slow-consumer
//! deadline, and never slows the rest of its room.
#![cfg(feature = "server")]

mod common;

use common::{set, Mirror, Raw, TestServer};
use gamerelay::protocol::ServerMsg;

/// Enough delta bytes to fill the kernel's socket buffers many times over.
const BATCHES: u64 = 600;
const PAYLOAD: usize = 48 * 1024;

/// A writes in lockstep with its own echoes: a fast member gets every one of them while
/// the other member stalls.
async fn flood(a: &mut Raw) {
    for cid in 1..=BATCHES {
        a.ops(cid, vec![set("blob", "x".repeat(PAYLOAD)), set("n", cid as i32)]).await;
        a.until(|m| matches!(m, ServerMsg::Delta(d) if d.cid == Some(cid)).then_some(())).await;
    }
}

#[tokio::test]
async fn a_member_that_fell_behind_catches_up_with_one_resync_and_converges() {
    let server = TestServer::start(&["--outbox-frames", "8", "--slow-consumer-timeout-ms", "60000"]).await;
    let (mut a, _) = Raw::joined(&server, "slow", "doc").await;
    let (mut b, b_info) = Raw::joined(&server, "slow", "doc").await;
    flood(&mut a).await;
    // B reads only now. Somewhere in its stream a resync replaces the deltas it missed.
    let mut mirror = Mirror::from_snapshot(b_info.snapshot.as_ref().expect("snapshot"));
    let mut resyncs = 0;
    let mut deltas = 0;
    while mirror.seq < BATCHES {
        match b.msg().await {
            ServerMsg::Delta(d) if d.seq > mirror.seq => {
                mirror.apply(&d);
                deltas += 1;
            }
            ServerMsg::Resync { snapshot, cid, .. } => {
                assert!(snapshot.seq > mirror.seq, "a resync jumps forward");
                assert_eq!(cid, 0, "B sent no ops");
                mirror = Mirror::from_snapshot(&snapshot);
                resyncs += 1;
            }
            _ => {}
        }
    }
    assert!(resyncs >= 1, "the lagging member got a resync");
    assert!(deltas < BATCHES, "it did not get the whole backlog ({deltas} deltas)");
    let (_c, truth) = Raw::joined(&server, "slow", "doc").await;
    assert_eq!(mirror.state.state_hash(), truth.snapshot.expect("snapshot").hash);
    server.stop().await;
}

#[tokio::test]
async fn a_member_that_stops_reading_is_closed_after_the_deadline_and_may_resume() {
    let server = TestServer::start(&["--outbox-frames", "8", "--slow-consumer-timeout-ms", "200"]).await;
    let (mut a, _) = Raw::joined(&server, "stalled", "doc").await;
    let (mut b, b_info) = Raw::joined(&server, "stalled", "doc").await;
    flood(&mut a).await;
    // B's stream ends: with 4102 if the close frame got through its full socket, or by
    // the socket being shut (1006) if it did not.
    let (code, _) = b.closed().await;
    assert!(code == 4102 || code == 1006, "closed with {code}");
    // It may resume within the grace.
    let mut b = Raw::connect(&server).await;
    b.hello().await;
    let resumed = b
        .join(gamerelay::protocol::Join {
            session: Some(b_info.session),
            ..common::new_join("stalled", "doc")
        })
        .await;
    assert!(resumed.resumed);
    server.stop().await;
}
