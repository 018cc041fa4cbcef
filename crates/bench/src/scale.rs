//! `skiff bench scale`: a ClusterLoader2-density-like load on a whole
//! control plane (API server, scheduler, controller manager) with
//! simulated nodes (`skiff-sim`) under it.
//!
//! Steps: start a fresh server (the real `skiff server` binary as a child,
//! `--disable-agent`, on a scratch data dir, embedded store or an etcd this
//! benchmark starts); register N simulated nodes in this process; create D
//! Deployments (`pods_per_deployment` replicas each) at a bounded rate until
//! they ask for P pods; wait until every pod is Running; scale them all to
//! 0, wait until every pod is gone, and delete them.
//!
//! One watch of the benchmark's pods records, per pod, when it was first
//! seen (created), first seen with a `spec.nodeName` (bound) and first seen
//! Running. Figures: pods/s from creation to bound and to Running (overall,
//! and between 10 % and 90 % of pods: the steady middle), startup latency
//! percentiles (created → Running, both as observed by that watch), the
//! latency of the benchmark's own API calls per verb, the server's peak and
//! final resident memory and CPU seconds, and the store's size on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

pub use crate::api::{Datastore, ServerMode};
use crate::stats::{Samples, ms};

/// The label on everything the benchmark creates.
const LABEL: &str = "skiff-bench";
const LABEL_VALUE: &str = "scale";

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleBenchConfig {
    /// Simulated nodes.
    pub nodes: usize,
    /// Pods in total.
    pub pods: usize,
    /// Replicas of each Deployment (the last one takes the remainder).
    pub pods_per_deployment: usize,
    /// Deployments per namespace.
    pub deployments_per_namespace: usize,
    /// Deployments created per second (the load's creation rate).
    pub deployments_per_second: f64,
    /// Give up waiting for every pod to run (or be gone) after this long.
    pub phase_timeout: Duration,
    /// API calls the simulated nodes keep in flight.
    pub sim_in_flight: usize,
    /// Scratch data goes in a temp dir below this.
    pub work_dir: PathBuf,
    pub server: ServerMode,
    pub datastore: Datastore,
}

impl Default for ScaleBenchConfig {
    fn default() -> Self {
        ScaleBenchConfig {
            nodes: 1_000,
            pods: 30_000,
            pods_per_deployment: 100,
            deployments_per_namespace: 50,
            deployments_per_second: 10.0,
            phase_timeout: Duration::from_secs(30 * 60),
            sim_in_flight: 96,
            work_dir: std::env::temp_dir(),
            server: ServerMode::InProcess,
            datastore: Datastore::Embedded,
        }
    }
}

/// Pods per second through one stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    /// Pods that reached the stage.
    pub pods: usize,
    /// All of them, from the first pod's creation to the last one reaching it.
    pub overall: f64,
    /// Between the moments 10 % and 90 % of the pods reached it.
    pub middle: f64,
    /// From the first creation to the last pod reaching it.
    pub elapsed: Duration,
}

/// p50/p90/p99/max of one latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    fn of(mut s: Samples) -> Percentiles {
        Percentiles {
            count: s.len(),
            p50: s.percentile(50.0),
            p90: s.percentile(90.0),
            p99: s.percentile(99.0),
            max: s.percentile(100.0),
        }
    }
}

/// One process's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUse {
    pub peak_rss_kib: u64,
    pub final_rss_kib: u64,
    /// User + system CPU seconds over the whole run.
    pub cpu_seconds: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Default)]
pub struct ScaleFigures {
    pub backend: String,
    pub server_in_process: bool,
    pub nodes: usize,
    pub pods: usize,
    pub deployments: usize,
    /// Time to register the simulated nodes and their Leases.
    pub node_registration: Duration,
    /// Every pod reached Running within the timeout.
    pub completed: bool,
    /// What went wrong, when something did.
    pub failure: Option<String>,
    pub created: Throughput,
    pub bound: Throughput,
    pub running: Throughput,
    /// Created → bound, as observed.
    pub scheduling_latency: Percentiles,
    /// Created → Running, as observed.
    pub startup_latency: Percentiles,
    /// From the first scale-down to the last pod gone.
    pub deletion: Throughput,
    /// The benchmark's own API calls, by verb.
    pub api_calls: BTreeMap<String, Percentiles>,
    pub server: ProcessUse,
    /// The etcd the benchmark started, if any.
    pub etcd: Option<ProcessUse>,
    /// This process: the simulated nodes, the watch and the load.
    pub bench_cpu_seconds: f64,
    pub store_bytes_all_running: u64,
    pub store_bytes_final: u64,
    pub sim: skiff_sim::StatsSnapshot,
}

/// Runs the benchmark and prints its figures on stdout (progress on stderr).
pub async fn run(config: ScaleBenchConfig) -> Result<ScaleFigures> {
    let scratch = tempfile::Builder::new()
        .prefix("skiff-bench-scale-")
        .tempdir_in(&config.work_dir)
        .with_context(|| format!("creating a scratch dir in {}", config.work_dir.display()))?;
    let mut etcd = None;
    let (endpoint, backend) = match &config.datastore {
        Datastore::Embedded => (String::new(), "embedded".to_string()),
        Datastore::StartEtcd => {
            let e = tokio::task::spawn_blocking(skiff_testing::EtcdProcess::start)
                .await?
                .context("starting etcd (is etcd-server installed? scripts/install-deps.sh)")?;
            let url = e.client_url();
            etcd = Some(e);
            (url, "etcd".to_string())
        }
        Datastore::Endpoint(e) => (e.clone(), format!("etcd at {e}")),
    };
    let etcd_pid = etcd.as_ref().and_then(|e| find_pid_with_arg(e.dir()));
    let server = Server::start(&config.server, scratch.path(), &endpoint).await?;
    eprintln!(
        "scale: server ({}) on {backend}, pid {}, data in {}",
        if server.in_process() {
            "in process"
        } else {
            "child process"
        },
        server.pid,
        scratch.path().display()
    );
    let store_dir = match &etcd {
        Some(e) => e.dir().to_path_buf(),
        None => server.data_dir.join("db"),
    };
    let mut figures = ScaleFigures {
        backend,
        server_in_process: server.in_process(),
        nodes: config.nodes,
        pods: config.pods,
        ..Default::default()
    };
    let result = measure(&server, &config, etcd_pid, &store_dir, &mut figures).await;
    if let Err(e) = &result {
        figures.failure = Some(format!("{e:#}"));
        eprintln!("scale: the run failed: {e:#}");
        if let Some(log) = server.log_tail() {
            eprintln!("scale: the server's last log lines:\n{log}");
        }
    }
    server.stop().await;
    print_table(&figures, &config);
    Ok(figures)
}

/// The server under test.
struct Server {
    kubeconfig: PathBuf,
    data_dir: PathBuf,
    pid: u32,
    inner: ServerInner,
}

enum ServerInner {
    InProcess {
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    Child {
        child: tokio::process::Child,
        log: PathBuf,
    },
}

/// Every node gets a /24 from a /10 (clear of the service range): room
/// for 16,384 nodes.
const CLUSTER_CIDR: &str = "100.64.0.0/10";

impl Server {
    async fn start(mode: &ServerMode, dir: &Path, endpoint: &str) -> Result<Server> {
        let data_dir = dir.join("server");
        let server = match mode {
            ServerMode::InProcess => {
                let store = skiff_store::open(&skiff_store::StoreConfig {
                    endpoint: endpoint.to_string(),
                    data_dir: data_dir.join("db"),
                    ..Default::default()
                })
                .await
                .context("opening the datastore")?;
                let api = skiff_apiserver::Server::bind(
                    skiff_apiserver::ServerConfig {
                        data_dir: data_dir.clone(),
                        https_listen_port: 0,
                        ..Default::default()
                    },
                    store,
                )
                .await
                .context("starting the API server")?;
                let kubeconfig = api.kubeconfig_path().to_path_buf();
                let mut tasks = vec![tokio::spawn(api.serve(std::future::pending()))];
                let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
                let controllers = skiff_controllers::ControllerConfig {
                    cluster_cidr: skiff_controllers::nodeipam::ClusterCidr::parse(CLUSTER_CIDR, 24)
                        .context("the cluster CIDR")?,
                    ..Default::default()
                };
                tasks.push(tokio::spawn(skiff_controllers::run(
                    client.clone(),
                    controllers,
                )));
                tasks.push(tokio::spawn(skiff_scheduler::run(
                    client,
                    skiff_scheduler::SchedulerConfig {
                        leader_election: false,
                        ..Default::default()
                    },
                )));
                Server {
                    kubeconfig,
                    data_dir,
                    pid: std::process::id(),
                    inner: ServerInner::InProcess { tasks },
                }
            }
            ServerMode::Binary(binary) => {
                let crate::child::ServerChild {
                    child, log, pid, ..
                } = crate::child::spawn_server(
                    binary,
                    dir,
                    &data_dir,
                    endpoint,
                    &[
                        "--cluster-cidr",
                        CLUSTER_CIDR,
                        "--disable-agent",
                        "--disable-dns",
                    ],
                )?;
                Server {
                    kubeconfig: data_dir.join("cred/admin.kubeconfig"),
                    data_dir,
                    pid,
                    inner: ServerInner::Child { child, log },
                }
            }
        };
        server.wait_ready().await?;
        Ok(server)
    }

    fn in_process(&self) -> bool {
        matches!(self.inner, ServerInner::InProcess { .. })
    }

    /// Waits (up to 60 s) until the kubeconfig exists and `/version` answers.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            if self.kubeconfig.exists() {
                match self.client().await {
                    Ok(c) => match c.apiserver_version().await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the API server did not become ready in 60 s: {last}")
    }

    /// An error when the child process is gone.
    fn check_alive(&self) -> Result<()> {
        if let ServerInner::Child { .. } = &self.inner
            && read_rss_kib(self.pid).is_err()
        {
            bail!("the server process (pid {}) exited", self.pid);
        }
        Ok(())
    }

    fn log_tail(&self) -> Option<String> {
        let ServerInner::Child { log, .. } = &self.inner else {
            return None;
        };
        let text = std::fs::read_to_string(log).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    async fn client(&self) -> Result<kube::Client> {
        Ok(skiff_client::client_from_kubeconfig(&self.kubeconfig).await?)
    }

    async fn stop(self) {
        match self.inner {
            ServerInner::InProcess { tasks } => {
                for t in tasks {
                    t.abort();
                }
            }
            ServerInner::Child { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

/// VmRSS of `pid`, in KiB.
fn read_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// User + system CPU seconds of `pid` (`/proc/<pid>/stat` utime + stime).
fn read_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    cpu_seconds_from_stat(&stat, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Fields 14 and 15 of a `/proc/<pid>/stat` line (after the `(comm)`,
/// which may hold spaces), in seconds.
fn cpu_seconds_from_stat(stat: &str, ticks_per_second: f64) -> Result<f64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name in stat")?;
    // After ')': state is field 3, so utime (14) is index 11.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

/// The pid of a process whose command line has an argument under `dir`
/// (the etcd `skiff_testing` started with its data dir there).
fn find_pid_with_arg(dir: &Path) -> Option<u32> {
    let dir = dir.to_str()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a.starts_with(dir.as_bytes())))
                .unwrap_or(false)
        })
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// When one pod reached each stage, as the benchmark's watch saw it.
#[derive(Debug, Clone, Copy)]
struct PodTimes {
    created: Instant,
    bound: Option<Instant>,
    running: Option<Instant>,
    gone: Option<Instant>,
    /// The watch (re)list generation that last saw it.
    generation: u64,
}

#[derive(Debug, Default)]
struct Observed {
    pods: HashMap<String, PodTimes>,
    bound: usize,
    running: usize,
    gone: usize,
    watch_errors: usize,
}

impl Observed {
    fn seen(&mut self, pod: &Pod, generation: u64, now: Instant) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let t = self.pods.entry(uid).or_insert(PodTimes {
            created: now,
            bound: None,
            running: None,
            gone: None,
            generation,
        });
        t.generation = generation;
        if t.bound.is_none()
            && pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        {
            t.bound = Some(now);
            self.bound += 1;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if t.running.is_none() && phase == Some("Running") {
            t.running = Some(now);
            self.running += 1;
        }
    }

    fn deleted(&mut self, uid: &str, now: Instant) {
        if let Some(t) = self.pods.get_mut(uid)
            && t.gone.is_none()
        {
            t.gone = Some(now);
            self.gone += 1;
        }
    }

    /// After a relist: pods it did not list again are gone.
    fn relisted(&mut self, generation: u64, now: Instant) {
        let missing: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, t)| t.generation < generation && t.gone.is_none())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in missing {
            self.deleted(&uid, now);
        }
    }

    fn present(&self) -> usize {
        self.pods.len() - self.gone
    }
}

/// Watches the benchmark's pods into `observed`.
async fn watch_pods(client: kube::Client, observed: Arc<Mutex<Observed>>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut generation = 0;
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let mut o = observed.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => generation += 1,
            Ok(watcher::Event::InitDone) => o.relisted(generation, now),
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                o.seen(&p, generation, now)
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    o.deleted(uid, now);
                }
            }
            Err(e) => {
                o.watch_errors += 1;
                tracing::warn!(error = %e, "scale: watching pods");
            }
        }
    }
}

/// Pods per second through a stage, from the stage times of every pod that
/// reached it and the first creation.
fn throughput(start: Instant, mut times: Vec<Instant>) -> Throughput {
    times.sort_unstable();
    let n = times.len();
    let Some(&last) = times.last() else {
        return Throughput::default();
    };
    let elapsed = last.saturating_duration_since(start);
    let overall = n as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    let (lo, hi) = (n / 10, (n * 9 / 10).min(n - 1));
    let middle_span = times[hi].saturating_duration_since(times[lo]).as_secs_f64();
    let middle = if hi > lo && middle_span > 0.0 {
        (hi - lo) as f64 / middle_span
    } else {
        overall
    };
    Throughput {
        pods: n,
        overall,
        middle,
        elapsed,
    }
}

/// Latencies of the benchmark's own calls, by verb.
#[derive(Default)]
struct CallLog {
    calls: Mutex<BTreeMap<String, Samples>>,
}

impl CallLog {
    async fn time<T, F>(&self, verb: &str, call: F) -> Result<T, kube::Error>
    where
        F: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let start = Instant::now();
        let result = call.await;
        if result.is_ok() {
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(verb.to_string())
                .or_default()
                .push(start.elapsed());
        }
        result
    }

    fn figures(&self) -> BTreeMap<String, Percentiles> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()));
        calls
            .into_iter()
            .map(|(verb, s)| (verb, Percentiles::of(s)))
            .collect()
    }
}

fn deployment(name: &str, replicas: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL: LABEL_VALUE, "deployment": name}},
            "template": {
                "metadata": {"labels": {LABEL: LABEL_VALUE, "deployment": name}},
                "spec": {"containers": [{
                    "name": "pause",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}},
                }]},
            },
        },
    }))?)
}

/// (namespace, name, replicas) of every Deployment.
fn plan(c: &ScaleBenchConfig) -> Vec<(String, String, usize)> {
    let per = c.pods_per_deployment.max(1);
    let per_ns = c.deployments_per_namespace.max(1);
    let count = c.pods.div_ceil(per);
    (0..count)
        .map(|d| {
            let replicas = per.min(c.pods - d * per);
            (
                format!("scale-{}", d / per_ns),
                format!("density-{d}"),
                replicas,
            )
        })
        .collect()
}

/// Resident memory peaks, sampled every 200 ms.
struct Sampler {
    peaks: Arc<[AtomicU64; 2]>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(server: u32, etcd: Option<u32>) -> Sampler {
        let peaks: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let p = peaks.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(kib) = read_rss_kib(server) {
                    p[0].fetch_max(kib, Ordering::Relaxed);
                }
                if let Some(Ok(kib)) = etcd.map(read_rss_kib) {
                    p[1].fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { peaks, task }
    }

    fn peak(&self, i: usize) -> u64 {
        self.peaks[i].load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `done(observed)`, printing progress every 5 s; fails when
/// the server dies or after `timeout`.
async fn wait_until(
    what: &str,
    server: &Server,
    observed: &Mutex<Observed>,
    timeout: Duration,
    done: impl Fn(&Observed) -> bool,
) -> Result<()> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        {
            let o = observed.lock().unwrap_or_else(|e| e.into_inner());
            if done(&o) {
                return Ok(());
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!(
                    "  [{:>5.0} s] {what}: seen {} bound {} running {} gone {}; server RSS {} MiB",
                    start.elapsed().as_secs_f64(),
                    o.pods.len(),
                    o.bound,
                    o.running,
                    o.gone,
                    read_rss_kib(server.pid).unwrap_or(0) / 1024
                );
            }
        }
        server.check_alive()?;
        if start.elapsed() > timeout {
            let o = observed.lock().unwrap_or_else(|e| e.into_inner());
            bail!(
                "{what}: not within {} s (seen {}, bound {}, running {}, gone {})",
                timeout.as_secs(),
                o.pods.len(),
                o.bound,
                o.running,
                o.gone
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fills `f` as far as the run gets.
async fn measure(
    server: &Server,
    c: &ScaleBenchConfig,
    etcd_pid: Option<u32>,
    store_dir: &Path,
    f: &mut ScaleFigures,
) -> Result<()> {
    let bench_cpu_start = read_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let sampler = Sampler::start(server.pid, etcd_pid);
    let calls = Arc::new(CallLog::default());
    let finish = |f: &mut ScaleFigures, sampler: &Sampler, calls: &CallLog| {
        f.server = ProcessUse {
            peak_rss_kib: sampler.peak(0),
            final_rss_kib: read_rss_kib(server.pid).unwrap_or(0),
            cpu_seconds: read_cpu_seconds(server.pid).unwrap_or(0.0),
        };
        f.etcd = etcd_pid.map(|pid| ProcessUse {
            peak_rss_kib: sampler.peak(1),
            final_rss_kib: read_rss_kib(pid).unwrap_or(0),
            cpu_seconds: read_cpu_seconds(pid).unwrap_or(0.0),
        });
        f.bench_cpu_seconds = read_cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_cpu_start;
        f.api_calls = calls.figures();
        f.store_bytes_final = dir_bytes(store_dir);
    };

    // Simulated nodes.
    let started = Instant::now();
    let sim = skiff_sim::start(
        server.client().await?,
        skiff_sim::SimConfig {
            count: c.nodes,
            max_in_flight: c.sim_in_flight,
            ..Default::default()
        },
    )
    .await
    .context("starting the simulated nodes")?;
    f.node_registration = started.elapsed();
    eprintln!(
        "scale: {} simulated nodes registered in {:.1} s",
        c.nodes,
        f.node_registration.as_secs_f64()
    );

    // The watch, then the load.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let watch = tokio::spawn(watch_pods(server.client().await?, observed.clone()));
    let result = load(server, c, &calls, &observed, store_dir, f).await;
    f.sim = sim.stats();
    drop(sim);
    watch.abort();
    finish(f, &sampler, &calls);
    result
}

async fn load(
    server: &Server,
    c: &ScaleBenchConfig,
    calls: &Arc<CallLog>,
    observed: &Arc<Mutex<Observed>>,
    store_dir: &Path,
    f: &mut ScaleFigures,
) -> Result<()> {
    let client = server.client().await?;
    let deployments = plan(c);
    f.deployments = deployments.len();
    let mut namespaces: Vec<String> = deployments.iter().map(|(ns, _, _)| ns.clone()).collect();
    namespaces.dedup();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        calls
            .time(
                "create namespace",
                ns_api.create(&PostParams::default(), &obj),
            )
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }

    // Creation at a bounded rate; calls run concurrently (at most 32).
    eprintln!(
        "scale: creating {} Deployments ({} pods) at {}/s",
        deployments.len(),
        c.pods,
        c.deployments_per_second
    );
    let load_start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / c.deployments_per_second.max(0.001));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
    let mut ticker = tokio::time::interval(period);
    let mut creates = Vec::with_capacity(deployments.len());
    for (ns, name, replicas) in deployments.clone() {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let calls = calls.clone();
        creates.push(tokio::spawn(async move {
            let _permit = permit;
            let d = deployment(&name, replicas)?;
            calls
                .time("create deployment", api.create(&PostParams::default(), &d))
                .await
                .with_context(|| format!("creating deployment {ns}/{name}"))?;
            anyhow::Ok(())
        }));
    }
    for t in creates {
        t.await??;
    }
    eprintln!(
        "scale: Deployments created in {:.1} s",
        load_start.elapsed().as_secs_f64()
    );
    let total = c.pods;
    let wait = wait_until("all pods Running", server, observed, c.phase_timeout, |o| {
        o.running >= total
    })
    .await;
    {
        let o = observed.lock().unwrap_or_else(|e| e.into_inner());
        let first = o
            .pods
            .values()
            .map(|t| t.created)
            .min()
            .unwrap_or(load_start);
        f.created = throughput(first, o.pods.values().map(|t| t.created).collect());
        f.bound = throughput(first, o.pods.values().filter_map(|t| t.bound).collect());
        f.running = throughput(first, o.pods.values().filter_map(|t| t.running).collect());
        let mut sched = Samples::default();
        let mut startup = Samples::default();
        for t in o.pods.values() {
            if let Some(b) = t.bound {
                sched.push(b.saturating_duration_since(t.created));
            }
            if let Some(r) = t.running {
                startup.push(r.saturating_duration_since(t.created));
            }
        }
        f.scheduling_latency = Percentiles::of(sched);
        f.startup_latency = Percentiles::of(startup);
    }
    f.store_bytes_all_running = dir_bytes(store_dir);
    wait?;
    f.completed = true;
    eprintln!(
        "scale: all {} pods Running after {:.1} s",
        total,
        f.running.elapsed.as_secs_f64()
    );

    // Scale everything to 0, wait until every pod is gone, delete.
    let scale_start = Instant::now();
    let mut scales = Vec::with_capacity(deployments.len());
    for (ns, name, _) in deployments.clone() {
        let permit = in_flight.clone().acquire_owned().await?;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let calls = calls.clone();
        scales.push(tokio::spawn(async move {
            let _permit = permit;
            let patch = Patch::Merge(json!({"spec": {"replicas": 0}}));
            calls
                .time(
                    "patch deployment scale",
                    api.patch_scale(&name, &PatchParams::default(), &patch),
                )
                .await
                .with_context(|| format!("scaling {ns}/{name} to 0"))?;
            anyhow::Ok(())
        }));
    }
    for t in scales {
        t.await??;
    }
    let gone = wait_until("all pods gone", server, observed, c.phase_timeout, |o| {
        o.present() == 0
    })
    .await;
    {
        let o = observed.lock().unwrap_or_else(|e| e.into_inner());
        f.deletion = throughput(
            scale_start,
            o.pods.values().filter_map(|t| t.gone).collect(),
        );
    }
    gone?;
    eprintln!(
        "scale: all pods gone {:.1} s after the scale-down",
        scale_start.elapsed().as_secs_f64()
    );
    for (ns, name, _) in &deployments {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        calls
            .time(
                "delete deployment",
                api.delete(name, &DeleteParams::default()),
            )
            .await
            .with_context(|| format!("deleting {ns}/{name}"))?;
    }
    for ns in &namespaces {
        calls
            .time(
                "delete namespace",
                ns_api.delete(ns, &DeleteParams::default()),
            )
            .await
            .with_context(|| format!("deleting namespace {ns}"))?;
    }
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn print_table(f: &ScaleFigures, c: &ScaleBenchConfig) {
    println!(
        "Scale: {} simulated nodes, {} pods in {} Deployments of {} (created at {}/s), API server on {} ({})",
        f.nodes,
        f.pods,
        f.deployments,
        c.pods_per_deployment,
        c.deployments_per_second,
        f.backend,
        if f.server_in_process {
            "in process: memory and CPU include the benchmark"
        } else {
            "`skiff server` child process"
        },
    );
    match &f.failure {
        Some(e) => println!("\nRUN FAILED: {e}"),
        None if !f.completed => println!("\nRUN INCOMPLETE"),
        None => {}
    }
    println!();
    println!(
        "node registration (nodes + Leases): {:.1} s",
        f.node_registration.as_secs_f64()
    );
    println!();
    println!("| stage | pods | overall pods/s | middle 10–90 % pods/s | last pod after |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in [
        ("created", f.created),
        ("bound", f.bound),
        ("Running", f.running),
        ("gone (after scale to 0)", f.deletion),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.1} s |",
            t.pods,
            t.overall,
            t.middle,
            t.elapsed.as_secs_f64()
        );
    }
    println!();
    println!("| latency | count | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, p: &Percentiles| {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            p.count,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max)
        );
    };
    row("pod created → bound", &f.scheduling_latency);
    row("pod created → Running (startup)", &f.startup_latency);
    for (verb, p) in &f.api_calls {
        row(&format!("API: {verb}"), p);
    }
    println!();
    println!("| resource | peak RSS | final RSS | CPU seconds |");
    println!("|---|---:|---:|---:|");
    println!(
        "| server | {} | {} | {:.1} |",
        mib(f.server.peak_rss_kib),
        mib(f.server.final_rss_kib),
        f.server.cpu_seconds
    );
    if let Some(e) = &f.etcd {
        println!(
            "| etcd | {} | {} | {:.1} |",
            mib(e.peak_rss_kib),
            mib(e.final_rss_kib),
            e.cpu_seconds
        );
    }
    println!(
        "| benchmark (simulated nodes, watch, load) | | | {:.1} |",
        f.bench_cpu_seconds
    );
    println!();
    println!(
        "store on disk: {:.1} MiB at the end of the Running phase, {:.1} MiB at the end",
        f.store_bytes_all_running as f64 / 1048576.0,
        f.store_bytes_final as f64 / 1048576.0
    );
    println!(
        "simulated nodes: {} pods reported Running, {} deletions finished, {} lease renewals, {} failed API calls",
        f.sim.pods_started, f.sim.pods_deleted, f.sim.leases_renewed, f.sim.api_errors
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let stat = "42 (skiff server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 2 3";
        let cases = [("ticks of 100", 100.0, 3.0), ("ticks of 1000", 1000.0, 0.3)];
        for (case, ticks, want) in cases {
            let got = cpu_seconds_from_stat(stat, ticks).unwrap_or(-1.0);
            assert!((got - want).abs() < 1e-9, "{case}: {got}");
        }
    }

    #[test]
    fn deployments_cover_the_pods_with_the_remainder_last() {
        let c = ScaleBenchConfig {
            pods: 250,
            pods_per_deployment: 100,
            deployments_per_namespace: 2,
            ..Default::default()
        };
        let p = plan(&c);
        let replicas: Vec<usize> = p.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(replicas, [100, 100, 50]);
        let namespaces: Vec<&str> = p.iter().map(|(ns, _, _)| ns.as_str()).collect();
        assert_eq!(namespaces, ["scale-0", "scale-0", "scale-1"]);
    }

    #[test]
    fn throughput_reports_overall_and_middle_rates() {
        let start = Instant::now();
        // 10 pods, one per second from t=1 s.
        let times = (1..=10).map(|s| start + Duration::from_secs(s)).collect();
        let t = throughput(start, times);
        assert_eq!(t.pods, 10);
        assert!((t.overall - 1.0).abs() < 1e-9, "{}", t.overall);
        assert!((t.middle - 1.0).abs() < 1e-9, "{}", t.middle);
        assert_eq!(throughput(start, Vec::new()).pods, 0);
    }
}
