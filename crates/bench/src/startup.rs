//! `skiff bench startup`: pod startup latency on one real node, with the
//! built-in runtime running real containers, and the node agent's memory.
//!
//! Kubernetes' pod startup SLI: the time from a pod's creation to it being
//! observed Running (all containers started) through a watch, with the
//! image already present; the SLO is p99 ≤ 5 s.
//!
//! Steps: [`run_isolated`] creates a network namespace (loopback and a veth
//! pair whose both ends stay inside it; no route leaves it) and runs this
//! benchmark again inside it through `nsenter`. Inside, [`run`] starts
//! `skiff server --disable-agent` and a separate `skiff agent` (so the
//! agent's memory is its own), with the test image staged for import;
//! runs one warm-up pod; then for each round size N creates N pods at once
//! (all `pause` containers of the test image, `imagePullPolicy: Never`),
//! times each from just before its create call to the first watch event
//! showing it Running, measures the agent and its container monitors'
//! memory while the pods run, and deletes them (timing that too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::stats::Samples;

/// The environment variable that tells the re-run benchmark which network
/// namespace it runs in.
pub const NETNS_ENV: &str = "SKIFF_BENCH_NETNS";

pub(crate) const LABEL: &str = "skiff-bench";
const NODE_NAME: &str = "bench-node";
const NODE_IP: &str = "10.99.0.1";

/// What to run.
#[derive(Debug, Clone)]
pub struct StartupBenchConfig {
    /// Pods per round (each round starts from an empty node).
    pub rounds: Vec<usize>,
    /// The `skiff` binary to run as server and agent.
    pub binary: PathBuf,
    /// The test image archive to stage (docker-archive or OCI layout tar).
    pub image_archive: PathBuf,
    /// Scratch data goes in a temp dir below this.
    pub work_dir: PathBuf,
    /// Give up on a round after this long.
    pub timeout: Duration,
}

/// One round's figures.
#[derive(Debug, Clone, Default)]
pub struct RoundFigures {
    pub pods: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// From the first create call to the last pod Running.
    pub all_running: Duration,
    /// From the delete calls to the last pod gone.
    pub all_deleted: Duration,
    /// The agent process while the round's pods run.
    pub agent: Memory,
    /// The container monitors (one process per container) and the monitor
    /// zygote, summed.
    pub monitors: Memory,
    pub monitor_count: usize,
}

/// Resident memory of one process or a group of them, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    /// Proportional set size: shared pages split among their sharers (the
    /// monitors are forks of the agent and share most of its pages).
    pub pss_kib: u64,
}

/// The project's test image as a docker-archive tarball, built from
/// `crates/testbin` with cargo (no network needed).
pub fn test_image_archive() -> Result<PathBuf> {
    skiff_testing::test_image_archive_as(skiff_testing::ArchiveFormat::DockerArchive)
}

/// Creates the benchmark's network namespace, runs `args` (this same
/// benchmark) inside it with [`NETNS_ENV`] set, and deletes it again.
pub fn run_isolated(binary: &Path, args: &[String]) -> Result<()> {
    let name = format!("skiff-bench-startup-{}", std::process::id());
    let ip = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .context("running ip (iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let _ = ip(&["netns", "del", &name]);
    ip(&["netns", "add", &name])?;
    let result = (|| -> Result<()> {
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &name, "link", "add", "node0", "type", "veth", "peer", "name", "node0p",
        ])?;
        ip(&["-n", &name, "addr", "add", "10.99.0.1/24", "dev", "node0"])?;
        ip(&["-n", &name, "link", "set", "node0", "up"])?;
        ip(&["-n", &name, "link", "set", "node0p", "up"])?;
        // `nsenter`, not `ip netns exec`: the latter remounts /sys, which
        // hides the cgroup hierarchy from the runtime.
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{name}"))
            .arg("--")
            .arg(binary)
            .args(args)
            .env(NETNS_ENV, &name)
            .status()
            .context("running nsenter")?;
        if !status.success() {
            bail!("the benchmark inside {name} failed ({status})");
        }
        Ok(())
    })();
    let _ = ip(&["netns", "del", &name]);
    result
}

/// Runs the benchmark; must already be inside the namespace
/// [`run_isolated`] made (it binds the node address 10.99.0.1).
pub async fn run(config: StartupBenchConfig) -> Result<Vec<RoundFigures>> {
    let node = NodeConfig {
        binary: config.binary.clone(),
        image_archive: config.image_archive.clone(),
        work_dir: config.work_dir.clone(),
    };
    with_node(&node, |client, agent_pid, agent_data| async move {
        rounds(&client, &config, agent_pid, &agent_data).await
    })
    .await
}

/// What [`with_node`] starts.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub binary: PathBuf,
    pub image_archive: PathBuf,
    pub work_dir: PathBuf,
}

/// Starts `skiff server --disable-agent` and a separate `skiff agent` with
/// the test image staged, waits for the node to be Ready, runs `body` with
/// an admin client, the agent's pid and its data dir, then deletes every
/// pod labelled [`LABEL`] and stops both. Must already run inside the
/// namespace [`run_isolated`] made.
pub(crate) async fn with_node<T, F, Fut>(config: &NodeConfig, body: F) -> Result<T>
where
    F: FnOnce(kube::Client, u32, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    if std::env::var_os(NETNS_ENV).is_none() {
        bail!("this benchmark runs a node agent: start it through run_isolated");
    }
    let scratch = tempfile::Builder::new()
        .prefix("skiff-bench-node-")
        .tempdir_in(&config.work_dir)?;
    let dir = scratch.path();
    let server_data = dir.join("server");
    let agent_data = dir.join("agent");
    let images = agent_data.join("agent").join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(&config.image_archive, images.join("testbin.tar"))
        .with_context(|| format!("staging {}", config.image_archive.display()))?;

    let server =
        crate::child::spawn_server(&config.binary, dir, &server_data, "", &["--disable-agent"])?;
    let port = server.port;
    let kubeconfig = server_data.join("cred/admin.kubeconfig");
    let token_file = server_data.join("token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(kubeconfig.exists() && token_file.exists()) {
        if Instant::now() > deadline {
            bail!(
                "the server wrote no kubeconfig/token; see {}",
                server.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let agent_log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = tokio::process::Command::new(&config.binary)
        .arg("agent")
        .args(["--server", &format!("https://127.0.0.1:{port}")])
        .args(["--token", &token])
        .arg("--data-dir")
        .arg(&agent_data)
        .args(["--node-name", NODE_NAME, "--node-ip", NODE_IP])
        .env("RUST_LOG", agent_log_filter())
        .stdin(Stdio::null())
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()
        .context("starting skiff agent")?;
    let mut server_child = server.child;
    let agent_pid = agent.id().context("the agent exited at once")?;

    let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
    let result = match wait_node_ready(&client).await {
        Ok(()) => body(client.clone(), agent_pid, agent_data.clone()).await,
        Err(e) => Err(e),
    };
    // Whatever happened, no container is left running.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let _ = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(LABEL),
        )
        .await;
    let _ = wait_gone(&pods, LABEL, Duration::from_secs(120)).await;
    let _ = agent.kill().await;
    let _ = server_child.kill().await;
    if std::env::var_os("SKIFF_BENCH_AGENT_LOG").is_some() {
        let kept = config.work_dir.join("skiff-bench-agent.log");
        match std::fs::copy(dir.join("agent.log"), &kept) {
            Ok(_) => eprintln!("agent log kept in {}", kept.display()),
            Err(e) => eprintln!("keeping the agent log: {e}"),
        }
    }
    result
}

/// The agent's log filter: `warn`, or `SKIFF_BENCH_AGENT_LOG` (e.g.
/// `info`) to follow each pod's steps; the log is then kept as
/// `<work dir>/skiff-bench-agent.log`.
fn agent_log_filter() -> String {
    std::env::var("SKIFF_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into())
}

async fn wait_node_ready(client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(n) = nodes.get(NODE_NAME).await
            && n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {NODE_NAME} never became Ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rounds(
    client: &kube::Client,
    config: &StartupBenchConfig,
    agent_pid: u32,
    agent_data: &Path,
) -> Result<Vec<RoundFigures>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The image is unpacked and the first sandbox set up outside the timing.
    round(&pods, "warmup", 1, config.timeout, None).await?;
    let mut out = Vec::new();
    for &n in &config.rounds {
        let f = round(
            &pods,
            &format!("r{n}"),
            n,
            config.timeout,
            Some((agent_pid, agent_data)),
        )
        .await?;
        print_round(&f);
        out.push(f);
    }
    Ok(out)
}

fn pod(name: &str, round: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: round}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "pause",
                "image": "skiff.test/testbin:1",
                "imagePullPolicy": "Never",
                "args": ["pause"],
            }],
        },
    }))
    .expect("a literal pod")
}

async fn round(
    pods: &Api<Pod>,
    round: &str,
    n: usize,
    timeout: Duration,
    measure: Option<(u32, &Path)>,
) -> Result<RoundFigures> {
    let selector = format!("{LABEL}={round}");
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    let mut events = watcher(pods.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    // The watch is open before the first create.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let created_at: HashMap<String, Instant>;
    let start = Instant::now();
    {
        let creates = async {
            let _ = ready_rx.await;
            let mut at = HashMap::new();
            let calls = (0..n).map(|i| {
                let name = format!("{round}-{i}");
                let p = pod(&name, round);
                async move {
                    let t = Instant::now();
                    pods.create(&PostParams::default(), &p).await?;
                    Ok::<_, kube::Error>((name, t))
                }
            });
            for r in futures::future::join_all(calls).await {
                let (name, t) = r?;
                at.insert(name, t);
            }
            Ok::<_, anyhow::Error>(at)
        };
        let watch = async {
            let mut ready_tx = Some(ready_tx);
            // The first poll opens the watch (its initial list).
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(tx) = ready_tx.take() {
                    // Let the watch's list go out before the creates.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = tx.send(());
                }
                let next = tokio::time::timeout_at(deadline, events.next()).await;
                let Ok(Some(ev)) = next else {
                    bail!(
                        "round {round}: {} of {n} pods Running after {timeout:?}",
                        running_at.len()
                    );
                };
                let Ok(p) = ev else { continue };
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running && let Some(name) = p.metadata.name.clone() {
                    running_at.entry(name).or_insert_with(Instant::now);
                }
                if running_at.len() == n {
                    return Ok(());
                }
            }
        };
        let (c, w) = tokio::join!(creates, watch);
        w?;
        created_at = c?;
    }
    let mut samples = Samples::default();
    for (name, t) in &created_at {
        let r = running_at
            .get(name)
            .with_context(|| format!("{name} never seen Running"))?;
        samples.push(r.saturating_duration_since(*t));
    }
    let all_running = running_at
        .values()
        .max()
        .map(|t| t.saturating_duration_since(start))
        .unwrap_or_default();
    let mut f = RoundFigures {
        pods: n,
        p50: samples.percentile(50.0),
        p99: samples.percentile(99.0),
        max: samples.percentile(100.0),
        all_running,
        ..Default::default()
    };
    if let Some((pid, agent_data)) = measure {
        // Let the agent settle (status updates, probes) before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        f.agent = memory_of(pid)?;
        let (m, count) = monitors_of(pid, agent_data)?;
        f.monitors = m;
        f.monitor_count = count;
    }
    let t = Instant::now();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&selector),
    )
    .await?;
    wait_gone(pods, &selector, timeout).await?;
    f.all_deleted = t.elapsed();
    Ok(f)
}

pub(crate) async fn wait_gone(pods: &Api<Pod>, selector: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = pods.list(&ListParams::default().labels(selector)).await?;
        if left.items.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} pods ({selector}) still there after {timeout:?}",
                left.items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// VmRSS and Pss of one process.
fn memory_of(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss_kib: kib_field(&status, "VmRSS:").context("no VmRSS")?,
        pss_kib: kib_field(&rollup, "Pss:").context("no Pss")?,
    })
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The container monitors of the agent `pid`, and the zygote that forks
/// them (see `skiff_runtime::Zygote`): the agent's forks, which keep its
/// command line (they run no other program), other than the agent itself.
fn monitors_of(pid: u32, agent_data: &Path) -> Result<(Memory, usize)> {
    let agent_cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let data = agent_data.to_string_lossy().into_owned();
    let mut total = Memory::default();
    let mut count = 0;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if other == pid {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{other}/cmdline")) else {
            continue;
        };
        if cmdline != agent_cmdline || !String::from_utf8_lossy(&cmdline).contains(&data) {
            continue;
        }
        if let Ok(m) = memory_of(other) {
            total.rss_kib += m.rss_kib;
            total.pss_kib += m.pss_kib;
            count += 1;
        }
    }
    Ok((total, count))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_round(f: &RoundFigures) {
    println!(
        "{} pods: created → Running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; all Running after {:.2} s; \
         agent RSS {} (PSS {}); {} monitors PSS {} (RSS {}); all deleted after {:.2} s",
        f.pods,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
        f.all_running.as_secs_f64(),
        mib(f.agent.rss_kib),
        mib(f.agent.pss_kib),
        f.monitor_count,
        mib(f.monitors.pss_kib),
        mib(f.monitors.rss_kib),
        f.all_deleted.as_secs_f64(),
    );
}

/// The figures as a markdown table.
pub fn print_table(figures: &[RoundFigures]) {
    println!();
    println!(
        "| pods | created → Running p50 | p99 | max | all Running | agent RSS (PSS) | monitors: count, PSS | all deleted |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in figures {
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {} ({}) | {}, {} | {:.2} s |",
            f.pods,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3,
            f.all_running.as_secs_f64(),
            mib(f.agent.rss_kib),
            mib(f.agent.pss_kib),
            f.monitor_count,
            mib(f.monitors.pss_kib),
            f.all_deleted.as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_by_name() {
        let text = "Name:\tskiff\nVmRSS:\t   12345 kB\nPss:  77 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(12345));
        assert_eq!(kib_field(text, "Pss:"), Some(77));
        assert_eq!(kib_field(text, "VmHWM:"), None);
    }
}
