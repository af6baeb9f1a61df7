//! The live progress line on a terminal (indicatif, on stderr).
//!
//! Two phases per run: connecting (a bar of joined connections out of the total) and the
//! timed run (warm-up, window, drain, with the deliveries/s of the last second when the
//! scenario counts them). Hidden when stderr is not a terminal (CI, pipes, `--json` into a
//! file) or with `--no-progress`, so logs and JSON stay clean. Drawing runs on indicatif's
//! own ticker thread at most a few times a second; the connection tasks only bump an atomic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::stats::Timeline;

/// Shared delivery counter the connection tasks bump (relaxed: it is only displayed).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether to draw at all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Drawn only when stderr is a terminal and the user did not turn it off.
    pub fn new(no_progress: bool) -> Progress {
        use std::io::IsTerminal;
        Progress { enabled: !no_progress && std::io::stderr().is_terminal() }
    }

    fn bar(&self, len: u64, template: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
        let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar
    }

    /// A bar of `total` connections; `inc(1)` per connection that joined or failed.
    pub fn connecting(&self, scenario: &'static str, total: u64) -> ProgressBar {
        let bar = self.bar(total, "{prefix}: connecting [{bar:30}] {pos}/{len} ({per_sec}, {elapsed}) {msg}");
        bar.set_prefix(scenario);
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// The timed part of a run: a bar over start..stop whose message names the phase and,
    /// with a counter, the deliveries per second over the last tick. Finish it with
    /// `finish_and_clear` once the run is over; the updates stop with it.
    pub fn timed(&self, scenario: &'static str, tl: Timeline, deliveries: Option<Counter>) -> ProgressBar {
        let total_ms = tl.stop.saturating_duration_since(tl.start).as_millis() as u64;
        let bar = self.bar(total_ms.max(1), "{prefix}: [{bar:30}] {msg}");
        bar.set_prefix(scenario);
        if bar.is_hidden() {
            return bar;
        }
        let updater = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut last = (Instant::now(), deliveries.as_ref().map_or(0, Counter::get));
            while !updater.is_finished() {
                let now = tick.tick().await;
                let phase = if now < tl.start {
                    "starting".to_string()
                } else if now < tl.window_start {
                    format!("warm-up {:.1}/{:.0} s", secs(now - tl.start), secs(tl.window_start - tl.start))
                } else if now < tl.window_end {
                    format!(
                        "window {:.1}/{:.0} s",
                        secs(now - tl.window_start),
                        secs(tl.window_end - tl.window_start)
                    )
                } else {
                    "drain".to_string()
                };
                let rate = deliveries.as_ref().map(|c| {
                    let n = c.get();
                    let r = (n - last.1) as f64 / secs(now - last.0).max(1e-3);
                    last = (now, n);
                    format!(", {r:.0} deliveries/s")
                });
                updater.set_position(now.saturating_duration_since(tl.start).as_millis() as u64);
                updater.set_message(format!("{phase}{}", rate.unwrap_or_default()));
            }
        });
        bar
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
