//! The Job controller: runs pods to completion. `completions` and
//! `parallelism`, NonIndexed and Indexed completion modes, `backoffLimit`
//! with exponential delay between failed attempts (10 s doubling, at most
//! 6 min), `activeDeadlineSeconds`, `suspend`, and `ttlSecondsAfterFinished`
//! (the finished Job is deleted, with its pods, after that long).
//!
//! Pods are the Job's by controller owner reference, read from the shared
//! pod cache; creates and deletes are recorded as expectations so a cache
//! that lags does not start a pod twice.
//!
//! Finished pods are counted as upstream does since 1.26, with the
//! `batch.kubernetes.io/job-tracking` finalizer: every pod is created with
//! it, so a finished pod cannot disappear before it is counted. A finished
//! pod's uid goes first into `status.uncountedTerminatedPods` (written
//! before anything else happens to the pod), then its finalizer is removed,
//! then, once the cache shows the pod without the finalizer (or gone), the
//! uid moves from `uncountedTerminatedPods` into `succeeded` / `failed`.
//! A pod deleted before it succeeded counts as failed (upstream's default
//! `podReplacementPolicy: TerminatingOrFailed`). Once the Job is finished or
//! being deleted, finalizers are removed from all its pods without further
//! counting; pods whose Job is gone lose theirs too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::expectations::Expectations;
use crate::pods::{controller_ref, is_ready, owner_ref};
use crate::replicas::delete_pod;
use crate::{ControllerConfig, Error, Informers};
use futures::future::join_all;
use kube::runtime::reflector::{ObjectRef, Store};
use skiff_client::informer::Informer;

pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// Keeps a Job's finished pod until the Job counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// What the controller should do for one Job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to create: `Some(index)` in Indexed mode.
    pub create: Vec<Option<i32>>,
    /// Active pods to delete (failure, deadline, suspend, too many).
    pub delete: Vec<String>,
    pub status: JobStatus,
    /// Look again after this long (backoff, deadline, TTL).
    pub recheck_after: Option<Duration>,
    /// The finished Job's TTL ran out: delete it.
    pub delete_job: bool,
    /// Pods to take the tracking finalizer from, after `status` is written.
    pub remove_finalizers: Vec<String>,
}

/// Whether the pod still carries the Job's tracking finalizer.
pub fn is_tracked(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

/// Upstream `isPodFailed` for the default replacement policy: failed, or
/// deleted before it succeeded.
fn counts_as_failed(p: &Pod) -> bool {
    phase(p) == "Failed" || (p.metadata.deletion_timestamp.is_some() && phase(p) != "Succeeded")
}

/// The inverse of [`format_indexes`]; malformed parts are skipped.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// The Job's pod accounting after this look: counters and uncounted uids
/// as they should be written, and the pods whose finalizer may now go.
struct Tally {
    succeeded: i32,
    failed: i32,
    completed_indexes: BTreeSet<i32>,
    uncounted_succeeded: Vec<String>,
    uncounted_failed: Vec<String>,
    remove_finalizers: Vec<String>,
}

/// Upstream `trackJobStatusAndRemoveFinalizers`, as a pure step: uids whose
/// pod no longer holds the finalizer move from uncounted into the counters;
/// finished pods that still hold it are added to uncounted (and their
/// finalizer is to be removed once that is written).
fn tally(status: &JobStatus, pods: &[&Pod], indexed: bool) -> Tally {
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut t = Tally {
        succeeded: status.succeeded.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
        completed_indexes: parse_indexes(status.completed_indexes.as_deref().unwrap_or("")),
        uncounted_succeeded: Vec::new(),
        uncounted_failed: Vec::new(),
        remove_finalizers: Vec::new(),
    };
    let holding: BTreeSet<&str> = pods
        .iter()
        .filter(|p| is_tracked(p))
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    for uid in uncounted.succeeded.unwrap_or_default() {
        if holding.contains(uid.as_str()) {
            t.uncounted_succeeded.push(uid);
        } else if !indexed {
            t.succeeded += 1;
        }
    }
    for uid in uncounted.failed.unwrap_or_default() {
        if holding.contains(uid.as_str()) {
            t.uncounted_failed.push(uid);
        } else {
            t.failed += 1;
        }
    }
    for p in pods.iter().filter(|p| is_tracked(p)) {
        let Some(uid) = p.metadata.uid.clone() else {
            continue;
        };
        let listed = t.uncounted_succeeded.contains(&uid) || t.uncounted_failed.contains(&uid);
        if phase(p) == "Succeeded" {
            if !listed {
                if indexed && let Some(i) = index_of(p) {
                    t.completed_indexes.insert(i);
                }
                t.uncounted_succeeded.push(uid);
            }
        } else if counts_as_failed(p) {
            if !listed {
                t.uncounted_failed.push(uid);
            }
        } else {
            continue;
        }
        t.remove_finalizers.push(p.name_any());
    }
    if indexed {
        t.succeeded = t.completed_indexes.len() as i32;
    }
    t
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

/// When a finished pod finished: its containers' finish times, else its
/// conditions' last transition, else its creation.
fn finished_at(p: &Pod) -> Option<i64> {
    let status = p.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .map(|t| t.0.as_second())
                .max()
        });
    let conditions = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .filter_map(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second())
            .max()
    });
    containers.or(conditions).or_else(|| {
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
    })
}

/// "0-2,4,6-7": upstream's compressed list of completed indexes.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn terminal(status: &JobStatus) -> Option<&str> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The pure decision: `pods` are the Job's own pods, `job` as last written
/// (its status is the count so far). A finished Job's status holds no
/// uncounted pods: they are counted when it finishes.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> Plan {
    let mut plan = decide(job, pods, now);
    if terminal(&plan.status).is_some() {
        fold_uncounted(&mut plan.status, job_is_indexed(job));
    }
    plan
}

fn job_is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// Counts every uncounted uid (a finished Job's counters are final, so its
/// pods' finalizers can all go without a further look).
fn fold_uncounted(status: &mut JobStatus, indexed: bool) {
    let Some(u) = status.uncounted_terminated_pods.take() else {
        return;
    };
    if !indexed {
        let n = u.succeeded.map_or(0, |v| v.len()) as i32;
        status.succeeded = Some(status.succeeded.unwrap_or(0) + n);
    }
    let n = u.failed.map_or(0, |v| v.len()) as i32;
    status.failed = Some(status.failed.unwrap_or(0) + n);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(Vec::new()),
        failed: Some(Vec::new()),
    });
}

/// The status as compared: empty uncounted lists are the same as none.
fn comparable(status: Option<&JobStatus>) -> JobStatus {
    let mut s = status.cloned().unwrap_or_default();
    if let Some(u) = s.uncounted_terminated_pods.as_mut() {
        u.succeeded = u.succeeded.take().filter(|v| !v.is_empty());
        u.failed = u.failed.take().filter(|v| !v.is_empty());
        if u.succeeded.is_none() && u.failed.is_none() {
            s.uncounted_terminated_pods = None;
        }
    }
    s
}

fn decide(job: &Job, pods: &[&Pod], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let spec = job.spec.clone().unwrap_or_default();
    let mut status = job.status.clone().unwrap_or_default();
    let t = now.as_second();

    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| {
            !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    // Failed pods still present: when the last one finished sets the backoff.
    let failed_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Failed")
        .collect();
    let indexed = job_is_indexed(job);

    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);

    // Finished already: counters are final; pods only lose their finalizer.
    if terminal(&status).is_some() {
        plan.remove_finalizers = pods
            .iter()
            .filter(|p| is_tracked(p))
            .map(|p| p.name_any())
            .collect();
    } else {
        let t = tally(&status, pods, indexed);
        status.succeeded = Some(t.succeeded);
        status.failed = Some(t.failed);
        if indexed {
            status.completed_indexes = Some(format_indexes(&t.completed_indexes));
        }
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(t.uncounted_succeeded),
            failed: Some(t.uncounted_failed),
        });
        plan.remove_finalizers = t.remove_finalizers;
    }
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let uncounted_succeeded = uncounted.succeeded.as_ref().map_or(0, Vec::len) as i32;
    // Counted plus not yet counted: what the decisions below go by.
    let succeeded_total = if indexed {
        status.succeeded.unwrap_or(0)
    } else {
        status.succeeded.unwrap_or(0) + uncounted_succeeded
    };
    let failed_total =
        status.failed.unwrap_or(0) + uncounted.failed.as_ref().map_or(0, Vec::len) as i32;
    let completed_indexes = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));

    // Finished already: only the TTL is left.
    if let Some(_kind) = terminal(&status) {
        plan.delete = active.iter().map(|p| p.name_any()).collect();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let finished = status
                .completion_time
                .as_ref()
                .map(|c| c.0.as_second())
                .or_else(|| {
                    status.conditions.as_ref().and_then(|cs| {
                        cs.iter()
                            .filter_map(|c| c.last_transition_time.as_ref())
                            .map(|x| x.0.as_second())
                            .max()
                    })
                })
                .unwrap_or(t);
            let left = finished + i64::from(ttl) - t;
            if left <= 0 {
                plan.delete_job = true;
            } else {
                plan.recheck_after = Some(Duration::from_secs(left as u64));
            }
        }
        plan.status = status;
        return plan;
    }

    if spec.suspend.unwrap_or(false) {
        plan.delete = active.iter().map(|p| p.name_any()).collect();
        plan.status = status;
        return plan;
    }
    if status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }
    let started = status
        .start_time
        .as_ref()
        .map(|s| s.0.as_second())
        .unwrap_or(t);
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let conditions = status.conditions.get_or_insert_with(Vec::new);

    // Failure.
    let failure = if failed_total > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if spec
        .active_deadline_seconds
        .is_some_and(|d| t - started >= d)
    {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    if let Some((reason, message)) = failure {
        conditions.push(condition("FailureTarget", reason, message, now));
        conditions.push(condition("Failed", reason, message, now));
        finish_active(&mut plan, &mut status, &active);
        plan.status = status;
        return plan;
    }

    // Success.
    let done = match completions {
        Some(n) if indexed => completed_indexes.len() as i32 >= n,
        Some(n) => succeeded_total >= n,
        // Work queue: done when one pod succeeded and none is running.
        None => succeeded_total > 0 && active.is_empty(),
    };
    if done {
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        status.completion_time = Some(Time(now));
        finish_active(&mut plan, &mut status, &active);
        plan.status = status;
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            plan.recheck_after = Some(Duration::from_secs(ttl.max(0) as u64));
        }
        return plan;
    }

    // Backoff after failures: 10 s doubling per failure, at most 6 min.
    if failed_total > 0 {
        let exp = (failed_total as u32 - 1).min(6);
        let delay = (10i64 << exp).min(360);
        let last = failed_pods
            .iter()
            .filter_map(|p| finished_at(p))
            .max()
            .unwrap_or(t - delay);
        let left = last + delay - t;
        if left > 0 {
            plan.recheck_after = Some(Duration::from_secs(left as u64));
            plan.status = status;
            if let Some(d) = spec.active_deadline_seconds {
                let until = (started + d - t).max(1) as u64;
                plan.recheck_after = plan
                    .recheck_after
                    .map(|r| r.min(Duration::from_secs(until)));
            }
            return plan;
        }
    }

    // Start pods.
    if indexed {
        let n = completions.unwrap_or(1);
        let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        let room = (parallelism - active.len() as i32).max(0) as usize;
        plan.create = (0..n)
            .filter(|i| !completed_indexes.contains(i) && !running.contains(i))
            .take(room)
            .map(Some)
            .collect();
    } else {
        let want_active = match completions {
            Some(n) => parallelism.min(n - succeeded_total),
            None if succeeded_total == 0 => parallelism,
            None => 0,
        };
        let missing = (want_active - active.len() as i32).max(0);
        plan.create = vec![None; missing as usize];
    }
    if let Some(d) = spec.active_deadline_seconds {
        plan.recheck_after = Some(Duration::from_secs((started + d - t).max(1) as u64));
    }
    plan.status = status;
    plan
}

/// The Job has just finished: its still active pods are deleted and, as
/// upstream does, counted as failed (their uids join the uncounted failed
/// ones, which `plan` folds into the final counters), so their finalizers
/// can go with the others'.
fn finish_active(plan: &mut Plan, status: &mut JobStatus, active: &[&Pod]) {
    plan.delete = active.iter().map(|p| p.name_any()).collect();
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    let failed = uncounted.failed.get_or_insert_with(Vec::new);
    for p in active {
        if let Some(uid) = p.metadata.uid.as_ref()
            && !failed.contains(uid)
        {
            failed.push(uid.clone());
        }
        if is_tracked(p) && !plan.remove_finalizers.contains(&p.name_any()) {
            plan.remove_finalizers.push(p.name_any());
        }
    }
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    pods: Informer<Pod>,
    /// Pods created and deleted but not yet in the cache, per Job uid.
    expectations: Expectations,
}

fn pod_for(job: &Job, index: Option<i32>) -> Result<Pod, Error> {
    let owner = owner_ref("batch/v1", "Job", &job.metadata)
        .ok_or_else(|| Error::Invalid(job.name_any(), "no uid".into()))?;
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    labels.insert("batch.kubernetes.io/job-name".into(), job.name_any());
    labels.insert("job-name".into(), job.name_any());
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
    labels.insert("controller-uid".into(), uid);
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{}-", job.name_any());
    if let Some(i) = index {
        annotations.insert(INDEX_ANNOTATION.into(), i.to_string());
        labels.insert(INDEX_ANNOTATION.into(), i.to_string());
        generate_name = format!("{}-{i}-", job.name_any());
        spec.hostname
            .get_or_insert_with(|| format!("{}-{i}", job.name_any()));
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: Some(i.to_string()),
                value_from: None,
            });
        }
    }
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Never".into());
    }
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            finalizers: Some(vec![TRACKING_FINALIZER.to_string()]),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// Takes the tracking finalizer from `pod` (a JSON patch that first tests
/// it is still at the index the cache shows, so other finalizers are kept).
async fn release(api: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let Some(i) = pod
        .metadata
        .finalizers
        .as_ref()
        .and_then(|f| f.iter().position(|f| f == TRACKING_FINALIZER))
    else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": TRACKING_FINALIZER},
        {"op": "remove", "path": path},
    ]))?;
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn release_all<'a>(
    api: &Api<Pod>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Result<(), Error> {
    let results = join_all(pods.into_iter().map(|p| release(api, p))).await;
    results.into_iter().collect()
}

async fn reconcile(cached: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if cached.metadata.deletion_timestamp.is_some() {
        // Its pods must not keep themselves (or, in foreground deletion,
        // the Job) waiting.
        let owned = ctx.pods.controlled_by(&uid);
        release_all(
            &pods_api,
            owned.iter().map(AsRef::as_ref).filter(|p| is_tracked(p)),
        )
        .await?;
        ctx.expectations.forget(&uid);
        return Ok(Action::await_change());
    }
    if !ctx.expectations.satisfied(&uid, &ctx.pods) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The status holds the count: read it as last written, not as the
    // watch last delivered it (a stale copy could forget an uncounted pod
    // whose finalizer is already gone).
    let Some(job) = jobs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if job.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Ok(Action::await_change());
    }
    let owned = ctx.pods.controlled_by(&uid);
    let mine: Vec<&Pod> = owned.iter().map(AsRef::as_ref).collect();
    let plan = plan(&job, &mine, Timestamp::now());
    if plan.delete_job {
        match jobs.delete(&name, &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job = %name, "deleted finished job after its ttl");
        return Ok(Action::await_change());
    }
    // The status first: a finished pod is listed as uncounted before its
    // finalizer goes.
    if comparable(job.status.as_ref()) != comparable(Some(&plan.status)) {
        let mut body = serde_json::to_value(&plan.status)?;
        if let Some(m) = body.as_object_mut() {
            // Explicit: a merge patch keeps what it omits. Empty lists are
            // removed (null), so the stored status reads `{}` as upstream's.
            let u = plan
                .status
                .uncounted_terminated_pods
                .clone()
                .unwrap_or_default();
            let list = |v: Option<Vec<String>>| match v {
                Some(v) if !v.is_empty() => json!(v),
                _ => serde_json::Value::Null,
            };
            m.insert(
                "uncountedTerminatedPods".into(),
                json!({"succeeded": list(u.succeeded), "failed": list(u.failed)}),
            );
        }
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": body })),
        )
        .await?;
    }
    let releasing: BTreeSet<&str> = plan.remove_finalizers.iter().map(String::as_str).collect();
    release_all(
        &pods_api,
        mine.iter().copied().filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| releasing.contains(n))
        }),
    )
    .await?;
    for index in &plan.create {
        let created = pods_api
            .create(&PostParams::default(), &pod_for(&job, *index)?)
            .await?;
        ctx.expectations.created(&uid, &ns, &created);
    }
    for pod in &plan.delete {
        delete_pod(&pods_api, pod).await?;
        ctx.expectations.deleted(&uid, &ns, pod, &mine);
    }
    let next = plan
        .recheck_after
        .map_or(ctx.config.resync, |d| d.min(ctx.config.resync));
    Ok(Action::requeue(next.max(Duration::from_millis(200))))
}

/// Takes the tracking finalizer from pods whose Job is gone (upstream
/// does the same for orphans): nothing would count them any more, and
/// they could not be deleted.
async fn release_orphans(client: kube::Client, pods: Informer<Pod>, jobs: Store<Job>) {
    if jobs.wait_until_ready().await.is_err() {
        return;
    }
    let orphaned = |pod: &Pod| {
        if !is_tracked(pod) {
            return false;
        }
        match controller_ref(&pod.metadata) {
            Some(r) if r.kind == "Job" => {
                let key =
                    ObjectRef::<Job>::new(&r.name).within(&pod.namespace().unwrap_or_default());
                jobs.get(&key)
                    .is_none_or(|j| j.metadata.uid.as_deref() != Some(r.uid.as_str()))
            }
            Some(_) => false,
            None => true,
        }
    };
    // Subscribed before the list is taken, so no change falls in between.
    let changes = pods.subscribe();
    let mut all = std::pin::pin!(futures::stream::iter(pods.list()).chain(changes));
    while let Some(pod) = all.next().await {
        if !orphaned(&pod) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match release(&api, &pod).await {
            Ok(()) => {
                tracing::info!(pod = %pod.name_any(), "removed the job-tracking finalizer of a pod whose job is gone")
            }
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "removing the job-tracking finalizer")
            }
        }
    }
}

fn error_policy(job: Arc<Job>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "job reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the Job controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
        expectations: Expectations::new(),
    });
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let orphans = release_orphans(client, informers.pods.clone(), controller.store());
    let jobs = controller
        .owns_shared_stream(informers.pods.subscribe())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tokio::join!(jobs, orphans);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::batch::v1::JobSpec;

    const NOW: i64 = 1_000_000;

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("j".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                completion_mode: indexed.then(|| "Indexed".to_string()),
                ..Default::default()
            }),
            status: Some(JobStatus {
                start_time: Some(Time(Timestamp::from_second(NOW - 1).unwrap())),
                ..Default::default()
            }),
        }
    }

    fn with_index(mut p: Pod, i: i32) -> Pod {
        p.metadata.annotations = Some([(INDEX_ANNOTATION.to_string(), i.to_string())].into());
        p
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    /// A pod of the Job as the controller creates it: with a uid and the
    /// tracking finalizer.
    fn tracked(name: &str, phase: &str) -> Pod {
        let mut p = pod(name, Some("n"), phase, None);
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.finalizers = Some(vec![TRACKING_FINALIZER.to_string()]);
        p
    }

    fn released(mut p: Pod) -> Pod {
        p.metadata.finalizers = None;
        p
    }

    fn with_status(mut j: Job, f: impl FnOnce(&mut JobStatus)) -> Job {
        f(j.status.get_or_insert_with(Default::default));
        j
    }

    fn uncounted(succeeded: &[&str], failed: &[&str]) -> Option<UncountedTerminatedPods> {
        let v = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        Some(UncountedTerminatedPods {
            succeeded: v(succeeded),
            failed: v(failed),
        })
    }

    #[test]
    fn finished_pods_are_counted_through_uncounted_then_released() {
        struct Case {
            name: &'static str,
            job: Job,
            pods: Vec<Pod>,
            succeeded: i32,
            failed: i32,
            uncounted: Option<UncountedTerminatedPods>,
            release: Vec<&'static str>,
        }
        let base = job(Some(5), 1, false);
        let cases = [
            Case {
                name: "a finished pod with the finalizer is listed, then released",
                job: base.clone(),
                pods: vec![tracked("a", "Succeeded"), tracked("b", "Failed")],
                succeeded: 0,
                failed: 0,
                uncounted: uncounted(&["uid-a"], &["uid-b"]),
                release: vec!["a", "b"],
            },
            Case {
                name: "listed and still holding the finalizer: released again, not counted",
                job: with_status(base.clone(), |s| {
                    s.uncounted_terminated_pods = uncounted(&["uid-a"], &[]);
                }),
                pods: vec![tracked("a", "Succeeded")],
                succeeded: 0,
                failed: 0,
                uncounted: uncounted(&["uid-a"], &[]),
                release: vec!["a"],
            },
            Case {
                name: "listed and released: counted",
                job: with_status(base.clone(), |s| {
                    s.succeeded = Some(2);
                    s.uncounted_terminated_pods = uncounted(&["uid-a"], &["uid-b"]);
                }),
                pods: vec![released(tracked("a", "Succeeded"))],
                succeeded: 3,
                failed: 1,
                uncounted: uncounted(&[], &[]),
                release: vec![],
            },
            Case {
                name: "counted pods that were deleted stay counted",
                job: with_status(base.clone(), |s| {
                    s.succeeded = Some(2);
                    s.failed = Some(1);
                }),
                pods: vec![],
                succeeded: 2,
                failed: 1,
                uncounted: uncounted(&[], &[]),
                release: vec![],
            },
            Case {
                name: "finished pods without the finalizer were counted before",
                job: with_status(base.clone(), |s| s.succeeded = Some(1)),
                pods: vec![released(tracked("a", "Succeeded"))],
                succeeded: 1,
                failed: 0,
                uncounted: uncounted(&[], &[]),
                release: vec![],
            },
            Case {
                name: "a running pod that is being deleted counts as failed",
                job: base.clone(),
                pods: vec![{
                    let mut p = tracked("a", "Running");
                    p.metadata.deletion_timestamp = Some(Time(now()));
                    p
                }],
                succeeded: 0,
                failed: 0,
                uncounted: uncounted(&[], &["uid-a"]),
                release: vec!["a"],
            },
        ];
        for c in cases {
            let refs: Vec<&Pod> = c.pods.iter().collect();
            let p = plan(&c.job, &refs, now());
            assert_eq!(
                p.status.succeeded,
                Some(c.succeeded),
                "{}: succeeded",
                c.name
            );
            assert_eq!(p.status.failed, Some(c.failed), "{}: failed", c.name);
            assert_eq!(
                p.status.uncounted_terminated_pods, c.uncounted,
                "{}: uncounted",
                c.name
            );
            assert_eq!(p.remove_finalizers, c.release, "{}: released", c.name);
        }
    }

    #[test]
    fn uncounted_pods_count_toward_completion_and_are_folded_when_it_finishes() {
        // One success counted, one uncounted, one just finished: 3 of 3.
        let j = with_status(job(Some(3), 1, false), |s| {
            s.succeeded = Some(1);
            s.uncounted_terminated_pods = uncounted(&["uid-b"], &[]);
        });
        let pods = [tracked("b", "Succeeded"), tracked("c", "Succeeded")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, now());
        assert_eq!(terminal(&p.status), Some("Complete"));
        assert_eq!(p.status.succeeded, Some(3));
        assert_eq!(p.status.uncounted_terminated_pods, uncounted(&[], &[]));
        assert_eq!(p.remove_finalizers, vec!["b", "c"]);
    }

    #[test]
    fn a_finished_job_only_releases_its_pods() {
        let mut j = job(Some(1), 1, false);
        j.status.as_mut().unwrap().conditions = Some(vec![condition("Complete", "r", "m", now())]);
        j.status.as_mut().unwrap().succeeded = Some(1);
        let pods = [
            tracked("a", "Succeeded"),
            released(tracked("b", "Succeeded")),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, now());
        assert_eq!(p.status.succeeded, Some(1));
        assert_eq!(p.remove_finalizers, vec!["a"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn pods_still_active_when_the_job_finishes_count_as_failed() {
        // Completions reached with one success while two pods still run
        // (parallelism 3): the two are deleted, counted as failed and
        // released; so are the running pods of a Job that fails.
        let j = job(Some(1), 3, false);
        let pods = [
            tracked("a", "Succeeded"),
            tracked("b", "Running"),
            tracked("c", "Pending"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, now());
        assert_eq!(terminal(&p.status), Some("Complete"));
        assert_eq!((p.status.succeeded, p.status.failed), (Some(1), Some(2)));
        assert_eq!(p.delete, vec!["b", "c"]);
        let mut released = p.remove_finalizers.clone();
        released.sort();
        assert_eq!(released, vec!["a", "b", "c"]);

        let mut j = job(Some(5), 2, false);
        j.spec.as_mut().unwrap().backoff_limit = Some(0);
        let pods = [tracked("a", "Failed"), tracked("b", "Running")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, now());
        assert_eq!(terminal(&p.status), Some("Failed"));
        assert_eq!((p.status.succeeded, p.status.failed), (Some(0), Some(2)));
        assert_eq!(p.delete, vec!["b"]);
    }

    #[test]
    fn completed_indexes_survive_their_pods() {
        let j = with_status(job(Some(3), 3, true), |s| {
            s.completed_indexes = Some("0".into());
            s.succeeded = Some(1);
        });
        let one = with_index(tracked("b", "Succeeded"), 1);
        let p = plan(&j, &[&one], now());
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0-1"));
        assert_eq!(p.status.succeeded, Some(2));
        assert_eq!(p.create, vec![Some(2)]);
        assert_eq!(parse_indexes("0-2,4,x,6-7"), [0, 1, 2, 4, 6, 7].into());
    }

    #[test]
    fn comparing_treats_empty_uncounted_lists_as_none() {
        let a = JobStatus {
            uncounted_terminated_pods: uncounted(&[], &[]),
            ..Default::default()
        };
        assert_eq!(comparable(Some(&a)), comparable(None));
    }

    #[test]
    fn pods_are_started_up_to_parallelism_and_remaining_completions() {
        let done = tracked("d", "Succeeded");
        let running = tracked("r", "Running");
        let cases = [
            ("fresh job", job(Some(5), 2, false), vec![], 2),
            ("one running", job(Some(5), 2, false), vec![&running], 1),
            ("last completion", job(Some(2), 3, false), vec![&done], 1),
            (
                "work queue after a success starts nothing",
                job(None, 3, false),
                vec![&done, &running],
                0,
            ),
        ];
        for (name, j, pods, want) in cases {
            assert_eq!(plan(&j, &pods, now()).create.len(), want, "{name}");
        }
    }

    #[test]
    fn completion_sets_complete_and_completion_time() {
        let a = tracked("a", "Succeeded");
        let b = tracked("b", "Succeeded");
        let p = plan(&job(Some(2), 1, false), &[&a, &b], now());
        assert_eq!(terminal(&p.status), Some("Complete"));
        assert!(p.status.completion_time.is_some());
        assert_eq!(p.status.succeeded, Some(2));
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let mut j = job(Some(1), 1, false);
        j.spec.as_mut().unwrap().backoff_limit = Some(1);
        let mut f1 = tracked("f1", "Failed");
        f1.status.as_mut().unwrap().container_statuses =
            Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                name: "c".into(),
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                        exit_code: 1,
                        finished_at: Some(Time(Timestamp::from_second(NOW - 2).unwrap())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        let p = plan(&j, &[&f1], now());
        assert!(
            p.create.is_empty() && p.recheck_after.is_some(),
            "waits out the backoff: {p:?}"
        );
        let f2 = tracked("f2", "Failed");
        let p = plan(&j, &[&f1, &f2], now());
        assert_eq!(terminal(&p.status), Some("Failed"));
        let reason = p.status.conditions.unwrap().last().unwrap().reason.clone();
        assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(Some(4), 2, true);
        let done0 = with_index(tracked("a", "Succeeded"), 0);
        let running1 = with_index(tracked("b", "Running"), 1);
        let p = plan(&j, &[&done0, &running1], now());
        assert_eq!(p.create, vec![Some(2)]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        let all: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&all), "0-2,4,6-7");
    }

    #[test]
    fn active_deadline_fails_the_job() {
        let mut j = job(Some(1), 1, false);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
        let running = tracked("r", "Running");
        let p = plan(&j, &[&running], now());
        assert_eq!(terminal(&p.status), Some("Failed"));
        assert_eq!(p.delete, vec!["r".to_string()]);
    }
}
