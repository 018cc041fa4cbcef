//! The DaemonSet controller: one pod per eligible node. A node is eligible
//! when it matches the template's `nodeSelector` and required node
//! affinity and every NoSchedule/NoExecute taint is tolerated (with the
//! tolerations upstream adds to every daemon pod). Each pod is pinned to
//! its node by a required node affinity on `metadata.name` (as Kubernetes
//! does since 1.12) and bound by the scheduler. Templates are recorded as
//! ControllerRevisions; pods carry the revision's `controller-revision-hash`.
//! RollingUpdate (`maxUnavailable`, `maxSurge`) replaces old pods node by
//! node; OnDelete waits for someone to delete them. The status is what
//! `kubectl rollout status ds/…` reads.
//!
//! Not done: adopting orphaned pods, and the per-node backoff upstream
//! applies before replacing a failed pod (a failed pod is replaced at the
//! next sync).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::selectors::{node_selector_matches, tolerations_tolerate};

use crate::deployment::resolve;
use crate::expectations::Expectations;
use crate::pods::{controller_ref, is_available, is_ready, owner_ref};
use crate::replicas::delete_pod;
use crate::revisions::{self, HASH_LABEL};
use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

/// The tolerations the DaemonSet controller adds to every daemon pod
/// (upstream `AddOrUpdateDaemonPodTolerations`), as (key, effect).
pub const DEFAULT_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// The template's tolerations plus the defaults it lacks (and
/// `network-unavailable` for host-network pods).
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut defaults: Vec<(&str, &str)> = DEFAULT_TOLERATIONS.to_vec();
    if spec.host_network == Some(true) {
        defaults.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in defaults {
        let present = out.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        });
        if !present {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
    out
}

/// Whether a daemon pod should run on `node` and whether an existing one
/// may keep running there (only NoExecute taints evict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    pub should_run: bool,
    pub should_continue_running: bool,
}

/// Upstream `NodeShouldRunDaemonPod`.
pub fn eligibility(spec: &PodSpec, node: &Node) -> Eligibility {
    let no = Eligibility {
        should_run: false,
        should_continue_running: false,
    };
    let name = node.name_any();
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if spec.node_name.as_deref().is_some_and(|n| n != name) {
        return no;
    }
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return no;
    }
    if let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !node_selector_matches(required, &name, labels)
    {
        return no;
    }
    let tolerations = daemon_tolerations(spec);
    let mut out = Eligibility {
        should_run: true,
        should_continue_running: true,
    };
    for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
        if tolerations_tolerate(&tolerations, taint) {
            continue;
        }
        match taint.effect.as_str() {
            "NoExecute" => return no,
            "NoSchedule" => out.should_run = false,
            _ => {}
        }
    }
    out
}

/// The node a daemon pod is for: `spec.nodeName`, else the single node its
/// required `metadata.name` affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|f| {
            let values = f.values.as_deref().unwrap_or_default();
            (f.key == "metadata.name" && f.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// Replaces the template's required node affinity with one term naming
/// `node` (upstream `ReplaceDaemonSetPodNodeNameNodeAffinity`); preferred
/// terms stay.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
}

/// What the controller should do for one DaemonSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Nodes to create a pod (of the current template) for.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
    /// Pods are ready but not yet available (minReadySeconds).
    pub recheck_after: Option<Duration>,
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

fn created(pod: &Pod) -> (i64, String) {
    (
        pod.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        pod.name_any(),
    )
}

/// The pure decision. `pods` are the DaemonSet's own pods, `hash` the
/// current template's revision hash.
pub fn plan<N: Borrow<Node>>(
    ds: &DaemonSet,
    nodes: &[N],
    pods: &[&Pod],
    hash: &str,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = ds.spec.as_ref() else {
        return plan;
    };
    let pod_spec = spec.template.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let deleting = ds.metadata.deletion_timestamp.is_some();

    // Live pods per node, oldest first; failed pods go.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Failed") {
            plan.delete.push(pod.name_any());
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|p| created(p));
    }

    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
    let surge_enabled = rolling
        && strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_surge.as_ref())
            .is_some_and(|s| resolve(Some(s), 0, 100, true) > 0);

    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    // Nodes whose pods the rolling update considers: (node, new, old).
    let mut update_nodes: Vec<(String, Option<&Pod>, Option<&Pod>)> = Vec::new();
    let mut missing = 0;
    for node in nodes.iter().map(Borrow::borrow) {
        let name = node.name_any();
        let e = eligibility(&pod_spec, node);
        let here = by_node.get(&name).cloned().unwrap_or_default();
        if e.should_run {
            status.desired_number_scheduled += 1;
            if let Some(first) = here.first() {
                status.current_number_scheduled += 1;
                if is_ready(first) {
                    status.number_ready += 1;
                    if is_available(first, min_ready, now) {
                        status.number_available = Some(status.number_available.unwrap_or(0) + 1);
                    } else {
                        plan.recheck_after = Some(Duration::from_secs(1));
                    }
                }
                if hash_of(first) == Some(hash) {
                    status.updated_number_scheduled =
                        Some(status.updated_number_scheduled.unwrap_or(0) + 1);
                }
            }
        } else if !here.is_empty() {
            status.number_misscheduled += 1;
        }
        if deleting {
            continue;
        }
        if !e.should_continue_running {
            plan.delete.extend(here.iter().map(|p| p.name_any()));
            continue;
        }
        if here.is_empty() {
            if e.should_run {
                plan.create.push(name);
                missing += 1;
            }
            continue;
        }
        // Keep the oldest pod (with surge: the oldest new and oldest old).
        let new = here.iter().copied().find(|p| hash_of(p) == Some(hash));
        let old = here.iter().copied().find(|p| hash_of(p) != Some(hash));
        let keep: Vec<&Pod> = if surge_enabled {
            new.into_iter().chain(old).collect()
        } else {
            here.first().copied().into_iter().collect()
        };
        plan.delete.extend(
            here.iter()
                .filter(|p| !keep.iter().any(|k| k.name_any() == p.name_any()))
                .map(|p| p.name_any()),
        );
        if surge_enabled {
            update_nodes.push((name, new, old));
        } else {
            let only = keep[0];
            if hash_of(only) == Some(hash) {
                update_nodes.push((name, Some(only), None));
            } else {
                update_nodes.push((name, None, Some(only)));
            }
        }
    }
    let available = status.number_available.unwrap_or(0);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.number_available = Some(available);
    status.updated_number_scheduled = Some(status.updated_number_scheduled.unwrap_or(0));
    plan.status = status;

    if rolling && !deleting {
        let desired = plan.status.desired_number_scheduled;
        let ru = strategy.and_then(|s| s.rolling_update.as_ref());
        let max_surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), 0, desired, true);
        let mut max_unavailable = resolve(
            ru.and_then(|r| r.max_unavailable.as_ref()).or(Some(
                &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
            )),
            0,
            desired,
            true,
        );
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        rolling_update(
            &mut plan,
            &update_nodes,
            missing,
            surge_enabled,
            max_surge,
            max_unavailable,
            min_ready,
            now,
        );
    }
    plan
}

/// Upstream `rollingUpdate`: which old pods to delete (no surge) or which
/// nodes get a new pod beside the old one (surge).
#[allow(clippy::too_many_arguments)]
fn rolling_update(
    plan: &mut Plan,
    nodes: &[(String, Option<&Pod>, Option<&Pod>)],
    missing: i32,
    surge: bool,
    max_surge: i32,
    max_unavailable: i32,
    min_ready: i32,
    now: Timestamp,
) {
    if !surge {
        // Nodes waiting for a pod count as unavailable.
        let mut unavailable = missing;
        let mut replace = Vec::new();
        let mut candidates = Vec::new();
        for (_, new, old) in nodes {
            match (new, old) {
                (Some(new), _) => {
                    if !is_available(new, min_ready, now) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !is_available(old, min_ready, now) {
                        replace.push(old.name_any());
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(old.name_any());
                    }
                }
                (None, None) => unavailable += 1,
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        plan.delete.extend(replace);
        plan.delete.extend(candidates.into_iter().take(room));
        return;
    }
    let mut surging = 0;
    let mut allowed = Vec::new();
    let mut candidates = Vec::new();
    for (node, new, old) in nodes {
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if !is_available(old, min_ready, now) {
                    allowed.push(node.clone());
                } else {
                    candidates.push(node.clone());
                }
            }
            (Some(new), Some(old)) => {
                if is_available(new, min_ready, now) {
                    plan.delete.push(old.name_any());
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
    plan.create.extend(allowed);
    plan.create.extend(candidates.into_iter().take(room));
}

/// The pod for `node` from the current template.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Result<Pod, Error> {
    let owner = owner_ref("apps/v1", "DaemonSet", &ds.metadata)
        .ok_or_else(|| Error::Invalid(ds.name_any(), "no uid".into()))?;
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| Error::Invalid(ds.name_any(), "no spec".into()))?;
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    pin_to_node(&mut spec, node);
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    /// Pods created and deleted but not yet seen in the cache, per DaemonSet.
    expectations: Expectations,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid(name.clone(), "no spec".into()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let ds_api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    // Until the cache shows this DaemonSet's last creates and deletes, a
    // decision could place a second pod on a node; look again soon.
    if !ctx.expectations.satisfied(&uid, &ctx.pods) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let owned = ctx.pods.controlled_by(&uid);
    let mine: Vec<&Pod> = owned.iter().map(AsRef::as_ref).collect();
    let revisions: Vec<ControllerRevision> = revs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| controller_ref(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let owner = owner_ref("apps/v1", "DaemonSet", &ds.metadata)
        .ok_or_else(|| Error::Invalid(name.clone(), "no uid".into()))?;
    let in_use: BTreeSet<String> = mine
        .iter()
        .filter_map(|p| hash_of(p))
        .map(|h| format!("{name}-{h}"))
        .collect();
    let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    let rev_plan = revisions::plan(
        &revisions::Owner {
            meta: &ds.metadata,
            owner_ref: owner,
            template: &spec.template,
            collision_count,
            history_limit: spec.revision_history_limit.unwrap_or(10),
        },
        &revisions,
        &in_use,
    );
    if rev_plan.collision {
        let patch = json!({"status": {"collisionCount": collision_count.unwrap_or(0) + 1}});
        ds_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    if ds.metadata.deletion_timestamp.is_none() {
        revisions::apply(&revs_api, &rev_plan).await?;
    }
    let nodes = ctx.nodes.list();
    let plan = plan(&ds, &nodes, &mine, &rev_plan.hash, Timestamp::now());
    for node in &plan.create {
        let created = pods_api
            .create(&PostParams::default(), &pod_for(&ds, node, &rev_plan.hash)?)
            .await?;
        ctx.expectations.created(&uid, &ns, &created);
    }
    for pod in &plan.delete {
        delete_pod(&pods_api, pod).await?;
        ctx.expectations.deleted(&uid, &ns, pod, &mine);
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        tracing::info!(daemonset = %name, created = plan.create.len(), deleted = plan.delete.len(), "synced daemon pods");
    }
    if ds.status.as_ref() != Some(&plan.status) {
        ds_api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": plan.status})),
            )
            .await?;
    }
    let next = plan
        .recheck_after
        .map_or(ctx.config.resync, |d| d.min(ctx.config.resync));
    Ok(Action::requeue(next))
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the DaemonSet controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
        nodes: informers.nodes.clone(),
        expectations: Expectations::new(),
    });
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let sets = controller.store();
    controller
        .owns_shared_stream(informers.pods.subscribe())
        .owns(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        )
        // A node came, went or changed labels or taints: every DaemonSet
        // looks again.
        .watches_shared_stream(informers.nodes.subscribe(), move |_node| {
            sets.state()
                .into_iter()
                .map(|ds| ObjectRef::from_obj(&*ds))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::{NodeSpec, PodTemplateSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const NOW: i64 = 10_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ds(strategy: Option<DaemonSetUpdateStrategy>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("default".into()),
                uid: Some("ds-uid".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector::default(),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec::default()),
                },
                update_strategy: strategy,
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rolling(surge: i32, unavailable: i32) -> Option<DaemonSetUpdateStrategy> {
        Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_surge: Some(IntOrString::Int(surge)),
                max_unavailable: Some(IntOrString::Int(unavailable)),
            }),
        })
    }

    /// A pod on `node` of revision `hash`, ready (available) or not.
    fn dpod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
        let mut p = pod(
            name,
            Some(node),
            if ready { "Running" } else { "Pending" },
            ready.then_some(100),
        );
        p.metadata.labels = Some([(HASH_LABEL.to_string(), hash.to_string())].into());
        p
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints() {
        let mut spec = PodSpec {
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            ..Default::default()
        };
        let cases = [
            (
                "labels match",
                node("a", &[("disk", "ssd")], &[]),
                true,
                true,
            ),
            (
                "labels differ",
                node("b", &[("disk", "hdd")], &[]),
                false,
                false,
            ),
            (
                "untolerated NoSchedule keeps running pods",
                node("c", &[("disk", "ssd")], &[("dedicated", "NoSchedule")]),
                false,
                true,
            ),
            (
                "untolerated NoExecute evicts",
                node("d", &[("disk", "ssd")], &[("dedicated", "NoExecute")]),
                false,
                false,
            ),
            (
                "default tolerations cover not-ready and unschedulable",
                node(
                    "e",
                    &[("disk", "ssd")],
                    &[
                        ("node.kubernetes.io/not-ready", "NoExecute"),
                        ("node.kubernetes.io/unschedulable", "NoSchedule"),
                        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
                    ],
                ),
                true,
                true,
            ),
            (
                "PreferNoSchedule is ignored",
                node("f", &[("disk", "ssd")], &[("soft", "PreferNoSchedule")]),
                true,
                true,
            ),
        ];
        for (name, n, run, cont) in &cases {
            let e = eligibility(&spec, n);
            assert_eq!(
                (e.should_run, e.should_continue_running),
                (*run, *cont),
                "{name}"
            );
        }
        // Required node affinity.
        spec.node_selector = None;
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "zone".into(),
                            operator: "In".into(),
                            values: Some(vec!["z1".into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(eligibility(&spec, &node("z", &[("zone", "z1")], &[])).should_run);
        assert!(!eligibility(&spec, &node("y", &[("zone", "z2")], &[])).should_run);
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let nodes = vec![
            node("a", &[], &[]),
            node("b", &[], &[]),
            node("c", &[], &[("dedicated", "NoExecute")]),
        ];
        let mut dup_old = dpod("a-old", "a", "h1", true);
        dup_old.metadata.creation_timestamp = Some(Time(Timestamp::from_second(10).unwrap()));
        let dup_new = dpod("a-dup", "a", "h1", true);
        let misplaced = dpod("c-pod", "c", "h1", true);
        let failed = {
            let mut p = dpod("b-failed", "b", "h1", false);
            p.status.as_mut().unwrap().phase = Some("Failed".into());
            p
        };
        let p = plan(
            &ds(None),
            &nodes,
            &[&dup_old, &dup_new, &misplaced, &failed],
            "h1",
            now(),
        );
        assert_eq!(p.create, vec!["b".to_string()]);
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["a-dup", "b-failed", "c-pod"]);
        let s = &p.status;
        assert_eq!(s.desired_number_scheduled, 2);
        assert_eq!(s.current_number_scheduled, 1);
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_ready, 1);
        assert_eq!(s.number_available, Some(1));
        assert_eq!(s.number_unavailable, Some(1));
        assert_eq!(s.updated_number_scheduled, Some(1));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn rolling_updates_respect_max_unavailable_and_max_surge() {
        let nodes = vec![
            node("a", &[], &[]),
            node("b", &[], &[]),
            node("c", &[], &[]),
        ];
        struct Case {
            name: &'static str,
            strategy: Option<DaemonSetUpdateStrategy>,
            pods: Vec<Pod>,
            create: Vec<&'static str>,
            delete: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "default replaces one available old pod at a time",
                strategy: None,
                pods: vec![
                    dpod("pa", "a", "old", true),
                    dpod("pb", "b", "old", true),
                    dpod("pc", "c", "old", true),
                ],
                create: vec![],
                delete: vec!["pa"],
            },
            Case {
                name: "waits while a new pod is unavailable",
                strategy: rolling(0, 1),
                pods: vec![
                    dpod("pa", "a", "new", false),
                    dpod("pb", "b", "old", true),
                    dpod("pc", "c", "old", true),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "a node waiting for its pod counts as unavailable",
                strategy: rolling(0, 1),
                pods: vec![dpod("pb", "b", "old", true), dpod("pc", "c", "old", true)],
                create: vec!["a"],
                delete: vec![],
            },
            Case {
                name: "unavailable old pods are replaced at once",
                strategy: rolling(0, 2),
                pods: vec![
                    dpod("pa", "a", "old", false),
                    dpod("pb", "b", "old", true),
                    dpod("pc", "c", "old", true),
                ],
                create: vec![],
                delete: vec!["pa", "pb"],
            },
            Case {
                name: "surge starts a new pod beside the old one",
                strategy: rolling(1, 0),
                pods: vec![
                    dpod("pa", "a", "old", true),
                    dpod("pb", "b", "old", true),
                    dpod("pc", "c", "old", true),
                ],
                create: vec!["a"],
                delete: vec![],
            },
            Case {
                name: "surge deletes the old pod once the new one is available",
                strategy: rolling(1, 0),
                pods: vec![
                    dpod("pa", "a", "old", true),
                    dpod("na", "a", "new", true),
                    dpod("pb", "b", "old", true),
                ],
                create: vec!["c", "b"],
                delete: vec!["pa"],
            },
            Case {
                name: "OnDelete leaves old pods alone",
                strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    rolling_update: None,
                }),
                pods: vec![dpod("pa", "a", "old", true)],
                create: vec!["b", "c"],
                delete: vec![],
            },
        ];
        for c in cases {
            let refs: Vec<&Pod> = c.pods.iter().collect();
            let p = plan(&ds(c.strategy), &nodes, &refs, "new", now());
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(p.delete, c.delete, "{}: delete", c.name);
        }
    }

    #[test]
    fn daemon_pods_are_pinned_to_their_node_and_tolerate_node_conditions() {
        let p = pod_for(&ds(None), "n1", "h1").unwrap();
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        assert_eq!(p.labels().get(HASH_LABEL).map(String::as_str), Some("h1"));
        let spec = p.spec.unwrap();
        assert!(spec.node_name.is_none(), "binding is the scheduler's");
        let tolerations = spec.tolerations.unwrap();
        for (key, effect) in DEFAULT_TOLERATIONS {
            assert!(
                tolerations
                    .iter()
                    .any(|t| t.key.as_deref() == Some(*key) && t.effect.as_deref() == Some(*effect)),
                "{key}"
            );
        }
    }
}
