//! The garbage collector: owner references with Kubernetes' three
//! propagation policies.
//!
//! - **Background**: a dependent whose owners are all gone is deleted.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion`
//!   finalizer has its dependents deleted (in the foreground too); the
//!   finalizer is removed once no dependent with `blockOwnerDeletion` is
//!   left, and the API server then removes the owner.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its
//!   reference removed from every dependent, then the finalizer removed.
//!
//! One watch per kind in [`KINDS`] keeps the collector's graph; each sweep
//! decides with the pure [`plan`] over it. Nothing is decided before every
//! kind has been listed once (an owner of an unlisted kind would look
//! absent), and before deleting a dependent as dangling the owner's
//! absence is confirmed with a live GET (its watch may lag).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{ControllerConfig, Error};

/// (group, version, kind, plural, namespaced) of the kinds the collector
/// watches as owners and dependents.
pub const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
    ("", "v1", "Pod", "pods", true),
    (
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
    ),
    ("", "v1", "Service", "services", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    ("", "v1", "Node", "nodes", false),
    ("", "v1", "Namespace", "namespaces", false),
];

/// What the collector needs to know of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Index into [`KINDS`].
    pub kind: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    /// (uid, apiVersion, kind, name, blockOwnerDeletion)
    pub owners: Vec<(String, String, String, String, bool)>,
}

/// One step of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Delete a dependent whose owners are gone (after confirming).
    DeleteDangling(usize),
    /// Delete a dependent of an owner being deleted in the foreground.
    DeleteForeground(usize),
    /// Remove the reference to `uid` from a dependent.
    RemoveOwnerRef(usize, String),
    /// Remove a finalizer from an owner being deleted.
    RemoveFinalizer(usize, &'static str),
}

/// The pure decision over one consistent view of the cluster.
pub fn plan(items: &[Item]) -> Vec<Step> {
    let by_uid: HashMap<&str, &Item> = items.iter().map(|i| (i.uid.as_str(), i)).collect();
    let mut steps = Vec::new();
    // uid → (any dependent, any blocking dependent)
    let mut referenced: HashSet<&str> = HashSet::new();
    let mut blocking: HashSet<&str> = HashSet::new();
    for (idx, item) in items.iter().enumerate() {
        if item.owners.is_empty() {
            continue;
        }
        let mut present = 0;
        for (uid, _, _, _, block) in &item.owners {
            if let Some(owner) = by_uid.get(uid.as_str()) {
                present += 1;
                referenced.insert(uid);
                if *block && !item.deleting {
                    blocking.insert(uid);
                }
                if owner.deleting && owner.finalizers.iter().any(|f| f == "orphan") {
                    steps.push(Step::RemoveOwnerRef(idx, uid.clone()));
                } else if owner.deleting
                    && owner.finalizers.iter().any(|f| f == "foregroundDeletion")
                    && !item.deleting
                {
                    steps.push(Step::DeleteForeground(idx));
                }
            }
        }
        if present == 0 && !item.deleting {
            steps.push(Step::DeleteDangling(idx));
        }
    }
    for (idx, item) in items.iter().enumerate() {
        if !item.deleting {
            continue;
        }
        if item.finalizers.iter().any(|f| f == "orphan") && !referenced.contains(item.uid.as_str())
        {
            steps.push(Step::RemoveFinalizer(idx, "orphan"));
        }
        if item.finalizers.iter().any(|f| f == "foregroundDeletion")
            && !blocking.contains(item.uid.as_str())
        {
            steps.push(Step::RemoveFinalizer(idx, "foregroundDeletion"));
        }
    }
    steps.dedup();
    steps
}

fn resource(kind: usize) -> ApiResource {
    let (g, v, k, plural, _) = KINDS[kind];
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
}

fn api_for(client: &kube::Client, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = resource(kind);
    match (KINDS[kind].4, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

fn kind_index(api_version: &str, kind: &str) -> Option<usize> {
    KINDS.iter().position(|(g, v, k, _, _)| {
        let av = if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        };
        av == api_version && *k == kind
    })
}

/// What the collector knows of one object.
fn item_of(kind: usize, obj: &DynamicObject) -> Item {
    let meta = &obj.metadata;
    Item {
        kind,
        namespace: meta.namespace.clone(),
        name: obj.name_any(),
        uid: meta.uid.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        owners: meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| {
                (
                    r.uid.clone(),
                    r.api_version.clone(),
                    r.kind.clone(),
                    r.name.clone(),
                    r.block_owner_deletion.unwrap_or(false),
                )
            })
            .collect(),
    }
}

/// The collector's view of the cluster: every object of every kind in
/// [`KINDS`], kept by one watch per kind (a list of everything per sweep
/// cost O(cluster) every second).
#[derive(Default)]
struct Graph {
    /// Per kind: uid → item, or `None` until the kind's first list.
    kinds: Vec<Option<HashMap<String, Item>>>,
    /// Bumped on every change, so an unchanged graph is not swept again.
    generation: u64,
}

impl Graph {
    fn new() -> Self {
        Graph {
            kinds: vec![None; KINDS.len()],
            generation: 0,
        }
    }

    /// Every item, once every kind has been listed.
    fn snapshot(&self) -> Option<Vec<Item>> {
        let mut items = Vec::new();
        for kind in &self.kinds {
            items.extend(kind.as_ref()?.values().cloned());
        }
        Some(items)
    }
}

type SharedGraph = Arc<Mutex<Graph>>;

fn lock(graph: &SharedGraph) -> std::sync::MutexGuard<'_, Graph> {
    graph
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps one kind of the graph in step with the cluster.
async fn watch_kind(client: kube::Client, kind: usize, graph: SharedGraph) {
    let api = api_for(&client, kind, None);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<HashMap<String, Item>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relist = Some(HashMap::new()),
            Ok(Event::InitApply(obj)) => {
                let item = item_of(kind, &obj);
                relist
                    .get_or_insert_with(HashMap::new)
                    .insert(item.uid.clone(), item);
            }
            Ok(Event::InitDone) => {
                let mut g = lock(&graph);
                g.kinds[kind] = Some(relist.take().unwrap_or_default());
                g.generation += 1;
            }
            Ok(Event::Apply(obj)) => {
                let item = item_of(kind, &obj);
                let mut g = lock(&graph);
                if let Some(items) = g.kinds[kind].as_mut() {
                    items.insert(item.uid.clone(), item);
                }
                g.generation += 1;
            }
            Ok(Event::Delete(obj)) => {
                let uid = obj.metadata.uid.unwrap_or_default();
                let mut g = lock(&graph);
                if let Some(items) = g.kinds[kind].as_mut() {
                    items.remove(&uid);
                }
                g.generation += 1;
            }
            Err(e) => {
                tracing::debug!(kind = KINDS[kind].2, error = %e, "gc: watch failed; retrying");
            }
        }
    }
}

/// True when none of `item`'s owners exists any more (checked live).
async fn owners_gone(client: &kube::Client, item: &Item) -> Result<bool, Error> {
    for (uid, api_version, kind, name, _) in &item.owners {
        let Some(k) = kind_index(api_version, kind) else {
            // An owner of a kind we do not know: never assume it is gone.
            return Ok(false);
        };
        let api = api_for(client, k, item.namespace.as_deref());
        match api.get_opt(name).await? {
            Some(owner) if owner.metadata.uid.as_deref() == Some(uid.as_str()) => return Ok(false),
            _ => {}
        }
    }
    Ok(true)
}

async fn apply(client: &kube::Client, items: &[Item], step: &Step) -> Result<(), Error> {
    let ignore_missing = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        other => other,
    };
    match step {
        Step::DeleteDangling(i) => {
            let item = &items[*i];
            if owners_gone(client, item).await? {
                let api = api_for(client, item.kind, item.namespace.as_deref());
                tracing::info!(kind = KINDS[item.kind].2, name = %item.name, "gc: deleting dependent of deleted owner");
                ignore_missing(
                    api.delete(&item.name, &DeleteParams::background())
                        .await
                        .map(|_| ()),
                )?;
            }
        }
        Step::DeleteForeground(i) => {
            let item = &items[*i];
            let api = api_for(client, item.kind, item.namespace.as_deref());
            ignore_missing(
                api.delete(&item.name, &DeleteParams::foreground())
                    .await
                    .map(|_| ()),
            )?;
        }
        Step::RemoveOwnerRef(i, uid) => {
            let item = &items[*i];
            let api = api_for(client, item.kind, item.namespace.as_deref());
            let current = match api.get_opt(&item.name).await? {
                Some(o) => o,
                None => return Ok(()),
            };
            let refs: Vec<_> = current
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| &r.uid != uid)
                .collect();
            // An empty list is removed (null), as Kubernetes' omitempty would.
            let refs = if refs.is_empty() {
                serde_json::Value::Null
            } else {
                json!(refs)
            };
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": current.metadata.resource_version}});
            ignore_missing(
                api.patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )?;
        }
        Step::RemoveFinalizer(i, finalizer) => {
            let item = &items[*i];
            let api = api_for(client, item.kind, item.namespace.as_deref());
            let current = match api.get_opt(&item.name).await? {
                Some(o) => o,
                None => return Ok(()),
            };
            let finalizers: Vec<_> = current
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != finalizer)
                .collect();
            let finalizers = if finalizers.is_empty() {
                serde_json::Value::Null
            } else {
                json!(finalizers)
            };
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": current.metadata.resource_version}});
            ignore_missing(
                api.patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )?;
        }
    }
    Ok(())
}

/// Watches every kind and sweeps at most once a second, when something
/// changed (and every 30 s regardless, to retry failed steps).
pub async fn run(client: kube::Client, _config: ControllerConfig) {
    let graph: SharedGraph = Arc::new(Mutex::new(Graph::new()));
    for kind in 0..KINDS.len() {
        tokio::spawn(watch_kind(client.clone(), kind, graph.clone()));
    }
    let mut swept: Option<(u64, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let items = {
            let g = lock(&graph);
            let stale = swept.is_none_or(|(generation, at)| {
                generation != g.generation || at.elapsed() > Duration::from_secs(30)
            });
            if !stale {
                continue;
            }
            let Some(items) = g.snapshot() else {
                continue;
            };
            swept = Some((g.generation, Instant::now()));
            items
        };
        for step in plan(&items) {
            if let Err(e) = apply(&client, &items, &step).await {
                tracing::warn!(error = %e, ?step, "gc step failed; retrying next sweep");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: usize, name: &str, uid: &str, owners: &[(&str, bool)]) -> Item {
        Item {
            kind,
            namespace: Some("default".into()),
            name: name.into(),
            uid: uid.into(),
            deleting: false,
            finalizers: vec![],
            owners: owners
                .iter()
                .map(|(u, b)| {
                    (
                        u.to_string(),
                        "apps/v1".into(),
                        "ReplicaSet".into(),
                        "rs".into(),
                        *b,
                    )
                })
                .collect(),
        }
    }

    fn deleting(mut i: Item, finalizer: &str) -> Item {
        i.deleting = true;
        i.finalizers = vec![finalizer.into()];
        i
    }

    #[test]
    fn sweeps_follow_the_propagation_policies() {
        let cases: Vec<(&str, Vec<Item>, Vec<Step>)> = vec![
            (
                "background: dependents of a vanished owner go",
                vec![item(7, "pod", "p1", &[("gone", true)])],
                vec![Step::DeleteDangling(0)],
            ),
            (
                "a live owner keeps its dependents",
                vec![
                    item(1, "rs", "r1", &[]),
                    item(7, "pod", "p1", &[("r1", true)]),
                ],
                vec![],
            ),
            (
                "orphan: references are removed, then the finalizer",
                vec![
                    deleting(item(1, "rs", "r1", &[]), "orphan"),
                    item(7, "pod", "p1", &[("r1", true)]),
                ],
                vec![Step::RemoveOwnerRef(1, "r1".into())],
            ),
            (
                "orphan: nothing references the owner any more",
                vec![
                    deleting(item(1, "rs", "r1", &[]), "orphan"),
                    item(7, "pod", "p1", &[]),
                ],
                vec![Step::RemoveFinalizer(0, "orphan")],
            ),
            (
                "foreground: blocking dependents are deleted first",
                vec![
                    deleting(item(1, "rs", "r1", &[]), "foregroundDeletion"),
                    item(7, "pod", "p1", &[("r1", true)]),
                ],
                vec![Step::DeleteForeground(1)],
            ),
            (
                "foreground: the finalizer goes once no blocking dependent is left",
                vec![
                    deleting(item(1, "rs", "r1", &[]), "foregroundDeletion"),
                    deleting(item(7, "pod", "p1", &[("r1", true)]), "x"),
                ],
                vec![Step::RemoveFinalizer(0, "foregroundDeletion")],
            ),
        ];
        for (name, items, want) in cases {
            assert_eq!(plan(&items), want, "{name}");
        }
    }

    #[test]
    fn owner_kinds_resolve_from_api_version_and_kind() {
        assert_eq!(kind_index("apps/v1", "ReplicaSet"), Some(1));
        assert_eq!(kind_index("v1", "Pod"), Some(7));
        assert_eq!(kind_index("example.com/v1", "Widget"), None);
    }
}
