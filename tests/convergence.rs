//! G6 convergence, property-tested: after any interleaving of op batches from several
//! clients, every client's mirror (snapshot + deltas) has the server's state hash.
#![cfg(feature = "server")]

mod common;

use std::collections::HashSet;

use common::{Mirror, Raw, TestServer};
use gamerelay::protocol::{Doc, DocMap, Op, ServerMsg};
use proptest::prelude::*;

/// One op a client may send, on a small set of keys so clients collide.
#[derive(Debug, Clone)]
enum Action {
    Set(u8, i32),
    Inc(u8, i32),
    Del(u8),
    Merge(u8, Vec<(u8, Option<i32>)>),
    SetOwn(i32),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0..4u8, -100..100i32).prop_map(|(k, v)| Action::Set(k, v)),
        (0..4u8, -5..5i32).prop_map(|(k, v)| Action::Inc(k, v)),
        (0..4u8).prop_map(Action::Del),
        (0..4u8, prop::collection::vec((0..3u8, prop::option::of(0..9i32)), 0..3))
            .prop_map(|(k, f)| Action::Merge(k, f)),
        (-100..100i32).prop_map(Action::SetOwn),
    ]
}

fn to_op(action: &Action, me: &str) -> Op {
    match action {
        Action::Set(k, v) => Op::Set { path: format!("shared/k{k}"), value: Doc::from(*v) },
        Action::Inc(k, by) => Op::Inc { path: format!("shared/k{k}"), by: Doc::from(*by) },
        Action::Del(k) => Op::Del { path: format!("shared/k{k}") },
        Action::Merge(k, fields) => {
            let mut map = DocMap::new();
            for (f, v) in fields {
                map.insert(format!("f{f}"), v.map_or(Doc::Nil, Doc::from));
            }
            Op::Merge { path: format!("shared/k{k}"), value: Doc::Map(map) }
        }
        Action::SetOwn(v) => Op::Set { path: format!("players/{me}/v"), value: Doc::from(*v) },
    }
}

async fn run_case(batches: Vec<(usize, Vec<Action>)>) {
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (raw, info) = Raw::joined(&server, "prop", "doc").await;
        let mirror = Mirror::from_snapshot(info.snapshot.as_ref().expect("snapshot"));
        clients.push((raw, info, mirror, 0u64));
    }
    // Send every batch without waiting: the node sees a real interleaving of three sockets.
    for (who, actions) in &batches {
        let (raw, info, _, next_cid) = &mut clients[*who % 3];
        *next_cid += 1;
        let ops = actions.iter().map(|a| to_op(a, &info.player)).collect();
        raw.ops(*next_cid, ops).await;
    }
    // Each client waits for the answer (its delta or a reject) to each of its batches.
    for (raw, info, mirror, sent) in clients.iter_mut() {
        let mut answered = HashSet::new();
        while (answered.len() as u64) < *sent {
            match raw.msg().await {
                ServerMsg::Delta(d) => {
                    mirror.apply(&d);
                    if d.by.as_deref() == Some(info.player.as_str()) {
                        answered.insert(d.cid.unwrap_or(0));
                    }
                }
                ServerMsg::Reject { cid, .. } => {
                    answered.insert(cid);
                }
                _ => {}
            }
        }
    }
    // The server's state, as a newcomer's snapshot.
    let (_observer, observed) = Raw::joined(&server, "prop", "doc").await;
    let truth = observed.snapshot.expect("snapshot");
    for (raw, _, mirror, _) in clients.iter_mut() {
        while mirror.seq < truth.seq {
            if let ServerMsg::Delta(d) = raw.msg().await {
                mirror.apply(&d);
            }
        }
        assert_eq!(mirror.seq, truth.seq);
        assert_eq!(mirror.state.state_hash(), truth.hash, "mirror diverged from the server");
    }
    server.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn g6_every_mirror_converges_to_the_server_state(
        batches in prop::collection::vec((0..3usize, prop::collection::vec(action(), 1..4)), 1..30)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_case(batches));
    }
}
