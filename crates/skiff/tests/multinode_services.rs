//! End to end, as root, on two nodes: `skiff server` with its local node
//! agent (`node-a`, 10.99.0.1) and a joined `skiff agent` (`node-b`,
//! 10.99.0.2), each in a network namespace of the test's own, the two
//! joined by one veth link (no route leaves them), driven by the real
//! kubectl. The backends run only on node-b. From a client pod on node-a
//! they answer by pod IP, through their ClusterIP and through its DNS
//! name; their NodePort answers from either host on both node addresses;
//! deleting the service removes its rules from both nodes, and the
//! ClusterIP and the node port stop answering. The cluster DNS (served on
//! node-a's host) answers pods on both nodes: `kubernetes.default`, the
//! service's name, and a headless service with the backends' pod IPs.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{MultiNode, Netns, path_str, pause_pod};

/// Two backends pinned to node-b, a NodePort service and a headless one
/// in front of them.
const BACKENDS: &str = r#"
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
      nodeSelector: {kubernetes.io/hostname: node-b}
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "9376"]
        ports: [{containerPort: 9376, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 9376}]
"#;

/// The two-node cluster with the backends Ready on node-b and the client
/// pods (name, node) Ready; returns the backends' names and pod IPs.
fn start(tag: &str, clients: &[(&str, &str)]) -> Result<(MultiNode, Vec<(String, String)>)> {
    let nodes = MultiNode::two_nodes(tag, &[])?;
    let cluster = &nodes.cluster;
    let mut manifest = BACKENDS.to_string();
    for (name, node) in clients {
        manifest.push_str(&pause_pod(name, "default", node, "{}"));
    }
    let file = cluster.write("web.yaml", &manifest)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    for (name, _) in clients {
        cluster.ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
    }
    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=web", "-o", "json"])?)?;
    let mut backends = Vec::new();
    for pod in pods["items"].as_array().context("items")? {
        ensure!(
            pod["spec"]["nodeName"] == "node-b" && pod["status"]["hostIP"] == "10.99.0.2",
            "a backend is not on node-b: {pod}"
        );
        let ip = pod["status"]["podIP"].as_str().context("podIP")?;
        ensure!(ip.starts_with("10.42."), "pod IP {ip} outside the pod CIDR");
        let name = pod["metadata"]["name"].as_str().context("name")?;
        backends.push((name.to_string(), ip.to_string()));
    }
    ensure!(backends.len() == 2, "{pods}");
    Ok((nodes, backends))
}

/// GET `url` from `pod`, retried for 30 s (the proxies follow a service
/// within seconds); the body.
fn get_from(nodes: &MultiNode, pod: &str, url: &str) -> Result<String> {
    nodes.eventually(
        &format!("GET {url} from {pod}"),
        Duration::from_secs(30),
        || {
            let (ok, body, err) = nodes.in_pod(pod, &["http-get", url])?;
            Ok(if ok {
                Ok(body)
            } else {
                Err(format!("{body}{err}"))
            })
        },
    )
}

/// GET `url` from a host's namespace, retried for 30 s; the body.
fn get_from_host(nodes: &MultiNode, host: &Netns, url: &str) -> Result<String> {
    nodes.eventually(
        &format!("GET {url} from the host {}", host.name),
        Duration::from_secs(30),
        || {
            let (ok, body, err) = host.http_get(url)?;
            Ok(if ok {
                Ok(body)
            } else {
                Err(format!("{body}{err}"))
            })
        },
    )
}

/// The proxy's nftables table in a host's namespace.
fn proxy_rules(host: &Netns) -> Result<String> {
    let out = host
        .command("nft")
        .args(["list", "table", "ip", "skiff-proxy"])
        .output()
        .context("running nft")?;
    ensure!(
        out.status.success(),
        "nft list table ip skiff-proxy in {}: {}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the `web` service's chains and map elements are named after
/// (not matched by `web-headless`).
const WEB_RULES: &str = "default/web/";

#[test]
fn a_client_on_one_node_reaches_backends_on_the_other_through_the_service_until_it_is_deleted()
-> Result<()> {
    let (nodes, backends) = start("msvc", &[("client-a", "node-a")])?;
    let cluster = &nodes.cluster;
    let names: BTreeSet<String> = backends.iter().map(|(n, _)| n.clone()).collect();

    // Pod to pod across the nodes, by IP.
    for (name, ip) in &backends {
        let body = get_from(&nodes, "client-a", &format!("http://{ip}:9376/hostname"))?;
        ensure!(&body == name, "{ip} answered {body:?}, not {name}");
    }

    // Through the ClusterIP, by address and by DNS name, both backends on
    // the other node answer (an endpoint is picked at random).
    let cluster_url = format!("http://{}:80/hostname", cluster.cluster_ip("web")?);
    for url in [
        cluster_url.as_str(),
        "http://web.default.svc.cluster.local:80/hostname",
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            seen.insert(get_from(&nodes, "client-a", url)?);
            if seen == names {
                break;
            }
        }
        ensure!(
            seen == names,
            "GET {url} from client-a reached {seen:?}, not both of {names:?}"
        );
    }

    // The node port, from either host, on either node's address, reaches
    // the backends (which all run on node-b).
    let port = cluster.ok(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("nodePort {port:?}"))?;
    ensure!((30000..=32767).contains(&port), "nodePort {port}");
    let node_urls = [
        format!("http://10.99.0.1:{port}/hostname"),
        format!("http://10.99.0.2:{port}/hostname"),
    ];
    let hosts = [&cluster.netns, &nodes.agents[0].netns];
    for host in hosts {
        for url in &node_urls {
            let body = get_from_host(&nodes, host, url)?;
            ensure!(
                names.contains(&body),
                "{url} from {} answered {body:?}, not one of {names:?}",
                host.name
            );
        }
    }
    for host in hosts {
        let rules = proxy_rules(host)?;
        ensure!(
            rules.contains(WEB_RULES),
            "no {WEB_RULES} rules in {}:\n{rules}",
            host.name
        );
    }

    // Deleting the service: the ClusterIP stops answering from the client
    // within seconds, the node port on both addresses too, and the rules
    // leave both nodes' tables.
    cluster.ok(&["delete", "service", "web"])?;
    let deleted = Instant::now();
    nodes.eventually(
        &format!("{cluster_url} to stop answering client-a after the delete"),
        Duration::from_secs(10),
        || {
            let (ok, body, err) = nodes.in_pod("client-a", &["http-get", &cluster_url])?;
            Ok(if ok { Err(body) } else { Ok(err) })
        },
    )?;
    eprintln!(
        "the ClusterIP stopped answering client-a {:?} after the delete",
        deleted.elapsed()
    );
    for url in &node_urls {
        nodes.eventually(
            &format!("{url} to stop answering the host after the delete"),
            Duration::from_secs(10),
            || {
                let (ok, body, err) = cluster.netns.http_get(url)?;
                Ok(if ok { Err(body) } else { Ok(err) })
            },
        )?;
    }
    for host in hosts {
        nodes.eventually(
            &format!("the web service's rules to leave {}", host.name),
            Duration::from_secs(10),
            || {
                let rules = proxy_rules(host)?;
                Ok(if rules.contains(WEB_RULES) {
                    Err(rules)
                } else {
                    Ok(())
                })
            },
        )?;
    }
    // With the rules gone it stays gone.
    let (ok, body, _) = nodes.in_pod("client-a", &["http-get", &cluster_url])?;
    ensure!(!ok, "{cluster_url} answered {body:?} after its rules went");
    eprintln!("all checks done {:?} after the delete", deleted.elapsed());
    Ok(())
}

#[test]
fn the_cluster_dns_answers_pods_on_both_nodes_with_the_other_nodes_pod_ips() -> Result<()> {
    let (nodes, backends) = start("mdns", &[("client-a", "node-a"), ("client-b", "node-b")])?;
    let cluster_ip = nodes.cluster.cluster_ip("web")?;
    let mut pod_ips: Vec<String> = backends.iter().map(|(_, ip)| ip.clone()).collect();
    pod_ips.sort();

    let cases = [
        ("kubernetes.default", vec!["10.43.0.1".to_string()]),
        ("web.default.svc.cluster.local", vec![cluster_ip.clone()]),
        ("web-headless.default.svc.cluster.local", pod_ips.clone()),
        // Through the pod's search path.
        ("web-headless", pod_ips.clone()),
    ];
    // client-a shares its node with the DNS server; client-b's queries
    // cross to it through node-b's proxy.
    for pod in ["client-a", "client-b"] {
        for (name, want) in &cases {
            nodes.eventually(
                &format!("lookup {name} in {pod} to print {want:?}"),
                Duration::from_secs(30),
                || {
                    let (ok, out, err) = nodes.in_pod(pod, &["lookup", name])?;
                    let got: Vec<String> = out.lines().map(str::to_string).collect();
                    Ok(if ok && &got == want {
                        Ok(())
                    } else {
                        Err(format!("{out}{err}"))
                    })
                },
            )?;
        }
    }
    Ok(())
}
