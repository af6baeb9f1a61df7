//! The writer task of a connection: owns the socket's sending half, drains the bounded
//! outbound queue (many queued frames, one flush: fewer syscalls), sends keepalive pings,
//! and on close sends what is still queued followed by the close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::mpsc;

use super::control::{CloseReason, ConnControl};
use super::CLOSE_FLUSH_TIMEOUT;
use crate::telemetry::HotMetrics;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 128;
/// Longest close reason a close frame can carry, in bytes.
const MAX_CLOSE_REASON: usize = 123;

type Sink = SplitSink<WebSocket, Message>;

/// Runs until the connection's control is closed or the socket fails.
pub async fn run(
    mut sink: Sink,
    mut queue: mpsc::Receiver<Bytes>,
    control: Arc<ConnControl>,
    ping_every: Duration,
    metrics: HotMetrics,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    // Created once: a cancellation future registers a waiter (a lock) when first polled.
    let closed = control.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                let written = tokio::select! {
                    r = write_batch(&mut sink, frame, &mut queue, &metrics) => r,
                    // A client that stopped reading must not pin this task in a flush.
                    _ = &mut closed => Err(()),
                };
                if written.is_err() {
                    control.gone("socket_error");
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    control.gone("socket_error");
                    break;
                }
            }
        }
    }
    if let Some(CloseReason::Code(code, reason)) = control.reason() {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            while let Ok(frame) = queue.try_recv() {
                metrics.frames_out.increment(1);
                metrics.bytes_out.increment(frame.len() as u64);
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            let reason = truncate(&reason, MAX_CLOSE_REASON);
            let frame = CloseFrame { code: code.code(), reason: reason.into() };
            let _ = sink.send(Message::Close(Some(frame))).await;
        })
        .await;
    }
    // A peer that never answers the close handshake must not hold the task (and the drain).
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, sink.close()).await;
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    sink: &mut Sink,
    first: Bytes,
    queue: &mut mpsc::Receiver<Bytes>,
    metrics: &HotMetrics,
) -> Result<(), ()> {
    // What was waiting when the writer woke up: `first` and the rest of the queue.
    metrics.outbox_depth.record((queue.len() + 1) as f64);
    let mut frames = 1u64;
    let mut bytes = first.len() as u64;
    sink.feed(Message::Binary(first)).await.map_err(|_| ())?;
    while (frames as usize) < WRITE_BATCH {
        let Ok(frame) = queue.try_recv() else { break };
        frames += 1;
        bytes += frame.len() as u64;
        sink.feed(Message::Binary(frame)).await.map_err(|_| ())?;
    }
    sink.flush().await.map_err(|_| ())?;
    metrics.frames_out.increment(frames);
    metrics.bytes_out.increment(bytes);
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
