//! The Deployment controller: one ReplicaSet per pod template (named by the
//! template's hash), RollingUpdate (`maxSurge`, `maxUnavailable`) and
//! Recreate, revisions in `deployment.kubernetes.io/revision`, history
//! trimmed to `revisionHistoryLimit`, pause, and the status and conditions
//! that `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_client::informer::Informer;

use crate::pods::{controller_ref, owner_ref};
use crate::{ControllerConfig, Error, Informers};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

/// What the controller should do for one Deployment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// A new ReplicaSet for the current template.
    pub create: Option<ReplicaSet>,
    /// ReplicaSets whose `spec.replicas` changes.
    pub scale: Vec<(String, i32)>,
    /// ReplicaSets whose revision annotation changes (a rollback made an
    /// old ReplicaSet the new one).
    pub set_revision: Vec<(String, String)>,
    /// Old ReplicaSets beyond the history limit.
    pub delete: Vec<String>,
    pub status: DeploymentStatus,
    /// The Deployment's own revision annotation.
    pub revision: String,
}

/// Upstream's `rand.SafeEncodeString(fmt.Sprint(fnv32a(template, collisionCount)))`:
/// a short name-safe hash of the pod template.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// Drops nulls and empty objects and lists, recursively: upstream compares
/// templates with a semantic equality where an empty struct, map or slice
/// equals an absent one (kubectl sends `resources: {}` on rollback).
pub(crate) fn prune_empty(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => {
            m.retain(|_, child| !prune_empty(child));
            m.is_empty()
        }
        Value::Array(a) => {
            for child in a.iter_mut() {
                prune_empty(child);
            }
            a.is_empty()
        }
        _ => false,
    }
}

/// The template as compared between a Deployment and its ReplicaSets:
/// without the hash label and without empty fields.
fn without_hash(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or(Value::Null);
    prune_empty(&mut v);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            m.remove("labels");
        }
    }
    v
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

/// Resolves an int-or-percent against `total`, rounding up or down.
pub fn resolve(v: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    let percent = match v {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s
            .trim_end_matches('%')
            .parse::<i32>()
            .unwrap_or(default_percent),
        None => default_percent,
    };
    let scaled = i64::from(percent) * i64::from(total);
    let r = if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    };
    r as i32
}

/// (maxSurge, maxUnavailable) for a rolling update, as upstream resolves
/// them (both zero becomes maxUnavailable 1).
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), 25, want, true);
    let mut unavailable = resolve(ru.and_then(|r| r.max_unavailable.as_ref()), 25, want, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// The pure decision for one Deployment, given the ReplicaSets it owns.
pub fn plan(d: &Deployment, owned: &[ReplicaSet], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = d.spec.as_ref() else {
        return plan;
    };
    let want = spec.replicas.unwrap_or(1).max(0);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let paused = spec.paused.unwrap_or(false);
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    let target = without_hash(&spec.template);

    let mut new_rs: Option<&ReplicaSet> = None;
    let mut old: Vec<&ReplicaSet> = Vec::new();
    for rs in owned {
        let same = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| without_hash(t) == target);
        if same && new_rs.is_none() {
            new_rs = Some(rs);
        } else {
            old.push(rs);
        }
    }
    old.sort_by_key(|rs| revision_of(rs));
    let max_old_revision = old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let (surge, unavailable) = surge_and_unavailable(d);
    let old_total: i32 = old.iter().map(|rs| replicas(rs)).sum();
    let old_running: i32 = old.iter().map(|rs| status_of(rs).0).sum();

    // The new ReplicaSet: created, or its revision brought up to date.
    let new_revision;
    match new_rs {
        None => {
            new_revision = max_old_revision + 1;
            let initial = if recreate {
                if old_total == 0 && old_running == 0 {
                    want
                } else {
                    0
                }
            } else if old.is_empty() {
                want
            } else {
                (want + surge - old_total).clamp(0, want)
            };
            let initial = if paused { 0 } else { initial };
            plan.create = Some(new_replica_set(d, &hash, initial, new_revision, surge));
        }
        Some(rs) => {
            let rev = revision_of(rs);
            new_revision = if rev <= max_old_revision {
                max_old_revision + 1
            } else {
                rev
            };
            if new_revision != rev {
                plan.set_revision
                    .push((rs.name_any(), new_revision.to_string()));
            }
        }
    }
    plan.revision = new_revision.to_string();

    // Scaling.
    if let (Some(new), false) = (new_rs, paused) {
        let new_name = new.name_any();
        let new_spec = replicas(new);
        if recreate {
            for rs in &old {
                if replicas(rs) > 0 {
                    plan.scale.push((rs.name_any(), 0));
                }
            }
            if old_total == 0 && old_running == 0 && new_spec != want {
                plan.scale.push((new_name, want));
            }
        } else {
            let total = new_spec + old_total;
            let mut new_target = new_spec;
            if new_spec < want {
                new_target = new_spec + (want + surge - total).clamp(0, want - new_spec);
            } else if new_spec > want {
                new_target = want;
            }
            if new_target != new_spec {
                plan.scale.push((new_name, new_target));
            }
            // Old ReplicaSets: keep at least want - maxUnavailable available.
            let min_available = want - unavailable;
            let (_, _, new_available) = status_of(new);
            let new_unavailable = (new_spec - new_available).max(0);
            let all = new_spec + old_total;
            let mut budget = all - min_available - new_unavailable;
            let mut old_targets: BTreeMap<String, i32> =
                old.iter().map(|rs| (rs.name_any(), replicas(rs))).collect();
            if budget > 0 {
                // First the unhealthy replicas of old sets.
                for rs in &old {
                    let (_, _, avail) = status_of(rs);
                    let cur = old_targets[&rs.name_any()];
                    let unhealthy = (cur - avail).max(0).min(budget);
                    if unhealthy > 0 {
                        old_targets.insert(rs.name_any(), cur - unhealthy);
                        budget -= unhealthy;
                    }
                }
                // Then available ones, oldest first, keeping min_available.
                let available: i32 = owned.iter().map(|rs| status_of(rs).2).sum();
                let mut can = (available - min_available).min(budget).max(0);
                for rs in &old {
                    if can == 0 {
                        break;
                    }
                    let cur = old_targets[&rs.name_any()];
                    let down = cur.min(can);
                    if down > 0 {
                        old_targets.insert(rs.name_any(), cur - down);
                        can -= down;
                    }
                }
            }
            for rs in &old {
                let t = old_targets[&rs.name_any()];
                if t != replicas(rs) {
                    plan.scale.push((rs.name_any(), t));
                }
            }
        }
    }

    // History: fully scaled-down old sets beyond the limit, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let dead: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_of(rs).0 == 0)
        .collect();
    if dead.len() > limit {
        plan.delete = dead[..dead.len() - limit]
            .iter()
            .map(|rs| rs.name_any())
            .collect();
    }

    plan.status = status(
        d,
        new_rs,
        owned,
        plan.create.as_ref(),
        now,
        (surge, unavailable),
    );
    plan
}

fn new_replica_set(
    d: &Deployment,
    hash: &str,
    replicas: i32,
    revision: i64,
    surge: i32,
) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let annotations: BTreeMap<String, String> = [
        (REVISION.to_string(), revision.to_string()),
        (DESIRED_REPLICAS.to_string(), want.to_string()),
        (MAX_REPLICAS.to_string(), (want + surge).to_string()),
    ]
    .into();
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner_ref("apps/v1", "Deployment", &d.metadata).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Sets a condition, keeping its transition time when the status is the
/// same and leaving it untouched when status and reason are.
fn set(conditions: &mut Vec<DeploymentCondition>, c: DeploymentCondition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(existing) => {
            let transitioned = existing.status != c.status;
            let same = existing.status == c.status && existing.reason == c.reason;
            if !same {
                let transition = if transitioned {
                    c.last_transition_time.clone()
                } else {
                    existing.last_transition_time.clone()
                };
                *existing = DeploymentCondition {
                    last_transition_time: transition,
                    ..c
                };
            }
        }
        None => conditions.push(c),
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    owned: &[ReplicaSet],
    created: Option<&ReplicaSet>,
    now: Timestamp,
    (_surge, unavailable): (i32, i32),
) -> DeploymentStatus {
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let old = d.status.clone().unwrap_or_default();
    let total: i32 = owned.iter().map(|rs| status_of(rs).0).sum();
    let ready: i32 = owned.iter().map(|rs| status_of(rs).1).sum();
    let available: i32 = owned.iter().map(|rs| status_of(rs).2).sum();
    let updated = new_rs.map(|rs| status_of(rs).0).unwrap_or(0);
    let new_name = new_rs
        .or(created)
        .map(|rs| rs.name_any())
        .unwrap_or_default();

    let mut conditions = old.conditions.clone().unwrap_or_default();
    if available >= want - unavailable {
        set(
            &mut conditions,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set(
            &mut conditions,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let complete = new_rs.is_some() && updated == want && available >= want && total == want;
    let old_progress = (
        old.updated_replicas,
        old.ready_replicas,
        old.available_replicas,
        old.replicas,
    );
    let progressed = old_progress != (Some(updated), Some(ready), Some(available), Some(total));
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    let last_progress = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0.as_second());
    if spec.paused.unwrap_or(false) {
        set(
            &mut conditions,
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                now,
            ),
        );
    } else if complete {
        set(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                now,
            ),
        );
    } else if created.is_some() {
        set(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{new_name}\""),
                now,
            ),
        );
    } else if progressed || last_progress.is_none() {
        // Progress refreshes the update time even without a transition.
        let c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
            now,
        );
        match conditions.iter_mut().find(|x| x.type_ == "Progressing") {
            Some(existing) if existing.status == "True" => {
                existing.reason = c.reason;
                existing.message = c.message;
                existing.last_update_time = c.last_update_time;
            }
            _ => set(&mut conditions, c),
        }
    } else if last_progress.is_some_and(|t| now.as_second() - t > deadline) {
        set(
            &mut conditions,
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                now,
            ),
        );
    }

    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        conditions: Some(conditions),
        collision_count: old.collision_count,
        ..Default::default()
    }
}

/// Status equal but for condition timestamps (so an unchanged status is not
/// written again).
fn same_status(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        if let Some(cs) = s.conditions.as_mut() {
            for c in cs {
                c.last_update_time = None;
                c.last_transition_time = None;
            }
        }
        s
    };
    strip(a) == strip(b)
}

/// Whether the ReplicaSet `name` (read from the API, not the cache) is
/// controlled by the Deployment with this uid.
async fn owned_by(api: &Api<ReplicaSet>, name: &str, uid: &str) -> Result<bool, Error> {
    match api.get_opt(name).await? {
        Some(rs) => Ok(controller_ref(&rs.metadata).is_some_and(|r| r.uid == uid)),
        None => Ok(false),
    }
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    replica_sets: Informer<ReplicaSet>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<ReplicaSet> = ctx
        .replica_sets
        .controlled_by(&uid)
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .map(|rs| rs.as_ref().clone())
        .collect();
    let plan = plan(&d, &owned, Timestamp::now());

    if let Some(rs) = &plan.create {
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(_) => {
                tracing::info!(deployment = %name, replicaset = %rs.name_any(), "created replica set")
            }
            Err(kube::Error::Api(s))
                if s.code == 409 && owned_by(&rs_api, &rs.name_any(), &uid).await? =>
            {
                // Ours, created by an earlier reconcile and not in the
                // cache yet: its event brings this back.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A ReplicaSet of that name exists but is not ours or has
                // another template: bump collisionCount to get a new hash.
                let count = d
                    .status
                    .as_ref()
                    .and_then(|s| s.collision_count)
                    .unwrap_or(0)
                    + 1;
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                )
                .await?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (rs, revision) in &plan.set_revision {
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        rs_api
            .patch(rs, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (surge, _) = surge_and_unavailable(&d);
    for (rs, replicas) in &plan.scale {
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: (want + surge).to_string()}},
            "spec": {"replicas": replicas},
        });
        rs_api
            .patch(rs, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(deployment = %name, replicaset = %rs, replicas, "scaled replica set");
    }
    for rs in &plan.delete {
        match rs_api.delete(rs, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let current_revision = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned();
    if current_revision.as_deref() != Some(plan.revision.as_str()) {
        let patch = json!({"metadata": {"annotations": {REVISION: plan.revision}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let old_status = d.status.clone().unwrap_or_default();
    if !same_status(&old_status, &plan.status) {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": plan.status})),
        )
        .await?;
    }
    let busy = !plan.scale.is_empty() || plan.create.is_some();
    Ok(Action::requeue(if busy {
        Duration::from_secs(1)
    } else {
        ctx.config.resync.min(Duration::from_secs(30))
    }))
}

fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(deployment = %d.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the Deployment controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        replica_sets: informers.replica_sets.clone(),
    });
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.replica_sets.subscribe())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn deployment(replicas: i32, image: &str) -> Deployment {
        let labels: BTreeMap<_, _> = [("app".to_string(), "web".to_string())].into();
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The ReplicaSet the controller would create, with some replicas up.
    fn rs_for(d: &Deployment, replicas: i32, available: i32, revision: i64) -> ReplicaSet {
        let mut rs = plan(d, &[], Timestamp::now()).create.unwrap();
        rs.spec.as_mut().unwrap().replicas = Some(replicas);
        rs.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REVISION.into(), revision.to_string());
        rs.status = Some(ReplicaSetStatus {
            replicas,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        });
        rs
    }

    #[test]
    fn templates_differing_only_by_empty_fields_are_the_same_template() {
        let d = deployment(2, "nginx:1");
        let mut rs = rs_for(&d, 2, 2, 1);
        let t = rs.spec.as_mut().unwrap().template.as_mut().unwrap();
        t.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        t.metadata.as_mut().unwrap().annotations = Some(Default::default());
        let p = plan(&d, &[rs], Timestamp::now());
        assert!(
            p.create.is_none(),
            "no new ReplicaSet for an equal template"
        );
    }

    #[test]
    fn template_hash_is_stable_and_name_safe() {
        let d = deployment(3, "nginx:1");
        let t = &d.spec.as_ref().unwrap().template;
        let h = template_hash(t, None);
        assert_eq!(h, template_hash(t, None));
        assert_ne!(h, template_hash(t, Some(1)));
        assert_ne!(
            h,
            template_hash(&deployment(3, "nginx:2").spec.unwrap().template, None)
        );
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
    }

    #[test]
    fn first_rollout_creates_a_full_replica_set_with_revision_one() {
        let d = deployment(3, "nginx:1");
        let p = plan(&d, &[], Timestamp::now());
        let rs = p.create.unwrap();
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(rs.metadata.annotations.unwrap()[REVISION], "1");
        assert!(
            rs.spec
                .unwrap()
                .selector
                .match_labels
                .unwrap()
                .contains_key(HASH_LABEL)
        );
        assert_eq!(p.revision, "1");
    }

    #[test]
    fn rolling_update_surges_then_scales_old_down_keeping_availability() {
        // 4 replicas, maxSurge 1, maxUnavailable 0: one new pod at a time.
        let mut d = deployment(4, "nginx:2");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        });
        let old = rs_for(&deployment(4, "nginx:1"), 4, 4, 1);
        // Step 1: the new ReplicaSet is created with one replica.
        let p = plan(&d, std::slice::from_ref(&old), Timestamp::now());
        let new = p.create.unwrap();
        assert_eq!(new.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(new.metadata.annotations.as_ref().unwrap()[REVISION], "2");
        // Step 2: the new pod is not available yet: nothing more moves.
        let new1 = rs_for(&d, 1, 0, 2);
        let p = plan(&d, &[old.clone(), new1], Timestamp::now());
        assert!(p.scale.is_empty(), "{:?}", p.scale);
        // Step 3: it is available: one old pod goes.
        let new1 = rs_for(&d, 1, 1, 2);
        let p = plan(&d, &[old.clone(), new1], Timestamp::now());
        assert_eq!(p.scale, vec![(old.name_any(), 3)]);
        // Step 4: after that, the new set grows by one.
        let mut old3 = old.clone();
        old3.spec.as_mut().unwrap().replicas = Some(3);
        old3.status.as_mut().unwrap().available_replicas = Some(3);
        let new1 = rs_for(&d, 1, 1, 2);
        let p = plan(&d, &[old3, new1.clone()], Timestamp::now());
        assert_eq!(p.scale, vec![(new1.name_any(), 2)]);
    }

    #[test]
    fn recreate_scales_old_to_zero_before_the_new_set_grows() {
        let mut d = deployment(2, "nginx:2");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = rs_for(&deployment(2, "nginx:1"), 2, 2, 1);
        let p = plan(&d, std::slice::from_ref(&old), Timestamp::now());
        assert_eq!(p.create.unwrap().spec.unwrap().replicas, Some(0));
        let new0 = rs_for(&d, 0, 0, 2);
        let p = plan(&d, &[old.clone(), new0.clone()], Timestamp::now());
        assert_eq!(p.scale, vec![(old.name_any(), 0)]);
        let mut gone = old.clone();
        gone.spec.as_mut().unwrap().replicas = Some(0);
        gone.status = Some(Default::default());
        let p = plan(&d, &[gone, new0.clone()], Timestamp::now());
        assert_eq!(p.scale, vec![(new0.name_any(), 2)]);
    }

    #[test]
    fn complete_rollout_reports_new_replica_set_available_and_trims_history() {
        let mut d = deployment(2, "nginx:3");
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let dead = |img: &str, rev| {
            let mut rs = rs_for(&deployment(2, img), 0, 0, rev);
            rs.status = Some(Default::default());
            rs
        };
        let (a, b) = (dead("nginx:1", 1), dead("nginx:2", 2));
        let new = rs_for(&d, 2, 2, 3);
        let p = plan(&d, &[a.clone(), b, new.clone()], Timestamp::now());
        assert_eq!(p.delete, vec![a.name_any()]);
        let progressing = p
            .status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            progressing.reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(p.status.updated_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(2));
        assert_eq!(p.status.observed_generation, Some(1));
    }

    #[test]
    fn rolling_back_to_an_old_template_gives_that_replica_set_a_new_revision() {
        let d = deployment(2, "nginx:1");
        let original = rs_for(&d, 0, 0, 1);
        let newer = rs_for(&deployment(2, "nginx:2"), 2, 2, 2);
        let p = plan(&d, &[original.clone(), newer], Timestamp::now());
        assert!(p.create.is_none());
        assert_eq!(p.set_revision, vec![(original.name_any(), "3".to_string())]);
        assert_eq!(p.revision, "3");
    }

    #[test]
    fn surge_and_unavailable_resolve_percentages_like_upstream() {
        let cases = [
            (10, None, None, (3, 2)),
            (
                4,
                Some(IntOrString::String("50%".into())),
                Some(IntOrString::String("0%".into())),
                (2, 0),
            ),
            (
                1,
                Some(IntOrString::Int(0)),
                Some(IntOrString::Int(0)),
                (0, 1),
            ),
        ];
        for (replicas, surge, unavailable, want) in cases {
            let mut d = deployment(replicas, "x");
            d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: surge,
                    max_unavailable: unavailable,
                }),
            });
            assert_eq!(surge_and_unavailable(&d), want, "replicas {replicas}");
        }
    }
}
