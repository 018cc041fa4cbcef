//! The CronJob controller (batch/v1): creates a Job from `jobTemplate` at
//! each time of a 5-field cron schedule (`@hourly`-style macros, time zone
//! from `spec.timeZone` or a `CRON_TZ=`/`TZ=` prefix, UTC otherwise).
//! Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>`
//! and annotated with `batch.kubernetes.io/cronjob-scheduled-timestamp`.
//! `concurrencyPolicy` Allow/Forbid/Replace, `startingDeadlineSeconds`,
//! missed schedules (only the most recent one runs; more than 100 missed
//! is a `TooManyMissedTimes` warning, as upstream), `suspend`, history
//! limits, and status `active`/`lastScheduleTime`/`lastSuccessfulTime`.
//! The key is requeued at the next schedule time.
//!
//! Schedules are parsed by `croner` (Vixie-cron semantics: day-of-month
//! and day-of-week are ORed when both are restricted, as in the
//! robfig/cron parser Kubernetes uses), evaluated in `jiff` time zones
//! (the IANA database is bundled, so results do not depend on the host).

use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use futures::StreamExt;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::events::{self, Note};
use crate::pods::{controller_ref, owner_ref};
use crate::{ControllerConfig, Error};

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// More missed start times than this is reported (upstream's limit).
pub const MAX_MISSED: usize = 100;

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("unparseable schedule {schedule:?}: {reason}")]
    Unparseable { schedule: String, reason: String },
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
}

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses `schedule` (optionally prefixed `CRON_TZ=<zone> ` or
    /// `TZ=<zone> `); `time_zone` (`spec.timeZone`) applies when the
    /// schedule names none.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let trimmed = schedule.trim();
        let (zone, expr) = match trimmed
            .strip_prefix("CRON_TZ=")
            .or_else(|| trimmed.strip_prefix("TZ="))
        {
            Some(rest) => {
                let (zone, expr) = rest.split_once(' ').unwrap_or((rest, ""));
                (Some(zone), expr.trim())
            }
            None => (time_zone, trimmed),
        };
        let tz = match zone {
            None | Some("") => TimeZone::UTC,
            Some(z) => {
                TimeZone::get(z).map_err(|_| ScheduleError::UnknownTimeZone(z.to_string()))?
            }
        };
        // Five fields or a macro: no seconds, no years.
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Unparseable {
                schedule: schedule.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Schedule { cron, tz })
    }

    /// The first schedule time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last schedule time at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&t.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// RFC 3339 in the schedule's zone (`Z` for UTC), as upstream
    /// formats the scheduled-timestamp annotation.
    pub fn format(&self, t: Timestamp) -> String {
        let z = t.to_zoned(self.tz.clone());
        let s = z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
        match s.strip_suffix("+00:00") {
            Some(base) => format!("{base}Z"),
            None => s,
        }
    }
}

/// The most recent missed schedule time in `(earliest, now]` and how many
/// were missed (counting stops past [`MAX_MISSED`]).
pub fn missed(
    schedule: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let mut count = 0;
    let mut last = None;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t) {
        if next > now {
            return (last, count);
        }
        count += 1;
        last = Some(next);
        t = next;
        if count > MAX_MISSED {
            return (schedule.last_at_or_before(now), count);
        }
    }
    (last, count)
}

/// `Complete` or `Failed`, once the Job finished.
pub fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// The Job name for a scheduled time: minutes since the epoch.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// What the controller should do for one CronJob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// A Job to create (for this scheduled time).
    pub create: Option<Job>,
    /// Jobs to delete: replaced active jobs, then history beyond limits.
    pub delete: Vec<String>,
    pub status: CronJobStatus,
    pub events: Vec<Note>,
    /// When to look again (the next schedule time).
    pub requeue_after: Option<Duration>,
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn started(job: &Job) -> i64 {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map_or(0, |t| t.0.as_second())
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    // A little after the minute, so the time has surely come.
    let ms = (t.as_millisecond() - now.as_millisecond()).max(0) as u64 + 100;
    Duration::from_millis(ms)
}

/// The pure decision: `jobs` are the CronJob's own Jobs.
pub fn plan(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = cj.spec.as_ref() else {
        return plan;
    };
    let name = cj.name_any();
    let mut status = cj.status.clone().unwrap_or_default();

    let active: Vec<&Job> = jobs
        .iter()
        .copied()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    status.active = (!active.is_empty()).then(|| active.iter().map(|j| job_ref(j)).collect());
    let last_success = jobs
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref())
        .map(|t| t.0)
        .max();
    if let Some(t) = last_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }

    // History: the oldest finished jobs beyond the limits go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let limit = limit.max(0) as usize;
        if done.len() > limit {
            done.sort_by_key(|j| (started(j), j.name_any()));
            plan.delete
                .extend(done[..done.len() - limit].iter().map(|j| j.name_any()));
        }
    }
    plan.status = status;

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return plan;
    }
    let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e @ ScheduleError::UnknownTimeZone(_)) => {
            plan.events
                .push(Note::warning("UnknownTimeZone", e.to_string()));
            return plan;
        }
        Err(e) => {
            plan.events
                .push(Note::warning("UnparseableSchedule", e.to_string()));
            return plan;
        }
    };
    let wake_at_next = |plan: &mut Plan| {
        plan.requeue_after = schedule.next_after(now).map(|t| until(now, t));
    };

    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = plan
        .status
        .last_schedule_time
        .as_ref()
        .map_or(created, |t| t.0);
    if let Some(sds) = spec.starting_deadline_seconds {
        let deadline = now - k8s_openapi::jiff::SignedDuration::from_secs(sds);
        if deadline > earliest {
            earliest = deadline;
        }
    }
    let (scheduled, count) = missed(&schedule, earliest, now);
    if count > MAX_MISSED {
        plan.events.push(Note::warning(
            "TooManyMissedTimes",
            format!(
                "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
            ),
        ));
    }
    let Some(scheduled) = scheduled else {
        wake_at_next(&mut plan);
        return plan;
    };
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled.as_second() + sds < now.as_second()
    {
        plan.events.push(Note::normal(
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                schedule.format(scheduled)
            ),
        ));
        wake_at_next(&mut plan);
        return plan;
    }
    let job_name = job_name(&name, scheduled);
    if jobs.iter().any(|j| j.name_any() == job_name) {
        // Already ran (the status write may have been lost).
        plan.status.last_schedule_time = Some(Time(scheduled));
        wake_at_next(&mut plan);
        return plan;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push(Note::normal(
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
            ));
            wake_at_next(&mut plan);
            return plan;
        }
        Some("Replace") => {
            for j in &active {
                plan.delete.push(j.name_any());
                plan.events.push(Note::normal(
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.name_any()),
                ));
            }
            plan.status.active = None;
        }
        _ => {}
    }
    let template = spec.job_template.clone();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), schedule.format(scheduled));
    plan.create = Some(Job {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: owner_ref("batch/v1", "CronJob", &cj.metadata).map(|o| vec![o]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    });
    plan.events.push(Note::normal(
        "SuccessfulCreate",
        format!("Created job {job_name}"),
    ));
    plan.status.last_schedule_time = Some(Time(scheduled));
    wake_at_next(&mut plan);
    plan
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
}

fn cronjob_ref(cj: &CronJob) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("CronJob".into()),
        name: cj.metadata.name.clone(),
        namespace: cj.metadata.namespace.clone(),
        uid: cj.metadata.uid.clone(),
        resource_version: cj.metadata.resource_version.clone(),
        ..Default::default()
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let all = jobs_api.list(&ListParams::default()).await?.items;
    let mine: Vec<&Job> = all
        .iter()
        .filter(|j| controller_ref(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let mut plan = plan(&cj, &mine, Timestamp::now());

    for job in &plan.delete {
        match jobs_api.delete(job, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(job) = &plan.create {
        match jobs_api.create(&PostParams::default(), job).await {
            Ok(created) => {
                tracing::info!(cronjob = %name, job = %created.name_any(), "created job");
                plan.status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(job_ref(&created));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let reference = cronjob_ref(&cj);
    for note in &plan.events {
        events::record(&ctx.client, &reference, "cronjob-controller", note).await;
    }
    if cj.status.as_ref() != Some(&plan.status) {
        let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        // A merge patch replaces `active` whole; null clears it.
        let mut status = serde_json::to_value(&plan.status)?;
        if plan.status.active.is_none()
            && let Some(m) = status.as_object_mut()
        {
            m.insert("active".into(), serde_json::Value::Null);
        }
        cj_api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
    }
    Ok(match plan.requeue_after {
        Some(d) => Action::requeue(d.min(ctx.config.resync)),
        None => Action::requeue(ctx.config.resync),
    })
}

fn error_policy(cj: Arc<CronJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(cronjob = %cj.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the CronJob controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
    });
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(schedule: &str, created: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("default".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                job_template: JobTemplateSpec::default(),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn with(mut cj: CronJob, f: impl FnOnce(&mut CronJobSpec)) -> CronJob {
        f(cj.spec.as_mut().unwrap());
        cj
    }

    fn job(name: &str, start: &str, outcome: Option<&str>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(at(start))),
                ..Default::default()
            },
            spec: None,
            status: Some(JobStatus {
                start_time: Some(Time(at(start))),
                completion_time: (outcome == Some("Complete")).then(|| Time(at(start))),
                conditions: outcome.map(|o| {
                    vec![JobCondition {
                        type_: o.into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn schedules_parse_macros_and_time_zones() {
        let t = at("2024-01-01T00:00:30Z");
        let cases: [(&str, Option<&str>, &str); 7] = [
            ("* * * * *", None, "2024-01-01T00:01:00Z"),
            ("@hourly", None, "2024-01-01T01:00:00Z"),
            ("*/15 * * * *", None, "2024-01-01T00:15:00Z"),
            (
                "0 9 * * *",
                Some("America/New_York"),
                "2024-01-01T14:00:00Z",
            ),
            ("CRON_TZ=Asia/Tokyo 0 9 * * *", None, "2024-01-01T00:00:00Z"),
            (
                "TZ=Europe/Paris 30 0 * * *",
                Some("Asia/Tokyo"),
                "2024-01-01T23:30:00Z",
            ),
            // Day of month and day of week are ORed: the 13th or a Friday.
            ("0 0 13 * FRI", None, "2024-01-05T00:00:00Z"),
        ];
        for (schedule, tz, want) in cases {
            let s = Schedule::parse(schedule, tz).unwrap();
            let next = s.next_after(t).unwrap();
            // Tokyo 09:00 on Jan 1 is midnight UTC, before `t`: next day.
            let want = if schedule.contains("Tokyo") {
                at("2024-01-02T00:00:00Z")
            } else {
                at(want)
            };
            assert_eq!(next, want, "{schedule} in {tz:?}");
        }
        let errors = [
            ("* * * *", None),
            ("0 * * * * *", None),
            ("not a schedule", None),
            ("* * * * *", Some("Mars/Olympus")),
        ];
        for (schedule, tz) in errors {
            assert!(Schedule::parse(schedule, tz).is_err(), "{schedule} {tz:?}");
        }
    }

    #[test]
    fn scheduled_timestamps_are_rfc3339_in_the_schedule_zone() {
        let t = at("2024-07-01T12:00:00Z");
        let utc = Schedule::parse("* * * * *", None).unwrap();
        assert_eq!(utc.format(t), "2024-07-01T12:00:00Z");
        let paris = Schedule::parse("* * * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(paris.format(t), "2024-07-01T14:00:00+02:00");
        assert_eq!(job_name("tick", t), format!("tick-{}", t.as_second() / 60));
    }

    #[test]
    fn due_runs_create_a_job_and_wake_at_the_next_time() {
        struct Case {
            name: &'static str,
            cj: CronJob,
            jobs: Vec<Job>,
            now: &'static str,
            create: Option<&'static str>,
            delete: Vec<&'static str>,
            event: Option<&'static str>,
            wake_in_ms: Option<u64>,
        }
        let every_minute = || cronjob("* * * * *", "2024-01-01T10:00:30Z");
        let minute = |s: &str| job_name("tick", at(s));
        let m1 = minute("2024-01-01T10:01:00Z");
        let cases = [
            Case {
                name: "a due run creates its job",
                cj: every_minute(),
                jobs: vec![],
                now: "2024-01-01T10:01:05Z",
                create: Some("2024-01-01T10:01:00Z"),
                delete: vec![],
                event: Some("SuccessfulCreate"),
                wake_in_ms: Some(55_100),
            },
            Case {
                name: "nothing due: wake at the next minute",
                cj: every_minute(),
                jobs: vec![],
                now: "2024-01-01T10:00:40Z",
                create: None,
                delete: vec![],
                event: None,
                wake_in_ms: Some(20_100),
            },
            Case {
                name: "a run that already has its job creates nothing",
                cj: every_minute(),
                jobs: vec![job(&m1, "2024-01-01T10:01:00Z", None)],
                now: "2024-01-01T10:01:05Z",
                create: None,
                delete: vec![],
                event: None,
                wake_in_ms: Some(55_100),
            },
            Case {
                name: "Forbid skips while a job is active",
                cj: with(every_minute(), |s| {
                    s.concurrency_policy = Some("Forbid".into())
                }),
                jobs: vec![job("tick-old", "2024-01-01T09:00:00Z", None)],
                now: "2024-01-01T10:01:05Z",
                create: None,
                delete: vec![],
                event: Some("JobAlreadyActive"),
                wake_in_ms: Some(55_100),
            },
            Case {
                name: "Replace deletes active jobs and creates",
                cj: with(every_minute(), |s| {
                    s.concurrency_policy = Some("Replace".into())
                }),
                jobs: vec![job("tick-old", "2024-01-01T09:00:00Z", None)],
                now: "2024-01-01T10:01:05Z",
                create: Some("2024-01-01T10:01:00Z"),
                delete: vec!["tick-old"],
                event: Some("SuccessfulDelete"),
                wake_in_ms: Some(55_100),
            },
            Case {
                name: "a run past its starting deadline is missed",
                cj: with(every_minute(), |s| s.starting_deadline_seconds = Some(10)),
                jobs: vec![],
                now: "2024-01-01T10:01:30Z",
                create: None,
                delete: vec![],
                event: None,
                wake_in_ms: Some(30_100),
            },
            Case {
                name: "only the most recent missed run starts; over 100 is a warning",
                cj: cronjob("* * * * *", "2024-01-01T00:00:00Z"),
                jobs: vec![],
                now: "2024-01-01T10:01:05Z",
                create: Some("2024-01-01T10:01:00Z"),
                delete: vec![],
                event: Some("TooManyMissedTimes"),
                wake_in_ms: Some(55_100),
            },
            Case {
                name: "a suspended cronjob does nothing",
                cj: with(every_minute(), |s| s.suspend = Some(true)),
                jobs: vec![],
                now: "2024-01-01T10:01:05Z",
                create: None,
                delete: vec![],
                event: None,
                wake_in_ms: None,
            },
            Case {
                name: "history beyond the limits is deleted oldest first",
                cj: with(cronjob("0 0 1 1 *", "2024-01-01T00:00:30Z"), |s| {
                    s.successful_jobs_history_limit = Some(1);
                }),
                jobs: vec![
                    job("ok-1", "2024-01-01T01:00:00Z", Some("Complete")),
                    job("ok-2", "2024-01-01T02:00:00Z", Some("Complete")),
                    job("ok-3", "2024-01-01T03:00:00Z", Some("Complete")),
                    job("bad-1", "2024-01-01T01:00:00Z", Some("Failed")),
                    job("bad-2", "2024-01-01T02:00:00Z", Some("Failed")),
                ],
                now: "2024-01-01T10:00:00Z",
                create: None,
                delete: vec!["ok-1", "ok-2", "bad-1"],
                event: None,
                wake_in_ms: None,
            },
        ];
        for c in cases {
            let refs: Vec<&Job> = c.jobs.iter().collect();
            let now = at(c.now);
            let p = plan(&c.cj, &refs, now);
            let created = p.create.as_ref().map(|j| j.name_any());
            assert_eq!(
                created,
                c.create.map(|s| job_name("tick", at(s))),
                "{}: create",
                c.name
            );
            if let (Some(job), Some(s)) = (&p.create, c.create) {
                assert_eq!(
                    job.annotations()
                        .get(SCHEDULED_TIMESTAMP)
                        .map(String::as_str),
                    Some(s),
                    "{}",
                    c.name
                );
                assert_eq!(
                    p.status.last_schedule_time.as_ref().map(|t| t.0),
                    Some(at(s)),
                    "{}",
                    c.name
                );
            }
            assert_eq!(p.delete, c.delete, "{}: delete", c.name);
            match c.event {
                Some(reason) => assert!(
                    p.events.iter().any(|e| e.reason == reason),
                    "{}: events {:?}",
                    c.name,
                    p.events
                ),
                None => assert!(p.events.is_empty(), "{}: events {:?}", c.name, p.events),
            }
            if c.name.contains("history") {
                continue;
            }
            assert_eq!(
                p.requeue_after,
                c.wake_in_ms.map(Duration::from_millis),
                "{}: wake",
                c.name
            );
        }
    }

    #[test]
    fn status_lists_active_jobs_and_the_last_success() {
        let cj = cronjob("@daily", "2024-01-01T00:00:30Z");
        let jobs = [
            job("a", "2024-01-01T01:00:00Z", None),
            job("b", "2024-01-01T02:00:00Z", Some("Complete")),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let p = plan(&cj, &refs, at("2024-01-01T03:00:00Z"));
        let active: Vec<_> = p
            .status
            .active
            .unwrap()
            .into_iter()
            .filter_map(|r| r.name)
            .collect();
        assert_eq!(active, ["a"]);
        assert_eq!(
            p.status.last_successful_time.map(|t| t.0),
            Some(at("2024-01-01T02:00:00Z"))
        );
    }
}
