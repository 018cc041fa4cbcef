//! End to end: the real API server in-process, the controllers as API
//! clients, and a stand-in node agent that marks every pod Running and Ready
//! with an IP of its own. Checks the Endpoints and EndpointSlices a user
//! sees with real kubectl, and how fast a readiness change reaches them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use anyhow::{Context, Result, bail};
use common::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

async fn cluster() -> Result<Cluster> {
    Cluster::start(
        skiff_controllers::ControllerConfig::default(),
        fake_node_agent,
    )
    .await
}

/// Marks every pod that is not being deleted Running and Ready with an IP
/// of its own (`10.42.0.1`, `10.42.0.2`, …), and removes pods that are being
/// deleted, as a node agent would. A Running pod is left alone, so a test
/// can flip its readiness.
async fn fake_node_agent(client: kube::Client) {
    let next_ip = AtomicU32::new(1);
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(
                    &pod.name_any(),
                    &kube::api::DeleteParams::default().grace_period(0),
                )
                .await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Running") {
            continue;
        }
        let n = next_ip.fetch_add(1, Ordering::Relaxed);
        let ip = format!("10.42.{}.{}", n / 250, n % 250 + 1);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
        }});
        let _ = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}

const WEB: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/zone: zone-a}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {tier: front}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      nodeName: n1
      containers:
      - name: web
        image: skiff-test:1
        ports:
        - name: http
          containerPort: 8080
"#;

fn ip_set(s: &str) -> BTreeSet<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_pod_readiness_within_two_seconds_and_go_with_the_service() -> Result<()> {
    let c = cluster().await?;
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, WEB)?;
    c.kubectl(&["apply", "-f", file.to_str().context("path")?])?;

    // Three ready pods, each with its own IP, on the resolved port.
    c.wait_for(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{\" \"}{end}",
        ],
        "Running Running Running",
    )
    .await?;
    let pod_ips = ip_set(&c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ])?);
    assert_eq!(pod_ips.len(), 3, "distinct pod IPs: {pod_ips:?}");
    let mut sorted: Vec<_> = pod_ips.iter().cloned().collect();
    sorted.sort();
    c.wait_for(
        &[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip} {.subsets[*].ports[*].name}:{.subsets[*].ports[*].port}",
        ],
        &format!("{} http:8080", sorted.join(" ")),
    )
    .await?;
    let labels = c.kubectl(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.metadata.labels.tier} {.subsets[0].addresses[0].targetRef.kind} {.subsets[0].addresses[0].nodeName}",
    ])?;
    assert_eq!(labels, "front Pod n1");

    // Flip one pod's readiness: it moves to notReadyAddresses in under 2 s.
    let victim = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name} {.items[0].status.podIP}",
    ])?;
    let (victim, victim_ip) = victim.split_once(' ').context("name and ip")?;
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let endpoints: Api<Endpoints> = Api::default_namespaced(c.client.clone());
    let started = tokio::time::Instant::now();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    pods.patch_status(
        victim,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
        ]}})),
    )
    .await?;
    loop {
        let ep = endpoints.get("web").await?;
        let not_ready: Vec<String> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.not_ready_addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect();
        if not_ready == [victim_ip] {
            break;
        }
        if started.elapsed() > Duration::from_secs(2) {
            bail!("{victim_ip} not in notReadyAddresses after 2 s: {ep:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = c.kubectl(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[*].notReadyAddresses[*].ip}/{.subsets[*].addresses[*].ip}",
    ])?;
    let (not_ready, ready) = shown.split_once('/').context("two lists")?;
    assert_eq!(not_ready, victim_ip);
    let mut rest = pod_ips.clone();
    rest.remove(victim_ip);
    assert_eq!(ip_set(ready), rest, "{shown}");

    // One IPv4 slice owned by the service, with conditions and zone.
    // The slice is written by the same reconcile, right after the Endpoints.
    c.wait_for(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            &format!("jsonpath={{.items[*].endpoints[?(@.addresses[0]==\"{victim_ip}\")].conditions.ready}}"),
        ],
        "false",
    )
    .await?;
    let slices = c.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.addressType} {.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.ports[0].name}:{.ports[0].port} {range .endpoints[*]}{.conditions.ready},{.zone} {end}{\"\\n\"}{end}",
    ])?;
    let lines: Vec<&str> = slices.lines().collect();
    assert_eq!(lines.len(), 1, "one slice: {slices}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert!(
        fields[0].starts_with("web-") && fields[0].len() == 9,
        "{slices}"
    );
    assert_eq!(
        fields[1..4],
        ["IPv4", "Service/web", "http:8080"],
        "{slices}"
    );
    let mut conditions: Vec<&str> = fields[4..].to_vec();
    conditions.sort();
    assert_eq!(
        conditions,
        ["false,zone-a", "true,zone-a", "true,zone-a"],
        "{slices}"
    );

    // Deleting the service deletes its Endpoints and slices.
    c.kubectl(&["delete", "service", "web"])?;
    c.wait_gone(&["endpoints", "web"]).await?;
    c.wait_for(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        "",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_a_service_without_selector_are_left_to_the_user() -> Result<()> {
    let c = cluster().await?;
    let file = c.dir.path().join("manual.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: v1
kind: Service
metadata:
  name: external
spec:
  ports:
  - port: 5432
---
apiVersion: v1
kind: Endpoints
metadata:
  name: external
subsets:
- addresses: [{ip: 192.0.2.10}]
  ports: [{port: 5432}]
"#,
    )?;
    c.kubectl(&["apply", "-f", file.to_str().context("path")?])?;
    // Give the controller time to (wrongly) act, then check nothing changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shown = c.kubectl(&[
        "get",
        "endpoints",
        "external",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}:{.subsets[*].ports[*].port}",
    ])?;
    assert_eq!(shown, "192.0.2.10:5432");
    let slices = c.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=external",
        "-o",
        "name",
    ])?;
    assert_eq!(slices.trim(), "", "no managed slices");
    Ok(())
}
