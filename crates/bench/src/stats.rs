//! Small helpers for latency samples.

use std::time::Duration;

/// Latency samples, summarised by percentile.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.values.push(d);
    }

    /// Adds every sample of `other`.
    pub fn append(&mut self, mut other: Samples) {
        self.values.append(&mut other.values);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `p`-th percentile (0–100) by nearest rank; zero when empty.
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.values.is_empty() {
            return Duration::ZERO;
        }
        self.values.sort_unstable();
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        self.values[rank.clamp(1, self.values.len()) - 1]
    }
}

impl Extend<Duration> for Samples {
    fn extend<I: IntoIterator<Item = Duration>>(&mut self, iter: I) {
        self.values.extend(iter);
    }
}

/// Formats a duration in milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_millis(i));
        }
        let cases = [(50.0, 50), (99.0, 99), (100.0, 100), (0.0, 1)];
        for (p, want) in cases {
            assert_eq!(s.percentile(p), Duration::from_millis(want), "p{p}");
        }
        assert_eq!(Samples::default().percentile(50.0), Duration::ZERO);
    }
}
