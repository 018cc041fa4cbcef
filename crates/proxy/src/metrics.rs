//! Sync latency: the time from the first watch event a sync covers to the
//! moment its transaction was loaded (rules in place). The last
//! [`SyncMetrics::CAPACITY`] samples are kept, with quantile accessors.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One successful sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSample {
    /// Event to rules in place (for a full sync with no pending event, the
    /// sync's own duration).
    pub latency: Duration,
    /// Time spent in `nft` alone.
    pub nft: Duration,
    /// Commands in the transaction.
    pub commands: usize,
    /// Services whose rules were written.
    pub services: usize,
    /// Whether it was a full sync (start, periodic or after an error).
    pub full: bool,
}

/// Shared, lock-light sync statistics.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    samples: Mutex<VecDeque<SyncSample>>,
    syncs: AtomicU64,
    errors: AtomicU64,
}

impl SyncMetrics {
    /// Samples kept.
    pub const CAPACITY: usize = 1024;

    pub fn record(&self, sample: SyncSample) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == Self::CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Successful syncs since start.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Failed syncs since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The kept samples, oldest first.
    pub fn samples(&self) -> Vec<SyncSample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().copied().collect()
    }

    /// The latest sample.
    pub fn last(&self) -> Option<SyncSample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.back().copied()
    }

    /// Latency quantile `q` (0.0–1.0) over the kept samples of incremental
    /// syncs (`full == false`), `None` without samples.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let latencies: Vec<Duration> = self
            .samples()
            .iter()
            .filter(|s| !s.full)
            .map(|s| s.latency)
            .collect();
        quantile(latencies, q)
    }

    pub fn p50(&self) -> Option<Duration> {
        self.latency_quantile(0.5)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.latency_quantile(0.99)
    }
}

/// Nearest-rank quantile of `values` (`q` clamped to 0.0–1.0).
pub fn quantile(mut values: Vec<Duration>, q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let q = q.clamp(0.0, 1.0);
    let rank = (q * values.len() as f64).ceil() as usize;
    values
        .get(rank.saturating_sub(1).min(values.len() - 1))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        let cases = [(0.0, 1), (0.5, 50), (0.99, 99), (1.0, 100)];
        for (q, want) in cases {
            assert_eq!(quantile(values.clone(), q), Some(ms(want)), "q={q}");
        }
        assert_eq!(quantile(Vec::new(), 0.5), None);
    }

    #[test]
    fn only_the_last_samples_are_kept_and_full_syncs_do_not_count_as_latency() {
        let m = SyncMetrics::default();
        for i in 0..(SyncMetrics::CAPACITY as u64 + 10) {
            m.record(SyncSample {
                latency: ms(i),
                nft: ms(0),
                commands: 1,
                services: 1,
                full: false,
            });
        }
        m.record(SyncSample {
            latency: ms(1_000_000),
            nft: ms(0),
            commands: 1,
            services: 1,
            full: true,
        });
        assert_eq!(m.samples().len(), SyncMetrics::CAPACITY);
        assert_eq!(m.syncs(), SyncMetrics::CAPACITY as u64 + 11);
        assert!(m.p99().is_some_and(|p| p < ms(2000)));
        assert_eq!(m.last().map(|s| s.full), Some(true));
    }
}
