//! Joins a `doc` room, increments a shared counter a few times, and prints what happens.
//!
//! ```text
//! cargo run -p gamerelay-client --example counter -- [ws://127.0.0.1:8080/ws] [room]
//! ```
//!
//! Run it in two terminals against the same room to see each other's increments.

use std::time::Duration;

use gamerelay_client::protocol::{Doc, Op};
use gamerelay_client::{Client, ClientConfig, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_owned());
    let room = args.next().unwrap_or_else(|| "counter-demo".to_owned());

    let config = ClientConfig::new(url, room, "doc").with_client_name("counter-example");
    let client = Client::connect(config).await?;
    println!(
        "joined {} as {} at seq {}; counter = {}",
        client.room(),
        client.player_id(),
        client.seq(),
        client.get("counter").unwrap_or(Doc::Int(0)),
    );

    // Print every event from another task while this one sends ops.
    let mut events = client.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Delta(delta) => {
                    let by = delta.by.as_deref().unwrap_or("server");
                    println!("  delta seq {} by {by}: {:?}", delta.seq, delta.ops);
                }
                Event::Closed { code, reason } => {
                    println!("  closed ({code:?}): {reason}");
                }
                other => println!("  {other:?}"),
            }
        }
    });

    for _ in 0..5 {
        let ticket =
            client.send_ops_tracked(vec![Op::Inc { path: "counter".into(), by: Doc::Int(1) }]).await?;
        let cid = ticket.cid();
        let seq = ticket.acked().await?; // the mirror includes the change from here on
        println!("cid {cid} applied at seq {seq}; counter = {}", client.get("counter").unwrap_or(Doc::Nil));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("round trip: {:?}", client.ping().await?);
    println!("state hash: {}", client.state_hash());
    client.leave().await?;
    printer.await?;
    Ok(())
}
