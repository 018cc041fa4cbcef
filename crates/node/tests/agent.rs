//! The node agent against the real API server (in process) and the fake
//! runtime: registration and heartbeats, pods running with the right
//! statuses, restarts with back-off, probes, graceful deletion, orphan
//! clean-up, and the agent server's logs and exec endpoints.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Cluster, FakeRuntime, NODE, TOKEN, condition, container_state};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

async fn events_for(c: &Cluster, pod: &str) -> Result<Vec<(String, String)>> {
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

async fn wait_event(c: &Cluster, pod: &str, reason: &str) -> Result<String> {
    for _ in 0..100 {
        if let Some((_, m)) = events_for(c, pod)
            .await?
            .into_iter()
            .find(|(r, _)| r == reason)
        {
            return Ok(m);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "no {reason} event for {pod}: {:?}",
        events_for(c, pod).await?
    )
}

#[tokio::test]
async fn node_registers_becomes_ready_and_renews_its_lease() -> Result<()> {
    let c = Cluster::start().await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let mut ready = false;
    for _ in 0..100 {
        if let Some(n) = nodes.get_opt(NODE).await? {
            let conds = n
                .status
                .clone()
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            if conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                ready = true;
                let labels = n.metadata.labels.clone().unwrap_or_default();
                assert_eq!(
                    labels.get("kubernetes.io/hostname").map(String::as_str),
                    Some(NODE)
                );
                assert_eq!(
                    labels.get("kubernetes.io/os").map(String::as_str),
                    Some("linux")
                );
                assert!(labels.contains_key("kubernetes.io/arch"));
                assert_eq!(
                    labels.get("example.com/role").map(String::as_str),
                    Some("test")
                );
                let status = n.status.clone().unwrap_or_default();
                let cap = status.capacity.unwrap_or_default();
                assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("110"));
                assert!(cap.contains_key("cpu") && cap.contains_key("memory"));
                assert!(cap.contains_key("ephemeral-storage"));
                let info = status.node_info.unwrap_or_default();
                assert_eq!(info.container_runtime_version, "fake://0.1");
                assert_eq!(info.operating_system, "linux");
                let port = status
                    .daemon_endpoints
                    .and_then(|d| d.kubelet_endpoint)
                    .map(|e| e.port);
                assert_eq!(port, Some(i32::from(c.agent_addr.port())));
                let addrs = status.addresses.unwrap_or_default();
                assert!(
                    addrs
                        .iter()
                        .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
                );
                for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
                    assert!(conds.iter().any(|c| c.type_ == t), "condition {t}");
                }
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "node never became Ready");

    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let renew = || async {
        let l = leases.get_opt(NODE).await?;
        anyhow::Ok(
            l.and_then(|l| l.spec)
                .and_then(|s| s.renew_time)
                .map(|t| t.0),
        )
    };
    let mut first = None;
    for _ in 0..50 {
        first = renew().await?;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = first.context("no lease")?;
    let lease = leases.get(NODE).await?;
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some(NODE)
    );
    for _ in 0..50 {
        if renew().await?.is_some_and(|t| t > first) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("lease was not renewed")
}

#[tokio::test]
async fn a_bound_pod_runs_with_init_and_container_statuses() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "initContainers": [{"name": "setup", "image": "fake/tools:1", "command": ["exit", "0"]}],
            "containers": [
                {"name": "app", "image": "fake/app:1",
                 "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "sidecar", "image": "fake/side:1"}
            ]
        }
    }))
    .await?;
    let pod = c
        .wait_pod("web", 30, "Ready", |p| {
            (condition(p, "Ready").as_deref() == Some("True")).then(|| p.clone())
        })
        .await?;
    let st = pod.status.clone().unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.qos_class.as_deref(), Some("Burstable"));
    assert!(st.start_time.is_some());
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, t).as_deref(), Some("True"), "{t}");
    }
    assert_eq!(
        container_state(&pod, "setup").as_deref(),
        Some("terminated:Completed")
    );
    for name in ["app", "sidecar"] {
        assert_eq!(
            container_state(&pod, name).as_deref(),
            Some("running"),
            "{name}"
        );
    }
    let app = st
        .container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == "app")
        .context("app status")?;
    assert_eq!(app.restart_count, 0);
    assert!(app.ready);
    assert_eq!(app.started, Some(true));
    assert_eq!(app.image, "fake/app:1");
    assert_eq!(app.image_id, common::fake_runtime::image_ref("fake/app:1"));
    assert!(
        app.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("fake://")),
        "{:?}",
        app.container_id
    );
    let reasons: Vec<String> = events_for(&c, "web")
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for r in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_container_restarts_with_backoff_and_shows_crash_loop() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crasher", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1", "command": ["fail", "3"],
                                 "terminationMessagePolicy": "FallbackToLogsOnError"}]}
    }))
    .await?;
    let pod = c
        .wait_pod("crasher", 30, "CrashLoopBackOff after restarts", |p| {
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            let waiting = cs.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            (waiting == "CrashLoopBackOff" && cs.restart_count >= 2).then(|| p.clone())
        })
        .await?;
    let cs = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|v| v.first())
        .context("status")?;
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("last state")?;
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(
        last.message
            .as_deref()
            .is_some_and(|m| m.starts_with("started app attempt")),
        "FallbackToLogsOnError puts the log tail in the message: {:?}",
        last.message
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    let msg = wait_event(&c, "crasher", "BackOff").await?;
    assert!(
        msg.contains("Back-off restarting failed container app"),
        "{msg}"
    );
    // The back-off doubles: restarts come further apart than the first.
    let restarts_now = cs.restart_count;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = c.pods().get("crasher").await?;
    let restarts_later = later
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|v| v.first().map(|c| c.restart_count))
        .unwrap_or(0);
    assert!(
        restarts_later <= restarts_now + 1,
        "{restarts_now} → {restarts_later} in 2 s"
    );
    Ok(())
}

#[tokio::test]
async fn a_container_that_must_not_restart_fails_the_pod() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "once", "namespace": "default"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "app", "image": "fake/app:1", "command": ["exit", "2"]}]}
    }))
    .await?;
    c.wait_pod("once", 30, "phase Failed", |p| {
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(())
    })
    .await?;
    let pod = c.pods().get("once").await?;
    assert_eq!(
        container_state(&pod, "app").as_deref(),
        Some("terminated:Error")
    );
    assert_eq!(
        c.runtime.containers_named("app").len(),
        1,
        "never restarted"
    );
    Ok(())
}

#[tokio::test]
async fn readiness_probe_flips_the_ready_condition() -> Result<()> {
    let c = Cluster::start().await?;
    c.runtime.set_exec_exit("app", 1);
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probed", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1",
            "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                               "periodSeconds": 1, "failureThreshold": 1}}]}
    }))
    .await?;
    c.wait_pod("probed", 30, "running but not ready", |p| {
        (container_state(p, "app").as_deref() == Some("running")
            && condition(p, "Ready").as_deref() == Some("False"))
        .then_some(())
    })
    .await?;
    c.runtime.set_exec_exit("app", 0);
    c.wait_pod("probed", 30, "Ready=True", |p| {
        (condition(p, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await?;
    c.runtime.set_exec_exit("app", 1);
    c.wait_pod("probed", 30, "Ready=False again", |p| {
        (condition(p, "Ready").as_deref() == Some("False")).then_some(())
    })
    .await?;
    let msg = wait_event(&c, "probed", "Unhealthy").await?;
    assert!(msg.starts_with("Readiness probe failed"), "{msg}");
    assert!(
        c.runtime
            .execs()
            .iter()
            .any(|(n, cmd)| n == "app" && cmd == &["cat", "/tmp/ready"])
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let c = Cluster::start().await?;
    c.runtime.set_exec_exit("app", 1);
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "live", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1",
            "livenessProbe": {"exec": {"command": ["true"]},
                              "periodSeconds": 1, "failureThreshold": 2}}]}
    }))
    .await?;
    c.wait_pod("live", 30, "a restart", |p| {
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        (cs.restart_count >= 1).then_some(())
    })
    .await?;
    let msg = wait_event(&c, "live", "Killing").await?;
    assert!(msg.contains("failed liveness probe"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_pod_runs_pre_stop_stops_containers_and_removes_the_object() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "doomed", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 7,
                 "containers": [{"name": "app", "image": "fake/app:1",
                    "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}}]}
    }))
    .await?;
    c.wait_pod("doomed", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;
    assert_eq!(c.runtime.sandbox_count(), 1);
    c.pods().delete("doomed", &DeleteParams::default()).await?;
    c.wait_gone("doomed", 30).await?;
    assert!(
        c.runtime
            .execs()
            .iter()
            .any(|(n, cmd)| n == "app" && cmd == &["drain"]),
        "preStop ran: {:?}",
        c.runtime.execs()
    );
    let stops = c.runtime.stops();
    let (_, timeout) = stops
        .iter()
        .find(|(n, _)| n == "app")
        .context("app stopped")?;
    assert!(
        *timeout > Duration::from_secs(5) && *timeout <= Duration::from_secs(7),
        "stopped with the grace period: {timeout:?}"
    );
    assert_eq!(c.runtime.sandbox_count(), 0, "sandbox removed");
    let dir = c.dir.path().join("agent/pods");
    let left: Vec<_> = std::fs::read_dir(&dir)?.collect();
    assert!(left.is_empty(), "pod directory removed: {left:?}");
    Ok(())
}

#[tokio::test]
async fn orphaned_sandboxes_are_removed_at_start() -> Result<()> {
    let runtime = FakeRuntime::new();
    runtime.add_orphan_sandbox("no-such-pod");
    let c = Cluster::start_with(runtime).await?;
    for _ in 0..100 {
        if c.runtime.sandbox_count() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("orphaned sandbox still there")
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_shows_err_image_pull_then_back_off() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nopull", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/notfound:1"}]}
    }))
    .await?;
    c.wait_pod("nopull", 30, "ErrImagePull or ImagePullBackOff", |p| {
        let s = container_state(p, "app")?;
        (s == "waiting:ErrImagePull" || s == "waiting:ImagePullBackOff").then_some(())
    })
    .await?;
    c.wait_pod("nopull", 30, "ImagePullBackOff", |p| {
        (container_state(p, "app")?.as_str() == "waiting:ImagePullBackOff").then_some(())
    })
    .await?;
    let msg = wait_event(&c, "nopull", "Failed").await?;
    assert!(
        msg.contains("Failed to pull image") || msg.contains("ErrImagePull"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_config_map_key_is_a_create_container_config_error() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cfg", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}]}
    }))
    .await?;
    c.wait_pod("cfg", 30, "CreateContainerConfigError", |p| {
        (container_state(p, "app")?.as_str() == "waiting:CreateContainerConfigError").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_automatic_service_account_token_without_token_request_is_a_failed_mount() -> Result<()>
{
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sa", "namespace": "default"},
        "spec": {"automountServiceAccountToken": true,
                 "containers": [{"name": "app", "image": "fake/app:1"}]}
    }))
    .await?;
    let msg = wait_event(&c, "sa", "FailedMount").await?;
    assert!(msg.contains("kube-api-access"), "{msg}");
    let pod = c.pods().get("sa").await?;
    assert_eq!(
        container_state(&pod, "app").as_deref(),
        Some("waiting:ContainerCreating")
    );
    assert_eq!(
        c.runtime.containers_named("app").len(),
        0,
        "nothing started"
    );
    Ok(())
}

#[tokio::test]
async fn config_map_volumes_are_written_and_follow_updates() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams, PostParams};
    let c = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"color": "blue"}
    }))?;
    cms.create(&PostParams::default(), &cm).await?;
    let pod = c
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vol", "namespace": "default"},
            "spec": {
                "volumes": [{"name": "cfg", "configMap": {"name": "settings"}},
                            {"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "fake/app:1",
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                     {"name": "scratch", "mountPath": "/scratch"}]}]
            }
        }))
        .await?;
    c.wait_pod("vol", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;
    let uid = pod.metadata.uid.context("uid")?;
    let vol = c
        .dir
        .path()
        .join("agent/pods")
        .join(&uid)
        .join("volumes/kubernetes.io~configmap/cfg");
    assert_eq!(std::fs::read_to_string(vol.join("color"))?, "blue");
    assert!(
        c.dir
            .path()
            .join("agent/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/scratch")
            .is_dir()
    );
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "green"}})),
    )
    .await?;
    for _ in 0..50 {
        if std::fs::read_to_string(vol.join("color")).unwrap_or_default() == "green" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("configMap volume did not follow the update")
}

#[tokio::test]
async fn the_log_endpoint_serves_the_container_log_to_authenticated_callers() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1"}]}
    }))
    .await?;
    c.wait_pod("talker", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;
    let (code, body) = c.agent_get("/healthz", None).await?;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = c
        .agent_get("/containerLogs/default/talker/app", None)
        .await?;
    assert_eq!(code, 401, "no credentials");
    let (code, _) = c
        .agent_get("/containerLogs/default/talker/app", Some("wrong"))
        .await?;
    assert_eq!(code, 401, "wrong token");
    let (code, body) = c
        .agent_get("/containerLogs/default/talker/app", Some(TOKEN))
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "started app attempt 0\n");
    let (code, body) = c
        .agent_get(
            "/containerLogs/default/talker/app?timestamps=true&tailLines=1",
            Some(TOKEN),
        )
        .await?;
    assert_eq!(code, 200);
    assert!(
        body.ends_with(" started app attempt 0\n") && body.len() > 30,
        "{body}"
    );
    let (code, _) = c
        .agent_get("/containerLogs/default/nobody/app", Some(TOKEN))
        .await?;
    assert_eq!(code, 404);
    Ok(())
}

#[tokio::test]
async fn exec_speaks_the_v5_channel_protocol() -> Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1"}]}
    }))
    .await?;
    c.wait_pod("shell", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;

    let connect = |query: &'static str| {
        let addr = c.agent_addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let config = skiff_node::tls::insecure_client_config()?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(
                    rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
                    tcp,
                )
                .await?;
            let mut req = format!(
                "wss://127.0.0.1:{}/exec/default/shell/app?{query}",
                addr.port()
            )
            .into_client_request()?;
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
            req.headers_mut()
                .insert("Authorization", format!("Bearer {TOKEN}").parse()?);
            let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
            let proto = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            anyhow::Ok((ws, proto))
        }
    };

    // echo: stdout on channel 1, then a Success status on channel 3.
    let (mut ws, proto) =
        connect("command=echo&command=hello&command=world&stdout=1&stderr=1").await?;
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&3) => {
                status = Some(serde_json::from_slice::<serde_json::Value>(&b[1..])?)
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "hello world\n");
    assert_eq!(status.context("status")?["status"], "Success");

    // stdin through channel 0, closed with channel 255.
    let (mut ws, _) = connect("command=cat&stdin=1&stdout=1").await?;
    ws.send(Message::Binary([&[0u8][..], b"ping"].concat().into()))
        .await?;
    ws.send(Message::Binary(vec![255u8, 0].into())).await?;
    let mut stdout = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(stdout, b"ping");

    // A non-zero exit is a Failure status with the exit code.
    let (mut ws, _) = connect("command=sh&command=-c&command=exit%203&stdout=1&stderr=1").await?;
    let mut status = None;
    let mut stderr = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) if b.first() == Some(&2) => stderr.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&3) => {
                status = Some(serde_json::from_slice::<serde_json::Value>(&b[1..])?)
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let status = status.context("status")?;
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(stderr, b"bye\n");
    Ok(())
}

#[tokio::test]
async fn attach_speaks_the_exec_protocol_and_ends_with_success_when_the_output_ends() -> Result<()>
{
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1", "stdin": true}]}
    }))
    .await?;
    c.wait_pod("talker", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;
    let tcp = tokio::net::TcpStream::connect(c.agent_addr).await?;
    let config = skiff_node::tls::insecure_client_config()?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
            tcp,
        )
        .await?;
    let mut req = format!(
        "wss://127.0.0.1:{}/attach/default/talker/app?stdin=1&stdout=1&stderr=1",
        c.agent_addr.port()
    )
    .into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await?;
    ws.send(Message::Binary([&[0u8][..], b"hi\n"].concat().into()))
        .await?;
    ws.send(Message::Binary(vec![255u8, 0].into())).await?;
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&3) => {
                status = Some(serde_json::from_slice::<serde_json::Value>(&b[1..])?)
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "attached\nhi\n");
    assert_eq!(status.context("status")?["status"], "Success");

    // A pod that is not on this node is a 404 before any upgrade.
    let (code, _) = c
        .agent_get("/attach/default/nobody/app?stdout=1", Some(TOKEN))
        .await?;
    assert_eq!(code, 404);
    Ok(())
}
