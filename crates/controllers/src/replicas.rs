//! The pure core shared by the ReplicaSet and ReplicationController
//! controllers (upstream shares one `ReplicaSetController` between them):
//! keep `replicas` active pods matching the selector, owned through a
//! controller `ownerReference`; adopt matching orphans, release owned pods
//! that stopped matching, replace failed and deleted pods, delete the
//! cheapest pods first on scale-down; count what the status reports.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::informer::{Informer, parse_rv};

use crate::Error;
use crate::expectations::Expectations;
use crate::pods::{controller_ref, deletion_order, is_active, is_available, is_ready};
use crate::selector::matches;

/// How the owner selects its pods.
#[derive(Debug, Clone, Copy)]
pub enum PodSelector<'a> {
    /// A `metav1.LabelSelector` (ReplicaSet).
    Label(&'a LabelSelector),
    /// A plain equality map (ReplicationController). An empty map selects
    /// nothing.
    Map(&'a BTreeMap<String, String>),
}

impl PodSelector<'_> {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            PodSelector::Label(s) => matches(s, labels),
            PodSelector::Map(m) => !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

/// What the plan reads from a ReplicaSet or ReplicationController.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub uid: &'a str,
    pub replicas: i32,
    pub min_ready_seconds: i32,
    pub selector: PodSelector<'a>,
    pub template_labels: &'a BTreeMap<String, String>,
    /// The owner is being deleted: adopt and create nothing.
    pub deleting: bool,
}

/// The pod counts a status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
    pub available: i32,
}

/// What the controller should do for one owner; `S` is the status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan<S> {
    /// Pods to create from the template.
    pub create: i32,
    /// Owned pods to delete, in order.
    pub delete: Vec<String>,
    /// Matching orphans to adopt.
    pub adopt: Vec<String>,
    /// Owned pods that no longer match, to release.
    pub release: Vec<String>,
    /// Status from the pods as observed.
    pub status: S,
    /// When a pod will become available (minReadySeconds), to look again.
    pub recheck_after: Option<Duration>,
}

impl<S> Plan<S> {
    /// The same plan with another status.
    pub fn with_status<T>(self, status: T) -> Plan<T> {
        Plan {
            create: self.create,
            delete: self.delete,
            adopt: self.adopt,
            release: self.release,
            status,
            recheck_after: self.recheck_after,
        }
    }
}

/// At most this many pods are created or deleted by one sync; the next
/// sync, once the cache shows these, does the next batch. Without a cap a
/// Deployment of 50,000 sent 25,000 concurrent creates in its last
/// slow-start batch, whose requests and answers the server and controller
/// held at once (the server's resident memory peaked at 5 GiB and never
/// came back). Upstream caps at 500 (`BurstReplicas`); here one sync reads
/// all of the owner's pods and large owners are paced (see [`pace`]), and
/// with 500 the 50,000-pod Deployment was created at 363 pods/s, bound by
/// the controller's round trips rather than by the server.
pub const BURST_REPLICAS: i32 = 5_000;

/// The pure decision: `pods` are the pods of the owner's namespace that it
/// controls or may adopt (others are ignored).
pub fn plan<P: Borrow<Pod>>(target: &Target<'_>, pods: &[P], now: Timestamp) -> Plan<Counts> {
    let mut plan = Plan::<Counts>::default();
    let want = target.replicas.max(0);
    let empty = BTreeMap::new();

    // One pass over the pods, reading each pod's fields once: this runs
    // for every event of every pod an owner has (10,000 pods at 15 syncs/s
    // in the scale benchmark), and separate passes per count cost a cache
    // miss per pod each.
    let mut active: Vec<&Pod> = Vec::new();
    let mut counts = Counts::default();
    let mut not_yet_available = false;
    for pod in pods.iter().map(Borrow::borrow) {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let selected = target.selector.matches(labels);
        let pod_active = is_active(pod);
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == target.uid => {
                if !selected {
                    if pod.metadata.deletion_timestamp.is_none() {
                        plan.release.push(pod.name_any());
                    }
                    continue;
                }
            }
            Some(_) => continue,
            None => {
                if !(selected && pod_active && !target.deleting) {
                    continue;
                }
                plan.adopt.push(pod.name_any());
            }
        }
        if !pod_active {
            continue;
        }
        active.push(pod);
        if is_ready(pod) {
            counts.ready += 1;
            if is_available(pod, target.min_ready_seconds, now) {
                counts.available += 1;
            } else {
                not_yet_available = true;
            }
        }
        if target
            .template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            counts.fully_labeled += 1;
        }
    }
    let have = active.len() as i32;
    counts.replicas = have;
    if !target.deleting {
        if have < want {
            plan.create = (want - have).min(BURST_REPLICAS);
        } else if have > want {
            let excess = (have - want).min(BURST_REPLICAS) as usize;
            // Only the `excess` cheapest pods need finding, and only their
            // order matters: a selection, then a sort of those, instead of
            // sorting every pod (scale to 0 sorts nothing).
            if excess < active.len() {
                active.select_nth_unstable_by(excess, |a, b| deletion_order(a, b));
                active.truncate(excess);
                active.sort_by(|a, b| deletion_order(a, b));
            }
            plan.delete = active.iter().map(|p| p.name_any()).collect();
        }
    }
    if not_yet_available {
        plan.recheck_after = Some(Duration::from_secs(1));
    }
    plan.status = counts;
    plan
}

/// What one [`sync`] decided and did.
#[derive(Debug)]
pub struct Synced<S> {
    pub plan: Plan<S>,
    /// The plan was applied (no write of an earlier sync was missing from
    /// the cache).
    pub settled: bool,
    /// Wall time spent reading the pods and deciding (no API calls): it
    /// grows with the owner's pods, and [`pace`] waits in proportion.
    pub cost: Duration,
}

/// One reconcile of a ReplicaSet or ReplicationController against the pod
/// cache: reads the pods `owner` controls plus the namespace's orphans,
/// decides with `decide`, and applies the decision unless writes of an
/// earlier reconcile are not in the cache yet.
pub async fn sync<S>(
    cache: &Informer<Pod>,
    expectations: &Expectations,
    api: &Api<Pod>,
    owner: &OwnerReference,
    namespace: &str,
    template: Option<&PodTemplateSpec>,
    decide: impl FnOnce(&[Arc<Pod>]) -> Plan<S>,
) -> Result<Synced<S>, Error> {
    let started = std::time::Instant::now();
    let settled = expectations.satisfied(&owner.uid, cache);
    let pods = cache.controlled_or_orphaned(namespace, &owner.uid);
    let plan = decide(&pods);
    let cost = started.elapsed();
    if settled {
        apply(api, owner, namespace, template, &pods, &plan, expectations).await?;
    }
    Ok(Synced {
        plan,
        settled,
        cost,
    })
}

/// A sync may cost at most this share of the time between two syncs of
/// the same owner (one in `PACE_FACTOR + 1`).
const PACE_FACTOR: u32 = 10;
/// Syncs cheaper than this do not wait at all.
const PACE_FROM: Duration = Duration::from_micros(500);
/// The longest wait, however large the owner.
const PACE_MAX: Duration = Duration::from_secs(1);

/// How long to wait after a sync that cost `cost` before the owner's next
/// sync may start: nothing for a small owner, ten times the cost for a
/// large one (at most a second).
pub fn pause_after(cost: Duration) -> Option<Duration> {
    (cost >= PACE_FROM).then(|| (cost * PACE_FACTOR).min(PACE_MAX))
}

/// Waits [`pause_after`] `cost`, at the end of a reconcile. Every event of
/// every pod an owner has triggers a sync that reads all of its pods, so an
/// owner of 10,000 pods that are being scheduled and started asks for
/// thousands of syncs per second, each over all 10,000. The kube-runtime
/// `Controller` never runs two reconciles of one object at once and folds
/// the triggers that arrive meanwhile into one rerun, so waiting here turns
/// those into one sync per pause with the newest state (as upstream's
/// EndpointSlice controller batches with `--endpoint-updates-batch-period`),
/// bounding the controller's share of a core per owner to about
/// 1/(`PACE_FACTOR` + 1). An isolated event is still handled at once.
pub async fn pace(cost: Duration) {
    if let Some(pause) = pause_after(cost) {
        tokio::time::sleep(pause).await;
    }
}

/// Applies the pod half of a plan: adopt, release, create from `template`
/// (named `<owner>-<random>`, in slow-start batches of 1, 2, 4, … as
/// Kubernetes does, so a failing create costs one request, not hundreds),
/// delete. Every create and delete that succeeded is recorded in
/// `expectations`, also when a later one fails.
pub async fn apply<S>(
    pods: &Api<Pod>,
    owner: &OwnerReference,
    namespace: &str,
    template: Option<&PodTemplateSpec>,
    all: &[Arc<Pod>],
    plan: &Plan<S>,
    expectations: &Expectations,
) -> Result<(), Error> {
    let refs_of = |name: &str| {
        all.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.owner_references.clone())
            .unwrap_or_default()
    };
    for name in &plan.adopt {
        let mut refs = refs_of(name);
        refs.push(owner.clone());
        let patch = json!({"metadata": {"ownerReferences": refs}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    for name in &plan.release {
        let refs: Vec<_> = refs_of(name)
            .into_iter()
            .filter(|r| r.uid != owner.uid)
            .collect();
        let refs = if refs.is_empty() {
            serde_json::Value::Null
        } else {
            json!(refs)
        };
        let patch = json!({"metadata": {"ownerReferences": refs}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if plan.create > 0 {
        let template =
            template.ok_or_else(|| Error::Invalid(owner.name.clone(), "no pod template".into()))?;
        let tmeta = template.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", owner.name)),
                namespace: Some(namespace.to_string()),
                labels: tmeta.labels.clone(),
                annotations: tmeta.annotations.clone(),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        let params = PostParams::default();
        let mut remaining = plan.create as usize;
        let mut batch = 1;
        while remaining > 0 {
            let n = batch.min(remaining);
            // Only the name and version of each answer are kept, as it
            // arrives: not a batch of whole pods.
            let results = join_all((0..n).map(|_| async {
                let p = pods.create(&params, &pod).await?;
                Ok::<_, kube::Error>((p.name_any(), parse_rv(&p)))
            }))
            .await;
            let mut created = Vec::with_capacity(n);
            let mut failed = None;
            for r in results {
                match r {
                    Ok(c) => created.push(c),
                    Err(e) => failed = Some(e),
                }
            }
            expectations.expect(&owner.uid, namespace, created, Vec::new());
            if let Some(e) = failed {
                return Err(e.into());
            }
            remaining -= n;
            batch *= 2;
        }
        tracing::info!(kind = %owner.kind, owner = %owner.name, count = plan.create, "created pods");
    }
    if !plan.delete.is_empty() {
        let uid_of = |name: &str| {
            all.iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .and_then(|p| p.metadata.uid.clone())
                .unwrap_or_default()
        };
        let results =
            join_all(plan.delete.iter().map(|name| async move {
                (name, pods.delete(name, &DeleteParams::default()).await)
            }))
            .await;
        let mut deleted = Vec::new();
        let mut failed = None;
        for (name, r) in results {
            match r {
                Ok(_) => deleted.push((name.clone(), uid_of(name))),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => failed = Some(e),
            }
        }
        expectations.expect(&owner.uid, namespace, Vec::new(), deleted);
        if let Some(e) = failed {
            return Err(e.into());
        }
        tracing::info!(kind = %owner.kind, owner = %owner.name, count = plan.delete.len(), "deleted pods");
    }
    Ok(())
}

/// Deletes a pod, treating NotFound as done.
pub async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;

    #[test]
    fn map_selectors_match_every_pair_and_empty_maps_nothing() {
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let empty = BTreeMap::new();
        let web: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into();
        let cases = [
            (
                "superset of the selector",
                PodSelector::Map(&sel),
                &web,
                true,
            ),
            ("missing key", PodSelector::Map(&sel), &empty, false),
            ("empty map", PodSelector::Map(&empty), &web, false),
        ];
        for (name, s, labels, want) in cases {
            assert_eq!(s.matches(labels), want, "{name}");
        }
    }

    #[test]
    fn only_costly_syncs_wait_in_proportion_to_their_cost() {
        let ms = Duration::from_millis;
        let cases = [
            (
                "a small owner does not wait",
                Duration::from_micros(80),
                None,
            ),
            (
                "a large owner waits ten times its cost",
                ms(5),
                Some(ms(50)),
            ),
            ("however large, at most a second", ms(400), Some(ms(1000))),
        ];
        for (name, cost, want) in cases {
            assert_eq!(pause_after(cost), want, "{name}");
        }
    }

    #[test]
    fn a_deleting_owner_neither_adopts_nor_creates() {
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let mut orphan = pod("o", Some("n"), "Running", Some(1));
        orphan.metadata.labels = Some(sel.clone());
        let target = Target {
            uid: "u",
            replicas: 3,
            min_ready_seconds: 0,
            selector: PodSelector::Map(&sel),
            template_labels: &sel,
            deleting: true,
        };
        let p = plan(&target, &[orphan], Timestamp::from_second(100).unwrap());
        assert_eq!((p.create, p.adopt.len()), (0, 0));
    }

    #[test]
    fn one_sync_creates_or_deletes_at_most_a_burst() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let owned = |i: usize| {
            let mut p = pod(&format!("p{i}"), Some("n"), "Running", Some(1));
            p.metadata.labels = Some(sel.clone());
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            p
        };
        let target = |replicas| Target {
            uid: "u",
            replicas,
            min_ready_seconds: 0,
            selector: PodSelector::Map(&sel),
            template_labels: &sel,
            deleting: false,
        };
        let now = Timestamp::from_second(100).unwrap();
        let few: Vec<Pod> = (0..10).map(owned).collect();
        let many: Vec<Pod> = (0..BURST_REPLICAS as usize + 200).map(owned).collect();
        let cases = [
            ("a small gap is filled at once", target(20), &few, (10, 0)),
            (
                "a large gap, one burst",
                target(BURST_REPLICAS * 10),
                &few,
                (BURST_REPLICAS, 0),
            ),
            (
                "a small excess goes at once",
                target(BURST_REPLICAS + 190),
                &many,
                (0, 10),
            ),
            (
                "a large excess, one burst",
                target(0),
                &many,
                (0, BURST_REPLICAS as usize),
            ),
        ];
        for (name, target, pods, want) in cases {
            let p = plan(&target, pods, now);
            assert_eq!((p.create, p.delete.len()), want, "{name}");
            assert_eq!(
                p.status.replicas,
                pods.len() as i32,
                "{name}: counts every pod"
            );
        }
    }
}
