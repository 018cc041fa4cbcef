//! End to end, as root: `skiff server` with its local node agent, inside a
//! network namespace this test creates (loopback plus a veth pair, both
//! ends inside, for the node address; no route leaves it), driven by the real kubectl run in
//! the same namespace. A Deployment from `kubectl apply` becomes real
//! containers of the project's test image (imported from
//! `<data-dir>/agent/images`), which become Ready through their readiness
//! probe, reach each other by pod IP, and serve `kubectl logs` and
//! `kubectl exec` through the API server's proxy to the agent.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Cluster, MultiNode, path_str};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "8080"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
        resources:
          requests: {cpu: 50m, memory: 32Mi}
          limits: {memory: 64Mi}
"#;

#[test]
fn a_deployment_applied_with_kubectl_runs_as_real_containers_on_the_local_node() -> Result<()> {
    let cluster = Cluster::start()?;
    let file = cluster.write("web.yaml", DEPLOYMENT)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])?;

    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=web", "-o", "json"])?)?;
    let items = pods["items"].as_array().context("items")?;
    ensure!(items.len() == 2, "{pods}");
    let mut ips = Vec::new();
    for pod in items {
        ensure!(pod["status"]["phase"] == "Running", "{pod}");
        ensure!(pod["spec"]["nodeName"] == "node-a", "{pod}");
        ensure!(pod["status"]["hostIP"] == "10.99.0.1", "{pod}");
        let ip = pod["status"]["podIP"].as_str().context("podIP")?;
        ensure!(ip.starts_with("10.42."), "pod IP {ip} outside the pod CIDR");
        let cs = &pod["status"]["containerStatuses"][0];
        ensure!(
            cs["ready"] == true && cs["state"]["running"].is_object(),
            "{cs}"
        );
        ensure!(
            cs["containerID"]
                .as_str()
                .is_some_and(|id| id.contains("://")),
            "{cs}"
        );
        ips.push(ip.to_string());
    }
    let first = items[0]["metadata"]["name"].as_str().context("name")?;

    // Logs and exec go through the API server to the agent.
    let logs = cluster.ok(&["logs", first])?;
    ensure!(logs.contains("netexec serving HTTP on :8080"), "{logs}");
    let out = cluster.ok(&[
        "exec", first, "--", "/testbin", "print", "hello", "from", "exec",
    ])?;
    ensure!(out.trim() == "hello from exec", "{out}");
    // Pod to pod, by IP, across the node's bridge.
    let target = format!("{}:8080", ips[1]);
    cluster.ok(&["exec", first, "--", "/testbin", "connect", &target])?;
    // The service account token is mounted.
    let token = cluster.ok(&[
        "exec",
        first,
        "--",
        "/testbin",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ])?;
    ensure!(token.trim() == "default", "{token}");

    // Scaling down and deleting stop the containers and remove the pods.
    cluster.ok(&["delete", "deployment", "web"])?;
    cluster.wait_for(
        &["get", "pods", "-l", "app=web", "-o", "name"],
        "",
        Duration::from_secs(60),
    )?;
    Ok(())
}

const SPREAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: spread
spec:
  replicas: 2
  selector:
    matchLabels: {app: spread}
  template:
    metadata:
      labels: {app: spread}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "8080"]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
"#;

fn two_nodes_reach_each_others_pods(backend: &str) -> Result<()> {
    let nodes = MultiNode::two_nodes(&format!("two-{backend}"), &["--flannel-backend", backend])?;
    let cluster = &nodes.cluster;

    let file = cluster.write("spread.yaml", SPREAD)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/spread", "--timeout=120s"])?;
    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=spread", "-o", "json"])?)?;
    let items = pods["items"].as_array().context("items")?;
    let mut by_node = std::collections::BTreeMap::new();
    for pod in items {
        by_node.insert(
            pod["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            (
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                pod["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        );
    }
    ensure!(by_node.len() == 2, "one pod per node expected: {by_node:?}");
    let (pod_a, ip_a) = &by_node["node-a"];
    let (pod_b, ip_b) = &by_node["node-b"];
    ensure!(ip_a != ip_b && ip_a.starts_with("10.42.") && ip_b.starts_with("10.42."));
    // Each pod reaches the other one's IP across the nodes.
    cluster.ok(&[
        "exec",
        pod_a,
        "--",
        "/testbin",
        "connect",
        &format!("{ip_b}:8080"),
    ])?;
    cluster.ok(&[
        "exec",
        pod_b,
        "--",
        "/testbin",
        "connect",
        &format!("{ip_a}:8080"),
    ])?;
    // Logs of the pod on the other node come through its agent.
    let logs = cluster.ok(&["logs", pod_b])?;
    ensure!(logs.contains("netexec serving HTTP"), "{logs}");

    // A ClusterIP service in front of both pods: every node's proxy routes
    // it, from a pod on either node, to the pods on both nodes.
    let svc = cluster.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: spread}\nspec:\n  selector: {app: spread}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    cluster.ok(&["apply", "-f", path_str(&svc)?])?;
    let cluster_ip = cluster.ok(&[
        "get",
        "service",
        "spread",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(cluster_ip.starts_with("10.43."), "{cluster_ip}");
    let target = format!("{}:80", cluster_ip.trim());
    for pod in [pod_a, pod_b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = cluster.kubectl(&["exec", pod, "--", "/testbin", "connect", &target])?;
            if out.status.success() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{pod} never reached {target}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The cluster DNS answers at the kube-dns service address.
    cluster.ok(&["exec", pod_b, "--", "/testbin", "connect", "10.43.0.10:53"])?;

    // Containers outlive their agent by design: stop them through the API
    // before the nodes go.
    cluster.ok(&["delete", "deployment", "spread"])?;
    cluster.wait_for(
        &["get", "pods", "-l", "app=spread", "-o", "name"],
        "",
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_vxlan() -> Result<()> {
    two_nodes_reach_each_others_pods("vxlan")
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_host_gw() -> Result<()> {
    two_nodes_reach_each_others_pods("host-gw")
}
