//! CronJobs end to end: the real API server in-process, the controllers,
//! and a stand-in node agent that makes Job pods succeed; driven with real
//! kubectl. No test waits for a minute boundary: a suspended CronJob whose
//! last run was two minutes ago is resumed, so a missed run (within
//! `startingDeadlineSeconds`) is due at once, as after a real suspension.

mod common;

use anyhow::{Result, ensure};
use common::Cluster;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "* * * * *"
  suspend: true
  startingDeadlineSeconds: 200
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels: {app: tick}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: skiff-test:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_cronjob_runs_its_missed_schedule_and_records_the_outcome() -> Result<()> {
    let c = Cluster::start(Default::default(), common::ready_agent).await?;
    c.apply(CRONJOB)?;
    // Suspended: nothing runs.
    let before = (Timestamp::now() - SignedDuration::from_secs(120)).to_string();
    c.kubectl(&[
        "patch",
        "cronjob",
        "tick",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"lastScheduleTime":"{before}"}}}}"#),
    ])?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(c.kubectl(&["get", "jobs", "-o", "name"])?, "");

    let resumed = Timestamp::now();
    c.kubectl(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ])?;
    c.wait_for(
        &["get", "jobs", "-o", "jsonpath={range .items[*]}x{end}"],
        "x",
    )
    .await?;
    let observed = Timestamp::now();
    let job = c.kubectl(&[
        "get",
        "jobs",
        "-o",
        "jsonpath={.items[0].metadata.name} {.items[0].metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp} {.items[0].metadata.ownerReferences[0].kind}",
    ])?;
    let parts: Vec<&str> = job.split(' ').collect();
    ensure!(parts.len() == 3, "{job}");
    let scheduled: Timestamp = parts[1].parse()?;
    let minutes = scheduled.as_second() / 60;
    assert_eq!(parts[0], format!("tick-{minutes}"), "{job}");
    assert_eq!(parts[2], "CronJob");
    assert_eq!(scheduled.as_second() % 60, 0);
    // The most recent missed minute, not an older one. A minute may also
    // turn between the resume and the controller's look, which then runs
    // that minute's schedule: it is never later than the job was seen.
    let age = resumed.as_second() - scheduled.as_second();
    assert!(
        age <= 60 && scheduled.as_second() <= observed.as_second(),
        "scheduled {age}s before resuming, job seen {}s after resuming",
        observed.as_second() - resumed.as_second()
    );

    // The stand-in agent makes its pod succeed: the Job completes and the
    // CronJob records it.
    c.kubectl_async(&[
        "wait",
        "--for=condition=complete",
        &format!("job/tick-{minutes}"),
        "--timeout=60s",
    ])
    .await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = c
            .kubectl_async(&[
                "get",
                "cronjob",
                "tick",
                "-o",
                "jsonpath={.status.lastScheduleTime}|{.status.active}|{.status.lastSuccessfulTime}",
            ])
            .await?;
        let fields: Vec<&str> = out.split('|').collect();
        ensure!(fields.len() == 3, "{out}");
        assert_eq!(fields[0], parts[1], "lastScheduleTime");
        if fields[1].is_empty() && !fields[2].is_empty() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "status never recorded the success: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=CronJob",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(events.contains("SuccessfulCreate"), "{events}");
    Ok(())
}
