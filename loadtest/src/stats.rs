//! Measurement: the timeline of a run, per-connection counters, and latency histograms.
//!
//! Each connection task keeps its own counters and a plain `Vec<u32>` of latency samples
//! (microseconds): an HDR histogram per connection would cost ~100 KiB each, a sample vector
//! costs 4 bytes per measured input. The samples are merged into one HDR histogram at the end.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// Common clock of a run, shared by every connection task once all have joined.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Sending starts (each connection at its own phase within the first period).
    pub start: Instant,
    /// The measured window: warm-up is `start..window_start`.
    pub window_start: Instant,
    pub window_end: Instant,
    /// Connections stop reading (late echoes of in-window inputs are collected until then).
    pub stop: Instant,
}

impl Timeline {
    pub fn new(start: Instant, warmup: Duration, window: Duration, drain: Duration) -> Self {
        let window_start = start + warmup;
        let window_end = window_start + window;
        Timeline { start, window_start, window_end, stop: window_end + drain }
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }

    /// How many instants `first + k * period` (k >= 0) fall in the window.
    pub fn slots_in_window(&self, first: Instant, period: Duration) -> u64 {
        let p = period.as_nanos().max(1);
        // Index of the first slot at or after `t`.
        let first_slot_from = |t: Instant| -> u128 {
            if t <= first {
                0
            } else {
                (t - first).as_nanos().div_ceil(p)
            }
        };
        let a = first_slot_from(self.window_start);
        let b = first_slot_from(self.window_end);
        (b - a) as u64
    }
}

/// Latency samples of one connection, in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A latency histogram in microseconds (1 us .. 1 h, 3 significant digits).
pub struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    pub fn new() -> Self {
        // Bounds are constants within hdrhistogram's limits, so this cannot fail.
        match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
            Ok(h) => LatencyHistogram(h),
            Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
        }
    }

    pub fn add(&mut self, samples: &Samples) {
        for &us in &samples.0 {
            self.0.saturating_record(u64::from(us).max(1));
        }
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    /// Percentiles in milliseconds (`None` without samples).
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.0;
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        Some(LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: (h.mean() / 1000.0 * 100.0).round() / 100.0,
            samples: h.len(),
        })
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

/// Everything that went wrong, by kind. Their sum is the report's `errors`.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ErrorCounts {
    /// Connections that could not connect, handshake or join.
    pub connect: u64,
    /// `reject` frames (an op batch refused).
    pub rejects: u64,
    /// `error` frames after the join.
    pub error_frames: u64,
    /// Connections closed (close frame, reset, EOF) before the run ended.
    pub closed: u64,
    /// Frames that were not valid protocol MessagePack, or text frames.
    pub bad_frames: u64,
    /// Sends that failed.
    pub send_failures: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.rejects + self.error_frames + self.closed + self.bad_frames + self.send_failures
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.rejects += o.rejects;
        self.error_frames += o.error_frames;
        self.closed += o.closed;
        self.bad_frames += o.bad_frames;
        self.send_failures += o.send_failures;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_in_the_half_open_window() {
        let s = Instant::now();
        let tl = Timeline::new(s, Duration::from_secs(1), Duration::from_secs(2), Duration::ZERO);
        let p = Duration::from_millis(50);
        assert_eq!(tl.slots_in_window(s, p), 40);
        assert_eq!(tl.slots_in_window(s + Duration::from_millis(7), p), 40);
        // Starting inside the window.
        assert_eq!(tl.slots_in_window(s + Duration::from_millis(2_500), p), 10);
    }

    #[test]
    fn histogram_reports_milliseconds() {
        let mut s = Samples::default();
        for ms in 1..=100u64 {
            s.push(Duration::from_millis(ms));
        }
        let mut h = LatencyHistogram::new();
        h.add(&s);
        let sum = h.summary().expect("samples were recorded");
        // 3 significant digits: values are exact to 0.1 %.
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.01;
        assert!(near(sum.p50, 50.0), "{sum:?}");
        assert!(near(sum.p99, 99.0), "{sum:?}");
        assert!(near(sum.max, 100.0), "{sum:?}");
        assert_eq!(sum.samples, 100);
    }
}
