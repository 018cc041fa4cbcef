//! The StatefulSet controller: pods with stable identities `<set>-<i>`
//! (labels `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index`, hostname, and the governing service as
//! subdomain), one PersistentVolumeClaim `<claim>-<set>-<i>` per
//! `volumeClaimTemplates` entry and ordinal (kept on scale-down unless
//! `persistentVolumeClaimRetentionPolicy` says Delete), `OrderedReady`
//! (create in order, each waiting for its predecessor to be Running and
//! Ready; delete in reverse, one at a time) and `Parallel` pod management,
//! RollingUpdate with `partition` (highest ordinal first, waiting for
//! readiness) and OnDelete, ControllerRevisions, and the status `kubectl
//! rollout status sts/…` reads.
//!
//! Not done: adopting orphaned pods, `maxUnavailable` for rolling updates
//! (alpha upstream; one pod at a time here), and updating the identity of
//! a pod someone relabelled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::pods::{controller_ref, is_available, is_ready, owner_ref};
use crate::replicas::delete_pod;
use crate::revisions::{self, HASH_LABEL};
use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<i>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|i: &i32| *i >= 0)
}

/// The claim for template `claim` of `set` at ordinal `i`.
pub fn claim_name(claim: &str, set: &str, i: i32) -> String {
    format!("{claim}-{set}-{i}")
}

/// Which revision a new pod is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    Update,
}

/// The revisions a plan works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revisions {
    /// `status.currentRevision` (the update revision on first sync).
    pub current: String,
    /// The revision of the current template.
    pub update: String,
}

/// What the controller should do for one StatefulSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Claims to create (all ordinals' claims missing for pods that exist
    /// or are about to).
    pub create_claims: Vec<PersistentVolumeClaim>,
    /// Pods to create: ordinal and the revision to make it from.
    pub create: Vec<(i32, Which)>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// Claims of removed ordinals to delete (retention policy Delete).
    pub delete_claims: Vec<String>,
    pub status: StatefulSetStatus,
    pub recheck_after: Option<Duration>,
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn healthy(p: &Pod) -> bool {
    !terminating(p) && phase(p) == Some("Running") && is_ready(p)
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

/// The pure decision. `pods` are the set's own pods, `claims` the
/// namespace's PersistentVolumeClaims.
pub fn plan(
    sts: &StatefulSet,
    pods: &[&Pod],
    claims: &[PersistentVolumeClaim],
    revs: &Revisions,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = sts.spec.as_ref() else {
        return plan;
    };
    let name = sts.name_any();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let end = start + replicas;
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let deleting = sts.metadata.deletion_timestamp.is_some();

    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in pods {
        if let Some(i) = ordinal_of(&name, &pod.name_any()) {
            // Two pods cannot share a name; keep the first seen.
            by_ordinal.entry(i).or_insert(pod);
        }
    }

    // Status from what exists.
    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
        current_revision: Some(revs.current.clone()),
        update_revision: Some(revs.update.clone()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for pod in by_ordinal.values() {
        status.replicas += 1;
        if healthy(pod) {
            ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            } else {
                plan.recheck_after = Some(Duration::from_secs(1));
            }
        }
        if !terminating(pod) {
            if revision_of(pod) == Some(revs.current.as_str()) {
                current += 1;
            }
            if revision_of(pod) == Some(revs.update.as_str()) {
                updated += 1;
            }
        }
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    if updated == status.replicas && ready == status.replicas && status.replicas == replicas {
        status.current_revision = Some(revs.update.clone());
        status.current_replicas = Some(updated);
    }
    plan.status = status;
    if deleting {
        return plan;
    }

    // Claims: every ordinal in range that has or gets a pod.
    let existing_claims: BTreeSet<String> = claims.iter().map(|c| c.name_any()).collect();
    let templates = spec.volume_claim_templates.clone().unwrap_or_default();
    let claims_for = |i: i32, plan: &mut Plan| {
        for t in &templates {
            let cname = claim_name(&t.name_any(), &name, i);
            let planned = plan.create_claims.iter().any(|c| c.name_any() == cname);
            if !existing_claims.contains(&cname) && !planned {
                plan.create_claims.push(new_claim(sts, t, i));
            }
        }
    };

    // Pods in range: create missing ones, replace failed ones; with
    // OrderedReady stop at the first that is not Running and Ready.
    let mut blocked = false;
    for i in start..end {
        match by_ordinal.get(&i) {
            None => {
                claims_for(i, &mut plan);
                let which = if rolling && i - start < partition {
                    Which::Current
                } else {
                    Which::Update
                };
                plan.create.push((i, which));
                if monotonic {
                    blocked = true;
                    break;
                }
            }
            Some(pod) => {
                claims_for(i, &mut plan);
                if phase(pod) == Some("Failed") && !terminating(pod) {
                    plan.delete.push(pod.name_any());
                    blocked = true;
                    if monotonic {
                        break;
                    }
                } else if !healthy(pod) {
                    blocked = true;
                    if monotonic {
                        break;
                    }
                }
            }
        }
    }

    // Condemned pods (outside the range), highest ordinal first.
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(i, _)| **i < start || **i >= end)
        .map(|(_, p)| *p)
        .collect();
    if !monotonic {
        plan.delete.extend(
            condemned
                .iter()
                .filter(|p| !terminating(p))
                .map(|p| p.name_any()),
        );
    } else if !blocked && let Some(first) = condemned.first() {
        if !terminating(first) {
            plan.delete.push(first.name_any());
        }
        blocked = true;
    }

    // Claims of removed ordinals, once their pod is gone.
    let when_scaled = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref());
    if when_scaled == Some("Delete") {
        for c in claims {
            let cname = c.name_any();
            for t in &templates {
                let Some(i) = cname
                    .strip_prefix(&format!("{}-", t.name_any()))
                    .and_then(|rest| ordinal_of(&name, rest))
                else {
                    continue;
                };
                if (i < start || i >= end) && !by_ordinal.contains_key(&i) {
                    plan.delete_claims.push(cname.clone());
                }
            }
        }
    }

    // Rolling update: highest ordinal first, down to the partition, one
    // pod at a time, each waiting for the previous to be healthy.
    if rolling && !blocked && plan.create.is_empty() && condemned.is_empty() {
        for i in (start + partition..end).rev() {
            let Some(pod) = by_ordinal.get(&i) else { break };
            if revision_of(pod) != Some(revs.update.as_str()) && !terminating(pod) {
                plan.delete.push(pod.name_any());
                break;
            }
            if !healthy(pod) {
                break;
            }
        }
    }
    plan
}

fn new_claim(
    sts: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let spec = sts.spec.as_ref();
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(ml) = spec.and_then(|s| s.selector.match_labels.as_ref()) {
        labels.extend(ml.clone());
    }
    let delete_with_set = spec
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(&template.name_any(), &sts.name_any(), ordinal)),
            namespace: sts.namespace(),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references: delete_with_set
                .then(|| owner_ref("apps/v1", "StatefulSet", &sts.metadata))
                .flatten()
                .map(|o| vec![o]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The pod for `ordinal` from `template` (the revision `revision`'s).
pub fn pod_for(
    sts: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
) -> Result<Pod, Error> {
    let set = sts.name_any();
    let owner = owner_ref("apps/v1", "StatefulSet", &sts.metadata)
        .ok_or_else(|| Error::Invalid(set.clone(), "no uid".into()))?;
    let name = format!("{set}-{ordinal}");
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(svc) = sts
        .spec
        .as_ref()
        .and_then(|s| s.service_name.as_ref())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(svc.clone());
    }
    let claims = sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for c in &claims {
            let vname = c.name_any();
            volumes.retain(|v| v.name != vname);
            volumes.push(Volume {
                name: vname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&vname, &set, ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.namespace(),
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
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let spec = sts
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid(name.clone(), "no spec".into()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);

    // From the shared cache: pod names are fixed, so a decision on a cache
    // that lags can at worst repeat a create (409) or a delete (404).
    let owned = ctx.pods.controlled_by(&uid);
    let mine: Vec<&Pod> = owned.iter().map(AsRef::as_ref).collect();
    let revisions: Vec<ControllerRevision> = revs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| controller_ref(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let owner = owner_ref("apps/v1", "StatefulSet", &sts.metadata)
        .ok_or_else(|| Error::Invalid(name.clone(), "no uid".into()))?;
    let status_current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| !c.is_empty());
    let mut in_use: BTreeSet<String> = mine
        .iter()
        .filter_map(|p| revision_of(p).map(str::to_string))
        .collect();
    in_use.extend(status_current.clone());
    let collision_count = sts.status.as_ref().and_then(|s| s.collision_count);
    let rev_plan = revisions::plan(
        &revisions::Owner {
            meta: &sts.metadata,
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
        sts_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    if sts.metadata.deletion_timestamp.is_none() {
        revisions::apply(&revs_api, &rev_plan).await?;
    }
    // The current revision's template, if it is still recorded.
    let current_template = status_current.as_ref().and_then(|c| {
        revisions
            .iter()
            .find(|r| r.name_any() == *c)
            .and_then(revisions::template_of)
    });
    let revs = Revisions {
        current: if current_template.is_some() {
            status_current.clone().unwrap_or_default()
        } else {
            rev_plan.name.clone()
        },
        update: rev_plan.name.clone(),
    };
    let claims = claims_api.list(&ListParams::default()).await?.items;
    let plan = plan(&sts, &mine, &claims, &revs, Timestamp::now());

    for claim in &plan.create_claims {
        match claims_api.create(&PostParams::default(), claim).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (ordinal, which) in &plan.create {
        let (template, revision) = match (which, &current_template) {
            (Which::Current, Some(t)) => (t, revs.current.as_str()),
            _ => (&spec.template, revs.update.as_str()),
        };
        let pod = pod_for(&sts, template, *ordinal, revision)?;
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            // The old pod of that name is still going away.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.delete {
        delete_pod(&pods_api, pod).await?;
    }
    for claim in &plan.delete_claims {
        match claims_api
            .delete(claim, &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        tracing::info!(statefulset = %name, created = ?plan.create, deleted = ?plan.delete, "synced stateful pods");
    }
    if sts.status.as_ref() != Some(&plan.status) {
        sts_api
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

fn error_policy(sts: Arc<StatefulSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(statefulset = %sts.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the StatefulSet controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
    });
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.pods.subscribe())
    .owns(
        Api::<ControllerRevision>::all(client),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetPersistentVolumeClaimRetentionPolicy,
        StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn now() -> Timestamp {
        Timestamp::from_second(10_000).unwrap()
    }

    fn revs() -> Revisions {
        Revisions {
            current: "web-old".into(),
            update: "web-new".into(),
        }
    }

    fn sts(replicas: i32, parallel: bool, partition: Option<i32>) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("sts-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("web".into()),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                pod_management_policy: parallel.then(|| "Parallel".to_string()),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: partition.map(|p| RollingUpdateStatefulSetStrategy {
                        partition: Some(p),
                        max_unavailable: None,
                    }),
                }),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }]),
                template: PodTemplateSpec::default(),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Pod `web-<i>` of `revision`, healthy or pending.
    fn spod(i: i32, revision: &str, healthy: bool) -> Pod {
        let mut p = pod(
            &format!("web-{i}"),
            Some("n"),
            if healthy { "Running" } else { "Pending" },
            healthy.then_some(100),
        );
        p.metadata.labels = Some([(HASH_LABEL.to_string(), revision.to_string())].into());
        p
    }

    fn claim(name: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn ordinals_parse_only_from_the_sets_own_names() {
        let cases = [
            ("web-0", Some(0)),
            ("web-12", Some(12)),
            ("web-01", None),
            ("web-", None),
            ("webx-1", None),
            ("web-a", None),
            ("web-1-2", None),
        ];
        for (name, want) in cases {
            assert_eq!(ordinal_of("web", name), want, "{name}");
        }
    }

    #[test]
    fn pods_are_created_deleted_and_updated_in_order() {
        struct Case {
            name: &'static str,
            set: StatefulSet,
            pods: Vec<Pod>,
            create: Vec<(i32, Which)>,
            delete: Vec<&'static str>,
        }
        let new = |i| spod(i, "web-new", true);
        let old = |i| spod(i, "web-old", true);
        let cases = [
            Case {
                name: "ordered: first pod only",
                set: sts(3, false, None),
                pods: vec![],
                create: vec![(0, Which::Update)],
                delete: vec![],
            },
            Case {
                name: "ordered: next pod once the previous is ready",
                set: sts(3, false, None),
                pods: vec![new(0)],
                create: vec![(1, Which::Update)],
                delete: vec![],
            },
            Case {
                name: "ordered: waits for a pending predecessor",
                set: sts(3, false, None),
                pods: vec![new(0), spod(1, "web-new", false)],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "parallel: all at once",
                set: sts(3, true, None),
                pods: vec![],
                create: vec![(0, Which::Update), (1, Which::Update), (2, Which::Update)],
                delete: vec![],
            },
            Case {
                name: "ordered: scale down highest first, one at a time",
                set: sts(1, false, None),
                pods: vec![new(0), new(1), new(2)],
                create: vec![],
                delete: vec!["web-2"],
            },
            Case {
                name: "parallel: scale down all at once",
                set: sts(1, true, None),
                pods: vec![new(0), new(1), new(2)],
                create: vec![],
                delete: vec!["web-2", "web-1"],
            },
            Case {
                name: "failed pods are deleted to be recreated",
                set: sts(2, false, None),
                pods: vec![new(0), {
                    let mut p = new(1);
                    p.status.as_mut().unwrap().phase = Some("Failed".into());
                    p
                }],
                create: vec![],
                delete: vec!["web-1"],
            },
            Case {
                name: "rolling update starts at the highest ordinal",
                set: sts(3, false, None),
                pods: vec![old(0), old(1), old(2)],
                create: vec![],
                delete: vec!["web-2"],
            },
            Case {
                name: "rolling update continues downwards",
                set: sts(3, false, None),
                pods: vec![old(0), old(1), new(2)],
                create: vec![],
                delete: vec!["web-1"],
            },
            Case {
                name: "rolling update waits for the updated pod to be ready",
                set: sts(3, true, None),
                pods: vec![old(0), old(1), spod(2, "web-new", false)],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "partition keeps lower ordinals on the current revision",
                set: sts(3, false, Some(2)),
                pods: vec![old(0), old(1), new(2)],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "pods below the partition are recreated from the current revision",
                set: sts(3, true, Some(2)),
                pods: vec![old(0), new(2)],
                create: vec![(1, Which::Current)],
                delete: vec![],
            },
        ];
        for c in cases {
            let refs: Vec<&Pod> = c.pods.iter().collect();
            let p = plan(&c.set, &refs, &[], &revs(), now());
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(p.delete, c.delete, "{}: delete", c.name);
        }
    }

    #[test]
    fn claims_are_created_per_ordinal_and_kept_unless_the_policy_deletes_them() {
        let set = sts(2, false, None);
        let p = plan(&set, &[], &[], &revs(), now());
        let names: Vec<String> = p.create_claims.iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["data-web-0"]);
        assert_eq!(
            p.create_claims[0].labels().get("app").map(String::as_str),
            Some("web")
        );

        let pod0 = spod(0, "web-new", true);
        let claims = [
            claim("data-web-0"),
            claim("data-web-1"),
            claim("data-web-2"),
        ];
        let p = plan(&sts(1, false, None), &[&pod0], &claims, &revs(), now());
        assert!(p.delete_claims.is_empty(), "retained by default");

        let mut deleting = sts(1, false, None);
        deleting
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy =
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some("Delete".into()),
                when_deleted: Some("Delete".into()),
            });
        let p = plan(&deleting, &[&pod0], &claims, &revs(), now());
        assert_eq!(p.delete_claims, ["data-web-1", "data-web-2"]);
        let p = plan(&deleting, &[], &[], &revs(), now());
        assert!(
            p.create_claims[0].metadata.owner_references.is_some(),
            "whenDeleted=Delete makes the set own its claims"
        );
    }

    #[test]
    fn status_tracks_revisions_and_completes_the_rollout() {
        let set = sts(2, false, None);
        let (a, b) = (spod(0, "web-old", true), spod(1, "web-new", true));
        let p = plan(&set, &[&a, &b], &[], &revs(), now());
        let s = &p.status;
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.current_replicas, Some(1));
        assert_eq!(s.updated_replicas, Some(1));
        assert_eq!(s.current_revision.as_deref(), Some("web-old"));
        assert_eq!(s.update_revision.as_deref(), Some("web-new"));

        let a = spod(0, "web-new", true);
        let p = plan(&set, &[&a, &b], &[], &revs(), now());
        assert_eq!(p.status.current_revision.as_deref(), Some("web-new"));
        assert_eq!(p.status.current_replicas, Some(2));
    }

    #[test]
    fn pods_get_stable_identity_and_their_claims() {
        let set = sts(3, false, None);
        let p = pod_for(&set, &PodTemplateSpec::default(), 2, "web-new").unwrap();
        assert_eq!(p.name_any(), "web-2");
        let labels = p.labels();
        assert_eq!(
            labels.get(POD_NAME_LABEL).map(String::as_str),
            Some("web-2")
        );
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("web-new"));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-2")
        );
    }
}
