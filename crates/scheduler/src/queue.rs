//! The scheduling queue: `active` (ordered by priority, then arrival),
//! `backoff` (exponential per pod, 1 s doubling to 10 s by default) and
//! `unschedulable` (parked until a node or pod changes, or for at most
//! 60 s). Pure: the caller passes the time.

use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// Timing of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a pod stays in `unschedulable` without any cluster event.
    pub unschedulable_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            unschedulable_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Max-heap: higher priority first, then lower seq (earlier) first.
        self.priority.cmp(&o.priority).then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, Default, Clone)]
struct PodState {
    priority: i32,
    attempts: u32,
    last_attempt: Option<Instant>,
}

/// Where a pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight,
}

/// Keys are `namespace/name`.
#[derive(Debug)]
pub struct SchedulingQueue {
    config: QueueConfig,
    active: BinaryHeap<Entry>,
    place: HashMap<String, Place>,
    pods: HashMap<String, PodState>,
    seq: u64,
    /// Bumped by every [`SchedulingQueue::move_all_to_active`]; a pod that
    /// failed after a move that happened during its attempt is retried
    /// (backoff) instead of parked.
    move_cycle: u64,
    in_flight_cycle: HashMap<String, u64>,
}

impl SchedulingQueue {
    pub fn new(config: QueueConfig) -> SchedulingQueue {
        SchedulingQueue {
            config,
            active: BinaryHeap::new(),
            place: HashMap::new(),
            pods: HashMap::new(),
            seq: 0,
            move_cycle: 0,
            in_flight_cycle: HashMap::new(),
        }
    }

    pub fn place(&self, key: &str) -> Option<Place> {
        self.place.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
    }

    fn push_active(&mut self, key: &str) {
        let priority = self.pods.get(key).map(|p| p.priority).unwrap_or(0);
        self.seq += 1;
        self.active.push(Entry {
            priority,
            seq: self.seq,
            key: key.to_string(),
        });
        self.place.insert(key.to_string(), Place::Active);
    }

    fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.config.initial_backoff;
        for _ in 1..attempts {
            d = d.saturating_mul(2);
            if d >= self.config.max_backoff {
                return self.config.max_backoff;
            }
        }
        d.min(self.config.max_backoff)
    }

    fn backoff_until(&self, key: &str) -> Option<Instant> {
        let s = self.pods.get(key)?;
        Some(s.last_attempt? + self.backoff_duration(s.attempts))
    }

    /// A pending pod was seen (added or changed). New pods go to active; a
    /// parked pod whose spec or labels changed (`changed`) is retried.
    pub fn add_or_update(&mut self, key: &str, priority: i32, changed: bool, now: Instant) {
        self.pods.entry(key.to_string()).or_default().priority = priority;
        match self.place.get(key).copied() {
            None => self.push_active(key),
            Some(Place::Unschedulable(_)) if changed => self.move_one(key, now),
            Some(_) => {}
        }
    }

    fn move_one(&mut self, key: &str, now: Instant) {
        match self.backoff_until(key) {
            Some(t) if t > now => {
                self.place.insert(key.to_string(), Place::Backoff(t));
            }
            _ => self.push_active(key),
        }
    }

    /// The pod is gone (deleted, bound by someone else, no longer ours).
    pub fn delete(&mut self, key: &str) {
        self.place.remove(key);
        self.pods.remove(key);
        self.in_flight_cycle.remove(key);
        // Stale heap entries are skipped by `pop`.
    }

    /// Moves due backoff pods to active and expired unschedulable pods on.
    pub fn flush(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (k, p) in &self.place {
            match p {
                Place::Backoff(t) if *t <= now => due.push((k.clone(), false)),
                Place::Unschedulable(since)
                    if *since + self.config.unschedulable_timeout <= now =>
                {
                    due.push((k.clone(), true))
                }
                _ => {}
            }
        }
        due.sort();
        for (k, _) in due {
            self.move_one(&k, now);
        }
    }

    /// The next pod to schedule, marked in flight.
    /// Flushes the backoff and unschedulable pods first only when nothing
    /// is active; the caller also calls [`SchedulingQueue::flush`]
    /// periodically.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        if self.active.is_empty() {
            self.flush(now);
        }
        while let Some(e) = self.active.pop() {
            if self.place.get(&e.key) == Some(&Place::Active) {
                self.place.insert(e.key.clone(), Place::InFlight);
                self.in_flight_cycle.insert(e.key.clone(), self.move_cycle);
                if let Some(s) = self.pods.get_mut(&e.key) {
                    s.attempts += 1;
                    s.last_attempt = Some(now);
                }
                return Some(e.key);
            }
        }
        None
    }

    /// Whether `pop` may return a pod (cheap; may be a stale entry).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// When the queue next has work without any event.
    pub fn next_wake(&self) -> Option<Instant> {
        self.place
            .values()
            .filter_map(|p| match p {
                Place::Backoff(t) => Some(*t),
                Place::Unschedulable(since) => Some(*since + self.config.unschedulable_timeout),
                _ => None,
            })
            .min()
    }

    /// The attempt ended with the pod unschedulable: park it, unless the
    /// cluster changed meanwhile (then back off and retry).
    pub fn done_unschedulable(&mut self, key: &str, now: Instant) {
        if self.place.get(key) != Some(&Place::InFlight) {
            return;
        }
        let started = self.in_flight_cycle.remove(key).unwrap_or(0);
        if self.move_cycle > started {
            self.move_one(key, now);
        } else {
            self.place
                .insert(key.to_string(), Place::Unschedulable(now));
        }
    }

    /// The attempt failed with an error: back off.
    pub fn done_error(&mut self, key: &str, now: Instant) {
        if self.place.get(key) != Some(&Place::InFlight) {
            return;
        }
        self.in_flight_cycle.remove(key);
        self.move_one(key, now);
    }

    /// The pod was bound: forget it.
    pub fn done_bound(&mut self, key: &str) {
        self.delete(key);
    }

    /// A node or pod changed in a way that may make parked pods fit.
    pub fn move_all_to_active(&mut self, now: Instant) {
        self.move_cycle += 1;
        let mut parked: Vec<String> = self
            .place
            .iter()
            .filter(|(_, p)| matches!(p, Place::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        parked.sort();
        for k in parked {
            self.move_one(&k, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> SchedulingQueue {
        SchedulingQueue::new(QueueConfig::default())
    }

    #[test]
    fn active_pods_pop_by_priority_then_arrival() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/low", 0, false, now);
        q.add_or_update("ns/high", 100, false, now);
        q.add_or_update("ns/low2", 0, false, now);
        assert_eq!(q.pop(now).as_deref(), Some("ns/high"));
        assert_eq!(q.pop(now).as_deref(), Some("ns/low"));
        assert_eq!(q.pop(now).as_deref(), Some("ns/low2"));
        assert_eq!(q.pop(now), None);
    }

    #[test]
    fn errors_back_off_exponentially_up_to_the_maximum() {
        let start = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, start);
        let mut now = start;
        for want in [1u64, 2, 4, 8, 10, 10] {
            assert_eq!(q.pop(now).as_deref(), Some("ns/p"));
            q.done_error("ns/p", now);
            assert_eq!(
                q.place("ns/p"),
                Some(Place::Backoff(now + Duration::from_secs(want)))
            );
            assert_eq!(
                q.pop(now + Duration::from_secs(want) - Duration::from_millis(1)),
                None
            );
            now += Duration::from_secs(want);
        }
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, now);
        q.pop(now);
        q.done_unschedulable("ns/p", now);
        assert_eq!(q.place("ns/p"), Some(Place::Unschedulable(now)));
        let later = now + Duration::from_secs(5);
        assert_eq!(q.pop(later), None);
        q.move_all_to_active(later);
        assert_eq!(q.pop(later).as_deref(), Some("ns/p"));
    }

    #[test]
    fn unschedulable_pods_are_retried_after_the_timeout() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, now);
        q.pop(now);
        q.done_unschedulable("ns/p", now);
        assert_eq!(q.pop(now + Duration::from_secs(59)), None);
        assert_eq!(
            q.pop(now + Duration::from_secs(60)).as_deref(),
            Some("ns/p")
        );
    }

    #[test]
    fn a_move_during_the_attempt_means_retry_not_park() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, now);
        q.pop(now);
        q.move_all_to_active(now);
        q.done_unschedulable("ns/p", now);
        assert_eq!(
            q.place("ns/p"),
            Some(Place::Backoff(now + Duration::from_secs(1)))
        );
    }

    #[test]
    fn a_changed_parked_pod_is_retried_an_unchanged_one_is_not() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, now);
        q.pop(now);
        q.done_unschedulable("ns/p", now);
        let later = now + Duration::from_secs(2);
        q.add_or_update("ns/p", 0, false, later);
        assert!(matches!(q.place("ns/p"), Some(Place::Unschedulable(_))));
        q.add_or_update("ns/p", 0, true, later);
        assert_eq!(q.pop(later).as_deref(), Some("ns/p"));
    }

    #[test]
    fn in_flight_pods_are_not_added_twice_and_deleted_pods_vanish() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update("ns/p", 0, false, now);
        q.add_or_update("ns/q", 0, false, now);
        assert_eq!(q.pop(now).as_deref(), Some("ns/p"));
        q.add_or_update("ns/p", 0, true, now);
        assert_eq!(q.place("ns/p"), Some(Place::InFlight));
        q.delete("ns/q");
        assert_eq!(q.pop(now), None);
        q.done_bound("ns/p");
        assert!(q.is_empty());
    }
}
