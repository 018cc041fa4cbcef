//! Per-key exponential back-off (CrashLoopBackOff, ImagePullBackOff): pure
//! bookkeeping over instants the caller passes in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::config::Backoff;

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    /// No retry before this instant.
    until: Instant,
}

/// Back-off state for many keys under one policy.
#[derive(Debug)]
pub struct BackoffSet<K> {
    policy: Backoff,
    entries: HashMap<K, Entry>,
}

impl<K: Eq + Hash + Clone> BackoffSet<K> {
    pub fn new(policy: Backoff) -> Self {
        BackoffSet {
            policy,
            entries: HashMap::new(),
        }
    }

    /// Records a failure at `failed_at` of something that had been running
    /// for `ran_for`, and returns the delay before the next try: the
    /// policy's initial delay the first time or after a run of at least
    /// `reset_after`, else double the previous delay, capped at `max`.
    pub fn record_failure(&mut self, key: &K, failed_at: Instant, ran_for: Duration) -> Duration {
        let delay = next_delay(
            &self.policy,
            self.entries.get(key).map(|e| e.delay),
            ran_for,
        );
        self.entries.insert(
            key.clone(),
            Entry {
                delay,
                until: failed_at + delay,
            },
        );
        delay
    }

    /// How long is left to wait at `now`; `None` when a retry is allowed.
    pub fn remaining(&self, key: &K, now: Instant) -> Option<Duration> {
        let e = self.entries.get(key)?;
        (e.until > now).then(|| e.until - now)
    }

    /// The delay last recorded for `key`.
    pub fn current_delay(&self, key: &K) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Forgets `key` (after a success that should reset the schedule).
    pub fn reset(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

/// The schedule itself: 10 s, 20 s, 40 s, … up to 5 min by default.
pub fn next_delay(policy: &Backoff, previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(prev) if ran_for < policy.reset_after => (prev * 2).min(policy.max),
        _ => policy.initial.min(policy.max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_schedule_doubles_from_ten_seconds_to_five_minutes() {
        let p = Backoff::default();
        let mut prev = None;
        let mut got = Vec::new();
        for _ in 0..8 {
            let d = next_delay(&p, prev, Duration::from_secs(1));
            got.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn backoff_resets_after_ten_minutes_of_running() {
        let p = Backoff::default();
        let cases = [
            ("first failure", None, 5, 10),
            ("short run doubles", Some(40), 599, 80),
            ("ten minutes resets", Some(300), 600, 10),
            ("capped at max", Some(300), 1, 300),
        ];
        for (name, prev, ran, want) in cases {
            let d = next_delay(&p, prev.map(Duration::from_secs), Duration::from_secs(ran));
            assert_eq!(d, Duration::from_secs(want), "{name}");
        }
    }

    #[test]
    fn backoff_set_blocks_retries_until_the_delay_passed() {
        let mut set = BackoffSet::new(Backoff::default());
        let t0 = Instant::now();
        assert_eq!(set.remaining(&"c", t0), None);
        set.record_failure(&"c", t0, Duration::ZERO);
        assert_eq!(set.remaining(&"c", t0), Some(Duration::from_secs(10)));
        assert_eq!(set.remaining(&"c", t0 + Duration::from_secs(10)), None);
        let t1 = t0 + Duration::from_secs(11);
        set.record_failure(&"c", t1, Duration::from_secs(1));
        assert_eq!(
            set.remaining(&"c", t1 + Duration::from_secs(5)),
            Some(Duration::from_secs(15))
        );
        set.reset(&"c");
        assert_eq!(set.remaining(&"c", t1), None);
    }
}
