//! Shared informers: one watch per resource type feeding an in-memory cache
//! that every controller reads, the way client-go's shared informer
//! factory does.
//!
//! A controller that lists its children through the API on every reconcile
//! costs O(objects in the namespace) per reconcile, which made a 30,000-pod
//! cluster quadratic. An [`Informer`] keeps one copy of the objects, indexed
//! by namespace and by controlling owner (`ownerReferences` with
//! `controller: true`), and hands every change to its subscribers (the
//! controllers' triggers) after the cache reflects it, so a reconcile
//! triggered by an event always sees at least that event.
//!
//! The cache lags the API: a controller that creates or deletes objects
//! must not act again on the cache before it saw its own writes (see the
//! controllers' expectations).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The cache key of an object: namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object.
    pub fn of<K: Resource>(obj: &K) -> Self {
        ObjectKey {
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }
}

/// The objects and their indexes.
struct Index<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    by_namespace: HashMap<String, HashSet<String>>,
    /// Controlling owner uid → the objects it controls (the objects
    /// themselves, not keys: a ReplicaSet of 10,000 pods reads them all on
    /// every sync, and a lookup per key was a quarter of that sync).
    by_controller: HashMap<String, HashMap<ObjectKey, Arc<K>>>,
    /// Namespace → names of objects without a controlling owner.
    orphans: HashMap<String, HashSet<String>>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            objects: HashMap::new(),
            by_namespace: HashMap::new(),
            by_controller: HashMap::new(),
            orphans: HashMap::new(),
        }
    }
}

fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Drops `metadata.managedFields` from a watched object before it is cached,
/// as client-go's `TransformStripManagedFields` does for kube-scheduler's and
/// kube-controller-manager's informers: no controller reads them, and each
/// manager's field set is a tree of JSON values in every cached object.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// An object's resourceVersion as a number, if it is one.
pub fn parse_rv<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

fn remove_from<T: Eq + std::hash::Hash, Q: Eq + std::hash::Hash>(
    map: &mut HashMap<Q, HashSet<T>>,
    bucket: &Q,
    item: &T,
) {
    if let Some(set) = map.get_mut(bucket) {
        set.remove(item);
        if set.is_empty() {
            map.remove(bucket);
        }
    }
}

impl<K: Resource> Index<K> {
    fn insert(&mut self, obj: Arc<K>) -> Option<Arc<K>> {
        let key = ObjectKey::of(obj.as_ref());
        let old = self.remove(&key);
        self.by_namespace
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone());
        match controller_uid(obj.as_ref()) {
            Some(uid) => {
                self.by_controller
                    .entry(uid.to_string())
                    .or_default()
                    .insert(key.clone(), obj.clone());
            }
            None => {
                self.orphans
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
            }
        }
        self.objects.insert(key, obj);
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        remove_from(&mut self.by_namespace, &key.namespace, &key.name);
        match controller_uid(old.as_ref()) {
            Some(uid) => {
                if let Some(objects) = self.by_controller.get_mut(uid) {
                    objects.remove(key);
                    if objects.is_empty() {
                        self.by_controller.remove(uid);
                    }
                }
            }
            None => remove_from(&mut self.orphans, &key.namespace, &key.name),
        }
        Some(old)
    }

    fn names_to_objects<'a>(
        &'a self,
        namespace: &'a str,
        names: impl Iterator<Item = &'a String> + 'a,
    ) -> impl Iterator<Item = Arc<K>> + 'a {
        names.filter_map(move |name| {
            self.objects
                .get(&ObjectKey::new(namespace, name.as_str()))
                .cloned()
        })
    }
}

struct Shared<K> {
    index: RwLock<Index<K>>,
    /// The highest resourceVersion applied from the watch (0 until one
    /// parses as a number, as etcd-backed servers' do).
    observed: AtomicU64,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>,
    synced: watch::Sender<bool>,
}

/// A watched, indexed cache of one resource type. Cheap to clone; the
/// watch stops when the last clone is dropped (so a component that loses
/// its leader lease and drops its caches leaves no watch behind).
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
    /// The watch feeding `shared`, aborted when the last handle goes. The
    /// task itself holds a handle without it, so it does not keep itself
    /// alive.
    task: Option<Arc<WatchTask>>,
}

/// Aborts the watch task when dropped.
struct WatchTask(tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
            task: self.task.clone(),
        }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` on the current runtime; the watch restarts
    /// with backoff on errors and relists when its history expired.
    pub fn spawn(api: Api<K>, config: watcher::Config) -> Self {
        let mut informer = Self::empty();
        let events = watcher::watcher(api, config)
            .default_backoff()
            .modify(strip_managed_fields);
        let task = tokio::spawn(informer.clone().feed(events));
        informer.task = Some(Arc::new(WatchTask(task)));
        informer
    }

    /// A synced cache of fixed objects that watches nothing: for unit tests
    /// of logic that reads a cache.
    pub fn from_objects(objects: impl IntoIterator<Item = K>) -> Self {
        let informer = Self::empty();
        informer.replace(objects.into_iter().map(Arc::new).collect());
        informer.shared.synced.send_replace(true);
        informer
    }

    /// An informer fed by nothing yet (see [`Informer::feed`]).
    fn empty() -> Self {
        let (synced, _) = watch::channel(false);
        Informer {
            shared: Arc::new(Shared {
                index: RwLock::new(Index::default()),
                observed: AtomicU64::new(0),
                subscribers: Mutex::new(Vec::new()),
                synced,
            }),
            task: None,
        }
    }

    async fn feed<S>(self, events: S)
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    {
        let mut events = std::pin::pin!(events);
        // The objects of a relist in progress; swapped in at `InitDone`.
        let mut relist: Option<Vec<Arc<K>>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => relist = Some(Vec::new()),
                Ok(Event::InitApply(obj)) => {
                    relist.get_or_insert_with(Vec::new).push(Arc::new(obj))
                }
                Ok(Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    self.replace(fresh);
                    self.shared.synced.send_replace(true);
                }
                Ok(Event::Apply(obj)) => {
                    let obj = Arc::new(obj);
                    self.write().insert(obj.clone());
                    self.observe(obj.as_ref());
                    self.notify(std::iter::once(obj));
                }
                Ok(Event::Delete(obj)) => {
                    let key = ObjectKey::of(&obj);
                    let old = self.write().remove(&key);
                    self.observe(&obj);
                    self.notify(std::iter::once(old.unwrap_or_else(|| Arc::new(obj))));
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "informer watch failed; retrying")
                }
            }
        }
    }

    fn observe(&self, obj: &K) {
        if let Some(rv) = parse_rv(obj) {
            self.shared.observed.fetch_max(rv, Ordering::AcqRel);
        }
    }

    /// The highest resourceVersion the cache has applied, when the server's
    /// versions are numbers. A watch delivers events in resourceVersion
    /// order, so every write up to it is reflected, including objects
    /// created and deleted again in between.
    pub fn observed_resource_version(&self) -> u64 {
        self.shared.observed.load(Ordering::Acquire)
    }

    /// Swaps in a relisted set; everything that changed or vanished is
    /// handed to the subscribers.
    fn replace(&self, fresh: Vec<Arc<K>>) {
        let mut changed = Vec::new();
        {
            let mut index = self.write();
            let mut seen = HashSet::with_capacity(fresh.len());
            for obj in fresh {
                self.observe(obj.as_ref());
                seen.insert(ObjectKey::of(obj.as_ref()));
                let same = index
                    .objects
                    .get(&ObjectKey::of(obj.as_ref()))
                    .is_some_and(|old| {
                        old.meta().resource_version.is_some()
                            && old.meta().resource_version == obj.meta().resource_version
                    });
                if !same {
                    changed.push(obj.clone());
                    index.insert(obj);
                }
            }
            let gone: Vec<ObjectKey> = index
                .objects
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(old) = index.remove(&key) {
                    changed.push(old);
                }
            }
        }
        self.notify(changed.into_iter());
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index<K>> {
        self.shared
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index<K>> {
        self.shared
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, objs: impl Iterator<Item = Arc<K>>) {
        let mut subs = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for obj in objs {
            subs.retain(|tx| tx.send(obj.clone()).is_ok());
        }
    }

    /// Every change from now on (the object after the change, or the last
    /// known object for a deletion), in order. Meant as a controller's
    /// trigger stream (`Controller::owns_shared_stream`: the objects are
    /// shared, not copied per subscriber).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(tx);
        UnboundedReceiverStream::new(rx)
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        // The sender lives as long as `self`, so this only ends when synced.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Whether the first list has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read()
            .objects
            .get(&ObjectKey::new(namespace, name))
            .cloned()
    }

    /// All cached objects.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The objects of one namespace ("" for cluster-scoped objects).
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let index = self.read();
        let Some(names) = index.by_namespace.get(namespace) else {
            return Vec::new();
        };
        index.names_to_objects(namespace, names.iter()).collect()
    }

    /// The objects whose controlling owner has this uid.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let index = self.read();
        let Some(objects) = index.by_controller.get(uid) else {
            return Vec::new();
        };
        objects.values().cloned().collect()
    }

    /// The objects of a namespace that no controller owns (candidates for
    /// adoption).
    pub fn orphans(&self, namespace: &str) -> Vec<Arc<K>> {
        let index = self.read();
        let Some(names) = index.orphans.get(namespace) else {
            return Vec::new();
        };
        index.names_to_objects(namespace, names.iter()).collect()
    }

    /// What a controller with this uid may act on in its namespace: the
    /// objects it controls plus the orphans it may adopt.
    pub fn controlled_or_orphaned(&self, namespace: &str, uid: &str) -> Vec<Arc<K>> {
        let mut out = self.controlled_by(uid);
        out.retain(|o| o.meta().namespace.as_deref().unwrap_or_default() == namespace);
        out.extend(self.orphans(namespace));
        out
    }

    /// Whether the cache holds `name` with this uid (a deleted and
    /// recreated object has another uid).
    pub fn contains_uid(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.get(namespace, name)
            .is_some_and(|o| o.uid().as_deref() == Some(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(ns: &str, name: &str, rv: &str, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some(rv.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(mut v: Vec<Arc<Pod>>) -> Vec<String> {
        v.sort_by_key(|p| p.name_any());
        v.iter().map(|p| p.name_any()).collect()
    }

    async fn fed(events: Vec<Event<Pod>>) -> (Informer<Pod>, Vec<String>) {
        let informer = Informer::<Pod>::empty();
        let mut sub = informer.subscribe();
        informer
            .clone()
            .feed(futures::stream::iter(events.into_iter().map(Ok)))
            .await;
        drop(informer.shared.subscribers.lock().unwrap().drain(..));
        let mut seen = Vec::new();
        while let Some(p) = sub.next().await {
            seen.push(p.name_any());
        }
        (informer, seen)
    }

    #[tokio::test]
    async fn indexes_follow_adds_updates_and_deletes() {
        let (inf, seen) = fed(vec![
            Event::Init,
            Event::InitApply(pod("a", "p1", "1", Some("rs1"))),
            Event::InitApply(pod("a", "p2", "1", None)),
            Event::InitApply(pod("b", "p3", "1", Some("rs1"))),
            Event::InitDone,
            // p2 is adopted, p1 released, p3 deleted
            Event::Apply(pod("a", "p2", "2", Some("rs1"))),
            Event::Apply(pod("a", "p1", "2", None)),
            Event::Delete(pod("b", "p3", "2", Some("rs1"))),
        ])
        .await;
        assert!(inf.is_synced());
        assert_eq!(seen, ["p1", "p2", "p3", "p2", "p1", "p3"]);
        assert_eq!(names(inf.controlled_by("rs1")), ["p2"]);
        assert_eq!(names(inf.orphans("a")), ["p1"]);
        assert_eq!(names(inf.list_namespace("a")), ["p1", "p2"]);
        assert!(inf.list_namespace("b").is_empty());
        assert!(inf.controlled_by("nobody").is_empty());
        assert_eq!(names(inf.controlled_or_orphaned("a", "rs1")), ["p1", "p2"]);
        assert!(inf.contains_uid("a", "p1", "uid-p1"));
        assert_eq!(inf.observed_resource_version(), 2);
        assert!(!inf.contains_uid("a", "p1", "other"));
    }

    #[tokio::test]
    async fn a_relist_drops_vanished_objects_and_reports_only_changes() {
        let (inf, seen) = fed(vec![
            Event::Init,
            Event::InitApply(pod("a", "p1", "1", None)),
            Event::InitApply(pod("a", "p2", "1", None)),
            Event::InitDone,
            // the watch expired; p1 unchanged, p2 gone, p4 new
            Event::Init,
            Event::InitApply(pod("a", "p1", "1", None)),
            Event::InitApply(pod("a", "p4", "5", None)),
            Event::InitDone,
        ])
        .await;
        assert_eq!(seen, ["p1", "p2", "p4", "p2"]);
        assert_eq!(names(inf.list()), ["p1", "p4"]);
        assert_eq!(names(inf.orphans("a")), ["p1", "p4"]);
    }
}
