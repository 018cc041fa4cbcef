//! Expectations: what a controller wrote and has not yet seen in its
//! informer cache.
//!
//! Controllers decide from a cache that lags the API. After a ReplicaSet
//! controller created three pods, a reconcile that runs before the cache
//! holds them would create three more. Like Kubernetes' controller
//! expectations, each owner records the objects it created and deleted;
//! until the cache reflects all of them (or [`TIMEOUT`] passed, in case a
//! watch event was lost), the owner's reconcile must not create or delete
//! again. Unlike Kubernetes' counters, the records are object names, so the
//! check is a plain cache lookup and needs no event hooks.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use skiff_client::informer::{Informer, parse_rv};

/// How long unobserved writes block an owner (Kubernetes' 5 minutes).
pub const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Pending {
    namespace: String,
    /// Names created with the resourceVersion the API answered, to appear
    /// in the cache (or be passed by the cache's watch: a pod created and
    /// deleted again before this looks never shows up).
    created: Vec<(String, Option<u64>)>,
    /// (name, uid) deleted, to disappear from the cache or be terminating.
    deleted: Vec<(String, String)>,
    since: Instant,
}

/// Per-owner records of unobserved writes; keys are the owners' uids.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `owner` created `created` (name, resourceVersion of
    /// the created object) and deleted `deleted` (name, uid) in
    /// `namespace`.
    pub fn expect(
        &self,
        owner: &str,
        namespace: &str,
        created: Vec<(String, Option<u64>)>,
        deleted: Vec<(String, String)>,
    ) {
        if created.is_empty() && deleted.is_empty() {
            return;
        }
        let mut pending = self.lock();
        // Entries past their timeout would be dropped by the owner's next
        // look; an owner that was deleted never looks again, so they go here.
        pending.retain(|_, p| p.since.elapsed() <= TIMEOUT);
        let entry = pending.entry(owner.to_string()).or_insert_with(|| Pending {
            namespace: namespace.to_string(),
            created: Vec::new(),
            deleted: Vec::new(),
            since: Instant::now(),
        });
        entry.created.extend(created);
        entry.deleted.extend(deleted);
        entry.since = Instant::now();
    }

    /// Records one pod `owner` created (the object the API answered).
    pub fn created(&self, owner: &str, namespace: &str, pod: &Pod) {
        self.expect(
            owner,
            namespace,
            vec![(pod.name_any(), parse_rv(pod))],
            Vec::new(),
        );
    }

    /// Records that `owner` deleted the pod `name`, one of `among` (where
    /// its uid is looked up, so a successor of the same name is not taken
    /// for it).
    pub fn deleted(&self, owner: &str, namespace: &str, name: &str, among: &[&Pod]) {
        let uid = among
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_default();
        self.expect(owner, namespace, Vec::new(), vec![(name.to_string(), uid)]);
    }

    /// Whether the cache reflects every write `owner` recorded, so its
    /// reconcile may create and delete again. Observed records are dropped.
    pub fn satisfied<K>(&self, owner: &str, cache: &Informer<K>) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut pending = self.lock();
        let Some(p) = pending.get_mut(owner) else {
            return true;
        };
        let ns = p.namespace.clone();
        let observed = cache.observed_resource_version();
        p.created.retain(|(name, rv)| {
            cache.get(&ns, name).is_none() && rv.is_none_or(|rv| observed < rv)
        });
        p.deleted.retain(|(name, uid)| {
            cache.get(&ns, name).is_some_and(|o| {
                o.meta().uid.as_deref() == Some(uid.as_str())
                    && o.meta().deletion_timestamp.is_none()
            })
        });
        let done = (p.created.is_empty() && p.deleted.is_empty()) || p.since.elapsed() > TIMEOUT;
        if done {
            if p.since.elapsed() > TIMEOUT {
                tracing::warn!(
                    owner,
                    "expectations timed out; acting on the cache as it is"
                );
            }
            pending.remove(owner);
        }
        done
    }

    /// Forgets an owner (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn cache(pods: Vec<Pod>) -> Informer<Pod> {
        Informer::from_objects(pods)
    }

    fn in_ns(name: &str, uid: &str) -> Pod {
        let mut p = pod(name, None, "Running", None);
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some(uid.into());
        p
    }

    #[test]
    fn creates_block_until_the_cache_holds_them() {
        let e = Expectations::new();
        assert!(e.satisfied("rs", &cache(vec![])), "nothing recorded");
        e.expect(
            "rs",
            "ns",
            vec![("a".into(), None), ("b".into(), None)],
            vec![],
        );
        let a = in_ns("a", "u1");
        assert!(!e.satisfied("rs", &cache(vec![a.clone()])), "b not seen");
        assert!(e.satisfied("other", &cache(vec![])), "per owner");
        let b = in_ns("b", "u2");
        assert!(e.satisfied("rs", &cache(vec![b])), "a was seen before");
        assert!(e.satisfied("rs", &cache(vec![])), "forgotten once seen");
    }

    #[test]
    fn a_create_the_watch_passed_is_observed_even_if_already_gone() {
        let e = Expectations::new();
        e.expect("rs", "ns", vec![("a".into(), Some(5))], vec![]);
        let mut other = in_ns("b", "u2");
        other.metadata.resource_version = Some("4".into());
        assert!(
            !e.satisfied("rs", &cache(vec![other.clone()])),
            "watch at 4"
        );
        other.metadata.resource_version = Some("7".into());
        assert!(
            e.satisfied("rs", &cache(vec![other])),
            "watch past 5, a gone"
        );
    }

    #[test]
    fn deletes_block_until_gone_terminating_or_replaced() {
        let e = Expectations::new();
        let a = in_ns("a", "u1");
        e.expect("rs", "ns", vec![], vec![("a".into(), "u1".into())]);
        assert!(!e.satisfied("rs", &cache(vec![a.clone()])));
        let mut terminating = a.clone();
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(e.satisfied("rs", &cache(vec![terminating])));

        e.expect("rs", "ns", vec![], vec![("a".into(), "u1".into())]);
        let recreated = in_ns("a", "u2");
        assert!(e.satisfied("rs", &cache(vec![recreated])), "another uid");
        e.expect("rs", "ns", vec![], vec![("a".into(), "u1".into())]);
        assert!(e.satisfied("rs", &cache(vec![])), "gone");
    }
}
