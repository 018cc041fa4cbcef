//! `skiff bench connections`: TCP connections per second from one pod to
//! another on one real node, through the service's ClusterIP (the service
//! proxy's DNAT) and straight to the pod IP, in the same run.
//!
//! Inside the network namespace [`crate::startup::run_isolated`] makes, on
//! the node [`crate::startup::with_node`] starts: a server pod running the
//! test image's `netexec` with its TCP echo port and a ClusterIP service in
//! front of it; then, per round and per target, a client pod running
//! `testbin connect-rate TARGET SECONDS` (connect, one echo round trip,
//! reset; one connection after another), whose log gives the count.
//! Rounds alternate the two targets so drift affects both alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::json;

use crate::startup::{LABEL, NodeConfig, wait_gone, with_node};

/// The server's TCP echo port.
const ECHO_PORT: u16 = 9000;

/// What to run.
#[derive(Debug, Clone)]
pub struct ConnectionsBenchConfig {
    node: NodeConfig,
    /// How long each client connects.
    pub seconds: f64,
    /// Rounds (each measures both targets once).
    pub rounds: usize,
}

impl ConnectionsBenchConfig {
    /// The node to start (the `skiff` binary, the test image archive, and
    /// where scratch data goes), `seconds` per measurement and `rounds`.
    pub fn new(
        binary: std::path::PathBuf,
        image_archive: std::path::PathBuf,
        work_dir: std::path::PathBuf,
        seconds: f64,
        rounds: usize,
    ) -> Self {
        Self {
            node: NodeConfig {
                binary,
                image_archive,
                work_dir,
            },
            seconds,
            rounds,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct ConnectionFigures {
    /// `pod IP` or `ClusterIP`.
    pub target: &'static str,
    pub round: usize,
    pub connections: u64,
    pub failures: u64,
    pub seconds: f64,
}

impl ConnectionFigures {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Parses `connections N failures F seconds S`.
fn parse_counts(log: &str) -> Option<(u64, u64, f64)> {
    let line = log.lines().rev().find(|l| l.starts_with("connections "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["connections", n, "failures", f, "seconds", s] => {
            Some((n.parse().ok()?, f.parse().ok()?, s.parse().ok()?))
        }
        _ => None,
    }
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a literal object")
}

/// Runs the benchmark; must already be inside the namespace
/// [`crate::startup::run_isolated`] made.
pub async fn run(config: ConnectionsBenchConfig) -> Result<Vec<ConnectionFigures>> {
    let node = config.node.clone();
    with_node(&node, |client, _, _| async move {
        measure(&client, &config).await
    })
    .await
}

async fn measure(
    client: &kube::Client,
    config: &ConnectionsBenchConfig,
) -> Result<Vec<ConnectionFigures>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let server: Pod = object(json!({
        "metadata": {"name": "conn-server", "labels": {LABEL: "connections", "app": "conn-server"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "netexec",
                "image": "skiff.test/testbin:1",
                "imagePullPolicy": "Never",
                "args": ["netexec", "--http-port", "8080", "--tcp-port", ECHO_PORT.to_string()],
                "readinessProbe": {"tcpSocket": {"port": ECHO_PORT}, "periodSeconds": 1},
            }],
        },
    }));
    pods.create(&PostParams::default(), &server).await?;
    let service: Service = object(json!({
        "metadata": {"name": "conn-server"},
        "spec": {"selector": {"app": "conn-server"}, "ports": [{"port": ECHO_PORT}]},
    }));
    let _ = services
        .delete("conn-server", &DeleteParams::default())
        .await;
    let service = services.create(&PostParams::default(), &service).await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the service got no cluster IP")?;

    let deadline = Instant::now() + Duration::from_secs(120);
    let pod_ip = loop {
        let p = pods.get("conn-server").await?;
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if let (true, Some(ip)) = (ready, status.pod_ip) {
            break ip;
        }
        if Instant::now() > deadline {
            bail!("the server pod was not Ready within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Until the proxy routes the service, a short warm-up through it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let warm = client_run(&pods, "conn-warmup", &cluster_ip, 0.5).await?;
        if warm.0 > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("no connection through {cluster_ip}:{ECHO_PORT} within a minute");
        }
    }

    let mut out = Vec::new();
    for round in 0..config.rounds {
        for (target, addr) in [("pod IP", &pod_ip), ("ClusterIP", &cluster_ip)] {
            let name = format!(
                "conn-{}-{round}",
                if target == "pod IP" { "pod" } else { "svc" }
            );
            let (connections, failures, seconds) =
                client_run(&pods, &name, addr, config.seconds).await?;
            let f = ConnectionFigures {
                target,
                round,
                connections,
                failures,
                seconds,
            };
            println!(
                "round {round}: {target:>9} {:>9.0} connections/s ({} in {:.2} s, {} failed)",
                f.per_second(),
                f.connections,
                f.seconds,
                f.failures
            );
            out.push(f);
        }
    }
    let _ = services
        .delete("conn-server", &DeleteParams::default())
        .await;
    Ok(out)
}

/// Runs one client pod against `addr` for `seconds` and reads its counts.
async fn client_run(
    pods: &Api<Pod>,
    name: &str,
    addr: &str,
    seconds: f64,
) -> Result<(u64, u64, f64)> {
    let selector = format!("{LABEL}={name}");
    let client: Pod = object(json!({
        "metadata": {"name": name, "labels": {LABEL: name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "client",
                "image": "skiff.test/testbin:1",
                "imagePullPolicy": "Never",
                "args": ["connect-rate", format!("{addr}:{ECHO_PORT}"), seconds.to_string()],
            }],
        },
    }));
    pods.create(&PostParams::default(), &client).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds) + Duration::from_secs(120);
    loop {
        let phase = pods
            .get(name)
            .await?
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        if Instant::now() > deadline {
            bail!("client pod {name} did not finish (phase {phase:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = pods.logs(name, &LogParams::default()).await?;
    pods.delete(name, &DeleteParams::default()).await?;
    wait_gone(pods, &selector, Duration::from_secs(60)).await?;
    parse_counts(&log).with_context(|| format!("client pod {name} printed no counts: {log:?}"))
}

/// The figures as a Markdown table: each target's per-round rates and
/// their mean.
pub fn print_table(figures: &[ConnectionFigures]) {
    println!("\n| target | connections/s per round | mean | failures |");
    println!("|---|---|---:|---:|");
    for target in ["pod IP", "ClusterIP"] {
        let rows: Vec<&ConnectionFigures> = figures.iter().filter(|f| f.target == target).collect();
        if rows.is_empty() {
            continue;
        }
        let rates: Vec<String> = rows
            .iter()
            .map(|f| format!("{:.0}", f.per_second()))
            .collect();
        let mean = rows.iter().map(|f| f.per_second()).sum::<f64>() / rows.len() as f64;
        let failures: u64 = rows.iter().map(|f| f.failures).sum();
        println!(
            "| {target} | {} | {mean:.0} | {failures} |",
            rates.join(" / ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_the_last_counts_line() {
        assert_eq!(
            parse_counts("warming\nconnections 1200 failures 3 seconds 2.004\n"),
            Some((1200, 3, 2.004))
        );
        assert_eq!(parse_counts("connections x failures 0 seconds 1"), None);
        assert_eq!(parse_counts(""), None);
    }
}
