//! Which etcd lease a write with a TTL attaches its key to.
//!
//! Like the Kubernetes API server's `leaseManager`, writes share leases
//! instead of granting one each: a lease granted for TTL `t` lives
//! `t + w`, where the reuse window `w` is 5% of `t` capped at one minute, and
//! a later write with TTL `t'` reuses it while it still has between `t'` and
//! `t' + w'` to live. So every key lives at least its TTL and at most about
//! one window longer, and a stream of Events (TTL one hour) costs one lease
//! grant a minute instead of one per Event. Short TTLs (under 20 s) get a
//! zero window, hence a lease of their own.
//!
//! etcd extends every lease when a new leader takes over, so after a
//! failover a key can outlive its TTL by up to an election timeout more.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The longest reuse window (Kubernetes' `leaseReuseDurationSeconds`).
const MAX_WINDOW_SECS: i64 = 60;
/// The window as a fraction of the TTL: 1/20 = 5% (Kubernetes'
/// `leaseReuseDurationPercent`).
const WINDOW_DIVISOR: i64 = 20;
/// How many keys may share one lease (Kubernetes'
/// `leaseMaxAttachedObjectCount`): revoking or expiring a lease deletes its
/// keys in one raft entry, which must stay small.
const MAX_ATTACHED: u32 = 1000;
/// How many live leases are remembered for reuse.
const MAX_CACHED: usize = 8;

/// A TTL as etcd takes it: whole seconds, at least one.
pub(super) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// The reuse window for a TTL of `ttl` seconds.
pub(super) fn window_secs(ttl: i64) -> i64 {
    (ttl / WINDOW_DIVISOR).min(MAX_WINDOW_SECS)
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    id: i64,
    /// When the lease expires at the earliest: the grant was asked for
    /// before this instant minus the TTL, so etcd's clock started later.
    expires: Instant,
    attached: u32,
}

#[derive(Debug, Default)]
pub(super) struct Leases {
    cached: Mutex<Vec<Cached>>,
}

impl Leases {
    /// A remembered lease that a key with TTL `ttl` seconds, written at
    /// `now`, may use: one that outlives `now + ttl` by at most the window.
    pub(super) fn reusable(&self, ttl: i64, now: Instant) -> Option<i64> {
        let earliest = now + Duration::from_secs(ttl as u64);
        let latest = earliest + Duration::from_secs(window_secs(ttl) as u64);
        let mut cached = self.lock();
        cached.retain(|c| c.expires > now);
        let c = cached
            .iter_mut()
            .find(|c| c.expires >= earliest && c.expires <= latest && c.attached < MAX_ATTACHED)?;
        c.attached += 1;
        Some(c.id)
    }

    /// Remembers a lease granted at `granted_at` that lives `ttl` seconds.
    pub(super) fn remember(&self, id: i64, ttl: i64, granted_at: Instant) {
        let mut cached = self.lock();
        if cached.len() >= MAX_CACHED {
            // The one that expires first is the least useful.
            if let Some(i) = (0..cached.len()).min_by_key(|&i| cached[i].expires) {
                cached.swap_remove(i);
            }
        }
        cached.push(Cached {
            id,
            expires: granted_at + Duration::from_secs(ttl as u64),
            attached: 1,
        });
    }

    /// Drops a lease that etcd no longer knows.
    pub(super) fn forget(&self, id: i64) {
        self.lock().retain(|c| c.id != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cached>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        let cases = [
            ("sub-second", Duration::from_millis(300), 1),
            ("zero", Duration::ZERO, 1),
            ("exact", Duration::from_secs(5), 5),
            ("fraction", Duration::from_millis(5001), 6),
        ];
        for (name, ttl, want) in cases {
            assert_eq!(ttl_secs(ttl), want, "{name}");
        }
    }

    #[test]
    fn the_window_is_five_percent_capped_at_a_minute() {
        let cases = [
            ("short ttl gets no window", 10, 0),
            ("twenty seconds", 20, 1),
            ("ten minutes", 600, 30),
            ("an hour is capped", 3600, 60),
        ];
        for (name, ttl, want) in cases {
            assert_eq!(window_secs(ttl), want, "{name}");
        }
    }

    #[test]
    fn a_lease_is_reused_only_while_it_outlives_the_ttl_by_at_most_the_window() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let leases = Leases::default();
        // Granted for an hour plus its 60 s window.
        leases.remember(7, 3660, start);
        let cases = [
            ("same moment", 3600, at(0), Some(7)),
            ("half a minute later", 3600, at(30), Some(7)),
            (
                "a minute later it expires exactly at the ttl",
                3600,
                at(60),
                Some(7),
            ),
            (
                "past the window the key would die early",
                3600,
                at(61),
                None,
            ),
            ("a much shorter ttl would live too long", 60, at(0), None),
            (
                "a slightly longer ttl fits the window",
                3610,
                at(0),
                Some(7),
            ),
            (
                "ten seconds shorter outlives the ttl by 70 s",
                3590,
                at(0),
                None,
            ),
        ];
        for (name, ttl, now, want) in cases {
            assert_eq!(leases.reusable(ttl, now), want, "{name}");
        }
    }

    #[test]
    fn a_lease_holds_at_most_a_thousand_keys() {
        let start = Instant::now();
        let leases = Leases::default();
        leases.remember(1, 3660, start);
        for _ in 1..MAX_ATTACHED {
            assert_eq!(leases.reusable(3600, start), Some(1));
        }
        assert_eq!(leases.reusable(3600, start), None);
    }

    #[test]
    fn a_forgotten_lease_is_not_reused() {
        let start = Instant::now();
        let leases = Leases::default();
        leases.remember(1, 3660, start);
        leases.forget(1);
        assert_eq!(leases.reusable(3600, start), None);
    }
}
