//! End to end, as root, on two nodes (`skiff server` as node-a and a
//! joined `skiff agent` as node-b, each in a network namespace of the
//! test's own, linked by one veth pair; nothing leaves them), driven by
//! the real kubectl: NetworkPolicies are enforced on the pods they select,
//! across nodes and on one node, by pod IP and through a ClusterIP.
//!
//! - `web` (app=web, node-b) serves HTTP; clients: `front` (role=frontend)
//!   and `plain` on node-a, `neighbour` on node-b, `outsider` in the
//!   namespace `other` on node-a.
//! - With no policy everyone reaches web.
//! - A deny-all ingress policy on app=web cuts everyone off, whether they
//!   come across the nodes or from web's own node.
//! - An allow policy for role=frontend on the served port, and one for the
//!   namespace `other` by its `kubernetes.io/metadata.name` label, let
//!   exactly those clients in again, by pod IP and through the service.
//! - An egress policy with no rules cuts `front` off from everything,
//!   while the others keep their access; one that allows egress to the
//!   DNS pods only (`k8s-app: kube-dns` in `kube-system`) still lets a pod
//!   on node-b resolve names, though skiff's DNS runs on node-a's host;
//!   deleting the policies restores the open network.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{MultiNode, path_str, pause_pod};

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: other
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  nodeName: node-b
  containers:
  - name: netexec
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["netexec", "--http-port", "9376"]
    ports: [{containerPort: 9376, name: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

const DENY_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-web
spec:
  podSelector:
    matchLabels: {app: web}
"#;

const ALLOW_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-frontend
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: frontend}
    ports:
    - port: http
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-other-namespace
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: other}
"#;

const LOCK_FRONT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: lock-front
spec:
  podSelector:
    matchLabels: {role: frontend}
  policyTypes: [Egress]
"#;

const DNS_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: dns-only
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
"#;

/// (pod, namespace) of each client.
const CLIENTS: [(&str, &str); 4] = [
    ("front", "default"),
    ("plain", "default"),
    ("neighbour", "default"),
    ("outsider", "other"),
];

/// Waits until `GET url` from each client succeeds exactly for those in
/// `allowed` (the proxies and policy tables follow within seconds).
fn expect_reach(nodes: &MultiNode, url: &str, allowed: &[&str]) -> Result<()> {
    nodes.eventually(
        &format!("only {allowed:?} to reach {url}"),
        Duration::from_secs(30),
        || {
            let mut wrong = Vec::new();
            for (pod, ns) in CLIENTS {
                let out = nodes
                    .cluster
                    .kubectl(&["-n", ns, "exec", pod, "--", "/testbin", "http-get", url])?;
                let reached = out.status.success();
                if reached != allowed.contains(&pod) {
                    wrong.push(format!(
                        "{pod}: reached={reached} ({}{})",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            Ok(if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            })
        },
    )
}

#[test]
fn network_policies_allow_only_what_they_select_across_and_within_nodes() -> Result<()> {
    let nodes = MultiNode::two_nodes("npol", &[])?;
    let cluster = &nodes.cluster;
    let mut manifest = WORKLOADS.to_string();
    manifest.push_str(&pause_pod("front", "default", "node-a", "{role: frontend}"));
    manifest.push_str(&pause_pod("plain", "default", "node-a", "{}"));
    manifest.push_str(&pause_pod("neighbour", "default", "node-b", "{}"));
    manifest.push_str(&pause_pod("outsider", "other", "node-a", "{}"));
    let file = cluster.write("workloads.yaml", &manifest)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    for (pod, ns) in CLIENTS.iter().chain(&[("web", "default")]) {
        cluster.ok(&[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=120s",
        ])?;
    }
    let labels = cluster.ok(&[
        "get",
        "namespace",
        "other",
        "-o",
        "jsonpath={.metadata.labels}",
    ])?;
    ensure!(
        labels.contains(r#""kubernetes.io/metadata.name":"other""#),
        "the namespace lacks its name label: {labels}"
    );
    let web_ip = cluster.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"])?;
    let by_ip = format!("http://{}:9376/hostname", web_ip.trim());
    let by_service = format!("http://{}:80/hostname", cluster.cluster_ip("web")?);
    let everyone = ["front", "plain", "neighbour", "outsider"];

    expect_reach(&nodes, &by_ip, &everyone)?;

    let deny = cluster.write("deny.yaml", DENY_WEB)?;
    cluster.ok(&["apply", "-f", path_str(&deny)?])?;
    expect_reach(&nodes, &by_ip, &[])?;
    expect_reach(&nodes, &by_service, &[])?;

    let allow = cluster.write("allow.yaml", ALLOW_WEB)?;
    cluster.ok(&["apply", "-f", path_str(&allow)?])?;
    expect_reach(&nodes, &by_ip, &["front", "outsider"])?;
    expect_reach(&nodes, &by_service, &["front", "outsider"])?;

    let lock = cluster.write("lock.yaml", LOCK_FRONT)?;
    cluster.ok(&["apply", "-f", path_str(&lock)?])?;
    expect_reach(&nodes, &by_ip, &["outsider"])?;

    // Egress to the DNS pods only, the usual rule: skiff's DNS runs on
    // node-a's host, yet `neighbour` on node-b still resolves names.
    let dns_only = cluster.write("dns-only.yaml", DNS_ONLY)?;
    cluster.ok(&["apply", "-f", path_str(&dns_only)?])?;
    expect_reach(&nodes, &by_ip, &["outsider"])?;
    let web_cluster_ip = cluster.cluster_ip("web")?;
    nodes.eventually(
        "neighbour (node-b) to resolve web through the DNS its policy allows",
        Duration::from_secs(30),
        || {
            let (ok, out, err) =
                nodes.in_pod("neighbour", &["lookup", "web.default.svc.cluster.local"])?;
            Ok(if ok && out == web_cluster_ip {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            })
        },
    )?;

    cluster.ok(&["delete", "networkpolicy", "--all"])?;
    expect_reach(&nodes, &by_ip, &everyone)?;
    expect_reach(&nodes, &by_service, &everyone)?;

    // With no policy left, no node keeps a table.
    for host in [&cluster.netns, &nodes.agents[0].netns] {
        nodes.eventually(
            &format!("the policy table to leave {}", host.name),
            Duration::from_secs(10),
            || {
                let out = host
                    .command("nft")
                    .args(["list", "table", "ip", "skiff-netpol"])
                    .output()?;
                Ok(if out.status.success() {
                    Err(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Ok(())
                })
            },
        )?;
    }
    Ok(())
}
