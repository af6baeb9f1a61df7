//! Load signals for overload shedding: the scheduling lag of the node's runtime.
//!
//! A task asks to wake every [`TICK`] and measures how late it woke. A saturated CPU, a
//! stalled worker or a paused process all show up as lag, which is what degrades every
//! player of a node; past `--shed-lag-ms` the node turns new players away for
//! `--shed-lag-hold-ms` (see [`crate::server::Node::overloaded`]). Every sample is exported
//! as [`names::SCHEDULING_LAG`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// How often the lag is sampled.
pub const TICK: Duration = Duration::from_millis(100);

/// Tracks whether the runtime was recently late.
pub struct LagMonitor {
    /// Shed when a sample exceeds this (`None`: never shed, only measure).
    threshold: Option<Duration>,
    hold: Duration,
    origin: Instant,
    /// Milliseconds after `origin` until which new players are shed.
    shed_until_ms: AtomicU64,
}

impl LagMonitor {
    pub fn new(threshold: Option<Duration>, hold: Duration) -> LagMonitor {
        LagMonitor { threshold, hold, origin: Instant::now(), shed_until_ms: AtomicU64::new(0) }
    }

    /// Starts sampling on the current runtime until `shutdown`.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let monitor = self.clone();
        tokio::spawn(async move {
            let mut due = tokio::time::Instant::now() + TICK;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => {}
                }
                let now = tokio::time::Instant::now();
                monitor.observe(now.saturating_duration_since(due), now.into_std());
                due = now + TICK;
            }
        });
    }

    /// Records one sample taken at `now`.
    pub fn observe(&self, lag: Duration, now: Instant) {
        gauge!(names::SCHEDULING_LAG).set(lag.as_secs_f64());
        if self.threshold.is_some_and(|t| lag > t) {
            let until = now.saturating_duration_since(self.origin) + self.hold;
            self.shed_until_ms.fetch_max(until.as_millis() as u64, Ordering::AcqRel);
        }
    }

    /// Whether new players are shed at `now`.
    pub fn shedding(&self, now: Instant) -> bool {
        (now.saturating_duration_since(self.origin).as_millis() as u64)
            < self.shed_until_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_sample_sheds_for_the_hold_then_stops() {
        let m = LagMonitor::new(Some(Duration::from_millis(250)), Duration::from_secs(2));
        let t0 = m.origin + Duration::from_secs(1);
        assert!(!m.shedding(t0));
        m.observe(Duration::from_millis(100), t0);
        assert!(!m.shedding(t0), "under the threshold");
        m.observe(Duration::from_millis(400), t0);
        assert!(m.shedding(t0 + Duration::from_millis(1999)));
        assert!(!m.shedding(t0 + Duration::from_millis(2001)));
        let off = LagMonitor::new(None, Duration::from_secs(2));
        off.observe(Duration::from_secs(5), t0);
        assert!(!off.shedding(t0));
    }
}
