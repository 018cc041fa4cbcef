//! Jobs end to end with the tracking finalizer: the real API server
//! in-process, the controllers, a stand-in node agent, and real kubectl.
//! Finished pods deleted at once are still counted; deleting a Job (in the
//! background or in the foreground) leaves no pod held by its finalizer.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

fn job(name: &str, completions: i32, parallelism: i32) -> String {
    format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"{name}"}},
            "spec":{{"completions":{completions},"parallelism":{parallelism},
              "template":{{"spec":{{"restartPolicy":"Never","containers":[{{"name":"c","image":"skiff-test:1"}}]}}}}}}}}"#
    )
}

/// Deletes every pod of the `default` namespace the moment it has
/// finished, and records the name of every pod it ever saw.
async fn delete_finished_pods(
    client: kube::Client,
    seen: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
) {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            continue;
        };
        if let Ok(mut s) = seen.lock() {
            s.insert(pod.name_any());
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed"))
            && pod.metadata.deletion_timestamp.is_none()
        {
            let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_pods_deleted_at_once_are_still_counted() -> Result<()> {
    let c = Cluster::start(Default::default(), common::ready_agent).await?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let deleter = tokio::spawn(delete_finished_pods(c.client.clone(), seen.clone()));

    let file = c.dir.path().join("job.json");
    std::fs::write(&file, job("count", 4, 2))?;
    c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
    c.kubectl_async(&[
        "wait",
        "--for=condition=complete",
        "job/count",
        "--timeout=60s",
    ])
    .await?;
    let status = c.kubectl(&[
        "get",
        "job",
        "count",
        "-o",
        "jsonpath={.status.succeeded}/{.status.failed}/{.status.uncountedTerminatedPods.succeeded}",
    ])?;
    assert_eq!(status, "4/0/", "succeeded/failed/uncounted");
    // Every pod was deleted as soon as it finished, yet none was counted
    // twice or lost: exactly as many pods as completions ever existed.
    let created = seen.lock().map(|s| s.len()).unwrap_or_default();
    assert_eq!(
        created,
        4,
        "pods seen: {:?}",
        seen.lock().map(|s| s.clone())
    );
    // And none is left held by the finalizer.
    c.wait_for(&["get", "pods", "-o", "name"], "").await?;
    deleter.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_job_releases_its_pods() -> Result<()> {
    // Pods stay Pending: the Job is deleted while they are active.
    let c = Cluster::start(Default::default(), common::deleting_agent).await?;
    let file = c.dir.path().join("job.json");
    for (name, cascade) in [("bg", "background"), ("fg", "foreground")] {
        std::fs::write(&file, job(name, 2, 2))?;
        c.kubectl(&["create", "-f", file.to_str().context("path")?])?;
        let selector = format!("batch.kubernetes.io/job-name={name}");
        let listed = &["get", "pods", "-l", &selector, "-o", "name"];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = c.kubectl_async(listed).await?;
            if out.lines().count() == 2 {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "pods of {name}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let finalizers = c.kubectl(&[
            "get",
            "pods",
            "-l",
            &selector,
            "-o",
            "jsonpath={.items[*].metadata.finalizers[*]}",
        ])?;
        assert_eq!(finalizers, format!("{FINALIZER} {FINALIZER}"), "{name}");
        c.kubectl_async(&[
            "delete",
            "job",
            name,
            &format!("--cascade={cascade}"),
            "--wait=false",
        ])
        .await?;
        c.wait_gone(&["job", name]).await?;
        c.wait_for(listed, "").await?;
    }
    Ok(())
}
