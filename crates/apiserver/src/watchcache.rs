//! The watch cache: one store watch per resource, shared by every watcher.
//!
//! Kubernetes' `Cacher` in a small form. For each resource that is watched
//! (or listed with `resourceVersion=0`) the server keeps, in memory:
//! - the current objects (their presented JSON plus the labels and fields
//!   that selectors look at, so matching needs no parsing), and
//! - a bounded window of the latest events,
//!
//! fed by one store watch. A watcher is a cursor into the window: it wakes
//! when the cache moves, copies the events after its cursor under a read
//! lock, and filters and encodes them on its own task. A thousand watchers
//! therefore cost one store watch, and an event is presented (parsed,
//! `resourceVersion` set, serialised) once, not once per watcher.
//!
//! Invariants:
//! - Events enter the window in revision order, each exactly once; a cursor
//!   `c` means "every event with revision ≤ c was delivered".
//! - A watcher whose cursor fell out of the window (it was too slow, or it
//!   asked for a revision older than the window) is not served from here:
//!   slow watchers are ended (clients re-watch from their last revision), and
//!   old starting revisions go to the store, which answers `410 Gone` when
//!   they were compacted.
//! - When the store watch fails, the cache is dropped and its watchers are
//!   ended; the next request builds a fresh one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skiff_store::{EventKind, KeyValue, ListOptions, Revision, Store};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult};
use crate::registry::present;
use crate::resources::ResourceDef;
use crate::selector::{Attrs, Selectors};

/// How many events each resource's window keeps.
pub const WINDOW: usize = 10_000;

/// One object as the cache keeps it.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    /// The object as clients see it (`apiVersion`, `kind`, and
    /// `resourceVersion` = `revision`), serialised once when it entered the
    /// cache and shared by every watcher and list. The stored bytes are not
    /// kept beside it: a second copy of each pod (~3 KB) is hundreds of MiB
    /// at 150,000 pods.
    presented: Bytes,
    /// The revision the object is presented with.
    pub revision: Revision,
    pub attrs: Attrs,
}

impl CachedObject {
    fn new(def: &ResourceDef, key: String, value: &[u8], revision: Revision) -> ApiResult<Self> {
        let obj = present(def, value, revision)?;
        let attrs = Attrs::of(def, &obj);
        let presented = serde_json::to_vec(&obj)
            .map_err(|e| ApiError::Internal(format!("serialising {key}: {e}")))?;
        Ok(CachedObject {
            attrs,
            key,
            presented: Bytes::from(presented),
            revision,
        })
    }

    /// The object as clients see it, parsed.
    pub fn to_value(&self) -> ApiResult<Value> {
        serde_json::from_slice(&self.presented)
            .map_err(|e| ApiError::Internal(format!("cached object is not JSON: {e}")))
    }

    /// The object as clients see it, serialised.
    pub fn presented_json(&self) -> Bytes {
        self.presented.clone()
    }
}

/// One change, with the object before and after.
#[derive(Debug)]
pub struct CachedEvent {
    pub kind: EventKind,
    pub revision: Revision,
    pub current: Option<Arc<CachedObject>>,
    pub prev: Option<Arc<CachedObject>>,
}

impl CachedEvent {
    fn key(&self) -> &str {
        self.current
            .as_ref()
            .or(self.prev.as_ref())
            .map(|o| o.key.as_str())
            .unwrap_or_default()
    }

    /// What this change means for a watcher of `prefix` with `selectors`:
    /// an object that starts or stops matching is ADDED or DELETED for it.
    pub fn for_watcher(
        &self,
        prefix: &str,
        selectors: &Selectors,
    ) -> Option<(&'static str, &Arc<CachedObject>)> {
        if !self.key().starts_with(prefix) {
            return None;
        }
        let now = self
            .current
            .as_ref()
            .is_some_and(|o| selectors.matches_attrs(&o.attrs));
        let before = self
            .prev
            .as_ref()
            .is_some_and(|o| selectors.matches_attrs(&o.attrs));
        match (self.kind, &self.current, &self.prev) {
            (EventKind::Create, Some(obj), _) if now => Some(("ADDED", obj)),
            (EventKind::Update, Some(obj), _) if now && before => Some(("MODIFIED", obj)),
            (EventKind::Update, Some(obj), _) if now => Some(("ADDED", obj)),
            (EventKind::Update, Some(obj), _) if before => Some(("DELETED", obj)),
            (EventKind::Delete, _, Some(obj)) if before => Some(("DELETED", obj)),
            _ => None,
        }
    }
}

struct Window {
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<CachedEvent>>,
    /// Every event with a revision ≤ this was evicted from (or predates)
    /// the window.
    evicted_through: Revision,
    /// The revision of the latest event applied (or of the initial list).
    latest: Revision,
    failed: bool,
}

/// The cache of one resource.
pub struct ResourceCache {
    def: &'static ResourceDef,
    window: RwLock<Window>,
    /// Carries `latest` to sleeping watchers.
    progress: watch::Sender<Revision>,
}

/// What a watcher gets from [`ResourceCache::read_after`].
pub enum Read {
    Events(Vec<Arc<CachedEvent>>),
    /// The cursor is older than the window: the watcher must end.
    TooOld,
    /// The cache failed: the watcher must end.
    Failed,
}

impl ResourceCache {
    pub fn def(&self) -> &'static ResourceDef {
        self.def
    }

    /// The latest revision the cache has applied.
    pub fn latest(&self) -> Revision {
        self.read_window().latest
    }

    /// Whether a watch starting after `revision` can be served from here.
    pub fn covers(&self, revision: Revision) -> bool {
        let w = self.read_window();
        !w.failed && revision >= w.evicted_through
    }

    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.progress.subscribe()
    }

    /// The current objects under `prefix` that match, with the revision
    /// they are consistent at.
    pub fn snapshot(
        &self,
        prefix: &str,
        selectors: &Selectors,
    ) -> ApiResult<(Revision, Vec<Arc<CachedObject>>)> {
        let w = self.read_window();
        if w.failed {
            return Err(ApiError::Internal("watch cache failed; retry".into()));
        }
        let items = w
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, o)| selectors.matches_attrs(&o.attrs))
            .map(|(_, o)| o.clone())
            .collect();
        Ok((w.latest, items))
    }

    /// The events with a revision above `cursor`.
    pub fn read_after(&self, cursor: Revision) -> Read {
        let w = self.read_window();
        if w.failed {
            return Read::Failed;
        }
        if cursor < w.evicted_through {
            return Read::TooOld;
        }
        let start = w.events.partition_point(|e| e.revision <= cursor);
        Read::Events(w.events.range(start..).cloned().collect())
    }

    fn read_window(&self) -> std::sync::RwLockReadGuard<'_, Window> {
        self.window.read().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, event: skiff_store::Event) -> ApiResult<()> {
        let def = self.def;
        let to_obj = |kv: KeyValue, revision: Revision| {
            CachedObject::new(def, kv.key, &kv.value, revision).map(Arc::new)
        };
        let current = event
            .current
            .map(|kv| {
                let rev = kv.mod_revision;
                to_obj(kv, rev)
            })
            .transpose()?;
        // A deleted object is presented with the revision of its deletion.
        let prev_rev = if event.kind == EventKind::Delete {
            Some(event.revision)
        } else {
            None
        };
        let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
        let prev = match w.objects.get(&event.key) {
            Some(o) if prev_rev.is_none() => Some(o.clone()),
            _ => event
                .prev
                .map(|kv| {
                    let rev = prev_rev.unwrap_or(kv.mod_revision);
                    to_obj(kv, rev)
                })
                .transpose()?,
        };
        match &current {
            Some(obj) => {
                w.objects.insert(event.key.clone(), obj.clone());
            }
            None => {
                w.objects.remove(&event.key);
            }
        }
        w.events.push_back(Arc::new(CachedEvent {
            kind: event.kind,
            revision: event.revision,
            current,
            prev,
        }));
        while w.events.len() > WINDOW {
            if let Some(old) = w.events.pop_front() {
                w.evicted_through = old.revision;
            }
        }
        w.latest = w.latest.max(event.revision);
        let latest = w.latest;
        drop(w);
        self.progress.send_replace(latest);
        Ok(())
    }

    fn fail(&self) {
        let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
        w.failed = true;
        let latest = w.latest;
        drop(w);
        // Wake every watcher so it sees the failure.
        self.progress.send_replace(latest + 1);
    }
}

type CacheId = (&'static str, &'static str, &'static str);

/// Every resource's cache, built on first use.
#[derive(Default)]
pub struct WatchCaches {
    caches: Mutex<HashMap<CacheId, Arc<tokio::sync::OnceCell<Arc<ResourceCache>>>>>,
}

impl WatchCaches {
    /// The cache of `def`, built (one list, one store watch) on first use.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        def: &'static ResourceDef,
    ) -> ApiResult<Arc<ResourceCache>> {
        let id: CacheId = (def.group, def.version, def.plural);
        let cell = {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches.entry(id).or_default().clone()
        };
        let cache = cell
            .get_or_try_init(|| start(store.clone(), def))
            .await?
            .clone();
        if cache.read_window().failed {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            if caches.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                caches.remove(&id);
            }
            return Err(ApiError::Internal("watch cache restarting; retry".into()));
        }
        Ok(cache)
    }
}

async fn start(store: Arc<dyn Store>, def: &'static ResourceDef) -> ApiResult<Arc<ResourceCache>> {
    let prefix = def.key_prefix(None);
    let page = store.list(&prefix, ListOptions::default()).await?;
    let mut objects = BTreeMap::new();
    for kv in page.items {
        let rev = kv.mod_revision;
        let key = kv.key.clone();
        objects.insert(
            key.clone(),
            Arc::new(CachedObject::new(def, key, &kv.value, rev)?),
        );
    }
    let revision = page.revision;
    let mut stream = store.watch(&prefix, revision).await?;
    let (progress, _) = watch::channel(revision);
    let cache = Arc::new(ResourceCache {
        def,
        window: RwLock::new(Window {
            objects,
            events: VecDeque::new(),
            evicted_through: revision,
            latest: revision,
            failed: false,
        }),
        progress,
    });
    let feeding = cache.clone();
    tokio::spawn(async move {
        while let Some(next) = stream.next().await {
            let applied = next
                .map_err(ApiError::from)
                .and_then(|event| feeding.apply(event));
            if let Err(e) = applied {
                tracing::warn!(resource = def.plural, error = %e, "watch cache feed failed");
                break;
            }
        }
        feeding.fail();
    });
    tracing::debug!(resource = def.plural, revision, "watch cache started");
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;
    use skiff_store::Event;

    fn kv(key: &str, labels: Value, rev: Revision) -> KeyValue {
        let name = key.rsplit('/').next().unwrap_or_default();
        let obj = json!({"metadata": {"name": name, "namespace": "default", "labels": labels}});
        KeyValue {
            key: key.into(),
            value: Bytes::from(serde_json::to_vec(&obj).unwrap()),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn cache() -> ResourceCache {
        let def = resources::find("", "v1", "configmaps").unwrap();
        ResourceCache {
            def,
            window: RwLock::new(Window {
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                evicted_through: 10,
                latest: 10,
                failed: false,
            }),
            progress: watch::channel(10).0,
        }
    }

    const KEY: &str = "/registry/core/configmaps/default/a";

    fn create(c: &ResourceCache, rev: Revision, labels: Value) {
        c.apply(Event {
            kind: EventKind::Create,
            revision: rev,
            key: KEY.into(),
            current: Some(kv(KEY, labels, rev)),
            prev: None,
        })
        .unwrap();
    }

    #[test]
    fn a_cursor_reads_only_later_events() {
        let c = cache();
        create(&c, 11, json!({}));
        let Read::Events(all) = c.read_after(10) else {
            panic!("expected events")
        };
        assert_eq!(all.len(), 1);
        let Read::Events(none) = c.read_after(11) else {
            panic!("expected events")
        };
        assert!(none.is_empty());
        assert!(matches!(c.read_after(9), Read::TooOld));
    }

    #[test]
    fn an_object_leaving_the_selector_is_deleted_for_the_watcher() {
        let c = cache();
        create(&c, 11, json!({"app": "web"}));
        c.apply(Event {
            kind: EventKind::Update,
            revision: 12,
            key: KEY.into(),
            current: Some(kv(KEY, json!({"app": "db"}), 12)),
            prev: Some(kv(KEY, json!({"app": "web"}), 11)),
        })
        .unwrap();
        let def = c.def();
        let selectors = Selectors {
            labels: crate::selector::LabelSelector::parse("app=web").unwrap(),
            fields: crate::selector::FieldSelector::parse("", def).unwrap(),
        };
        let Read::Events(events) = c.read_after(10) else {
            panic!("expected events")
        };
        let kinds: Vec<_> = events
            .iter()
            .filter_map(|e| e.for_watcher("/registry/core/configmaps/", &selectors))
            .map(|(k, o)| (k, o.revision))
            .collect();
        assert_eq!(kinds, vec![("ADDED", 11), ("DELETED", 12)]);
        let other_ns = events
            .iter()
            .filter_map(|e| e.for_watcher("/registry/core/configmaps/kube-system/", &selectors))
            .count();
        assert_eq!(other_ns, 0);
    }

    #[test]
    fn the_window_evicts_old_events_and_old_cursors_are_refused() {
        let c = cache();
        for i in 0..(WINDOW as i64 + 5) {
            create(&c, 11 + i, json!({}));
        }
        assert!(matches!(c.read_after(10), Read::TooOld));
        assert!(c.covers(15));
        assert!(!c.covers(14));
        let Read::Events(tail) = c.read_after(15) else {
            panic!("expected events")
        };
        assert_eq!(tail.len(), WINDOW);
    }

    #[test]
    fn deleted_objects_carry_the_deletion_revision() {
        let c = cache();
        create(&c, 11, json!({}));
        c.apply(Event {
            kind: EventKind::Delete,
            revision: 13,
            key: KEY.into(),
            current: None,
            prev: Some(kv(KEY, json!({}), 11)),
        })
        .unwrap();
        let Read::Events(events) = c.read_after(11) else {
            panic!("expected events")
        };
        let (kind, obj) = events[0]
            .for_watcher("/registry/", &Selectors::default())
            .unwrap();
        assert_eq!((kind, obj.revision), ("DELETED", 13));
        let (_, items) = c.snapshot("/registry/", &Selectors::default()).unwrap();
        assert!(items.is_empty());
    }
}
