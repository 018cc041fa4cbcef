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
//! Each sweep lists the kinds in [`KINDS`] and decides with the pure
//! [`plan`]. A sweep that could not list every kind decides nothing (an
//! owner of an unlisted kind would look absent), and before deleting a
//! dependent as dangling the owner's absence is confirmed with a live GET
//! (it may have been created after its kind was listed).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
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

/// Lists every kind; `None` when any list failed.
async fn snapshot(client: &kube::Client) -> Option<Vec<Item>> {
    let mut items = Vec::new();
    for (kind, (_, _, kind_name, _, _)) in KINDS.iter().enumerate() {
        let api = api_for(client, kind, None);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(kind = kind_name, error = %e, "gc: list failed; skipping this sweep");
                return None;
            }
        };
        for obj in list.items {
            let meta = &obj.metadata;
            items.push(Item {
                kind,
                namespace: meta.namespace.clone(),
                name: obj.name_any(),
                uid: meta.uid.clone().unwrap_or_default(),
                deleting: meta.deletion_timestamp.is_some(),
                finalizers: meta.finalizers.clone().unwrap_or_default(),
                owners: meta
                    .owner_references
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| {
                        (
                            r.uid,
                            r.api_version,
                            r.kind,
                            r.name,
                            r.block_owner_deletion.unwrap_or(false),
                        )
                    })
                    .collect(),
            });
        }
    }
    Some(items)
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

/// Sweeps forever, once a second.
pub async fn run(client: kube::Client, _config: ControllerConfig) {
    loop {
        if let Some(items) = snapshot(&client).await {
            for step in plan(&items) {
                if let Err(e) = apply(&client, &items, &step).await {
                    tracing::warn!(error = %e, ?step, "gc step failed; retrying next sweep");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
