//! The Job controller: runs pods to completion. `completions` and
//! `parallelism`, NonIndexed and Indexed completion modes, `backoffLimit`
//! with exponential delay between failed attempts (10 s doubling, at most
//! 6 min), `activeDeadlineSeconds`, `suspend`, and `ttlSecondsAfterFinished`
//! (the finished Job is deleted, with its pods, after that long).
//!
//! Pods are the Job's by controller owner reference. Finished pods are
//! counted while they exist; upstream's tracking finalizers (which keep the
//! count when finished pods are deleted early) are not implemented.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::pods::{controller_ref, is_ready, owner_ref};
use crate::{ControllerConfig, Error};

pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

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

/// The pure decision: `pods` are the Job's own pods.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> Plan {
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
    let succeeded: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Succeeded")
        .collect();
    let failed: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Failed")
        .collect();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completed_indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();

    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    status.failed = Some(failed.len() as i32);
    status.succeeded = Some(if indexed {
        completed_indexes.len() as i32
    } else {
        succeeded.len() as i32
    });
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed_indexes));
    }

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
    let failure = if failed.len() as i32 > backoff_limit {
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
        plan.delete = active.iter().map(|p| p.name_any()).collect();
        plan.status = status;
        return plan;
    }

    // Success.
    let done = match completions {
        Some(n) if indexed => completed_indexes.len() as i32 >= n,
        Some(n) => succeeded.len() as i32 >= n,
        // Work queue: done when one pod succeeded and none is running.
        None => !succeeded.is_empty() && active.is_empty(),
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
        plan.delete = active.iter().map(|p| p.name_any()).collect();
        plan.status = status;
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            plan.recheck_after = Some(Duration::from_secs(ttl.max(0) as u64));
        }
        return plan;
    }

    // Backoff after failures: 10 s doubling per failure, at most 6 min.
    if !failed.is_empty() {
        let exp = (failed.len() as u32 - 1).min(6);
        let delay = (10i64 << exp).min(360);
        let last = failed
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
            Some(n) => parallelism.min(n - succeeded.len() as i32),
            None if succeeded.is_empty() => parallelism,
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

struct Context {
    client: kube::Client,
    config: ControllerConfig,
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

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = pods_api.list(&ListParams::default()).await?.items;
    let mine: Vec<&Pod> = all
        .iter()
        .filter(|p| controller_ref(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let plan = plan(&job, &mine, Timestamp::now());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if plan.delete_job {
        match jobs.delete(&name, &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job = %name, "deleted finished job after its ttl");
        return Ok(Action::await_change());
    }
    for index in &plan.create {
        pods_api
            .create(&PostParams::default(), &pod_for(&job, *index)?)
            .await?;
    }
    for pod in &plan.delete {
        match pods_api.delete(pod, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if job.status.as_ref() != Some(&plan.status) {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": plan.status})),
        )
        .await?;
    }
    let next = plan
        .recheck_after
        .map_or(ctx.config.resync, |d| d.min(ctx.config.resync));
    Ok(Action::requeue(next.max(Duration::from_millis(200))))
}

fn error_policy(job: Arc<Job>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "job reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the Job controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
    });
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
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

    #[test]
    fn pods_are_started_up_to_parallelism_and_remaining_completions() {
        let done = pod("d", Some("n"), "Succeeded", None);
        let running = pod("r", Some("n"), "Running", None);
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
        let a = pod("a", Some("n"), "Succeeded", None);
        let b = pod("b", Some("n"), "Succeeded", None);
        let p = plan(&job(Some(2), 1, false), &[&a, &b], now());
        assert_eq!(terminal(&p.status), Some("Complete"));
        assert!(p.status.completion_time.is_some());
        assert_eq!(p.status.succeeded, Some(2));
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let mut j = job(Some(1), 1, false);
        j.spec.as_mut().unwrap().backoff_limit = Some(1);
        let mut f1 = pod("f1", Some("n"), "Failed", None);
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
        let f2 = pod("f2", Some("n"), "Failed", None);
        let p = plan(&j, &[&f1, &f2], now());
        assert_eq!(terminal(&p.status), Some("Failed"));
        let reason = p.status.conditions.unwrap().last().unwrap().reason.clone();
        assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(Some(4), 2, true);
        let done0 = with_index(pod("a", Some("n"), "Succeeded", None), 0);
        let running1 = with_index(pod("b", Some("n"), "Running", None), 1);
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
        let running = pod("r", Some("n"), "Running", None);
        let p = plan(&j, &[&running], now());
        assert_eq!(terminal(&p.status), Some("Failed"));
        assert_eq!(p.delete, vec!["r".to_string()]);
    }
}
