//! `skiff bench api`: the Kubernetes API over HTTPS on loopback, driven by
//! `kube::Client`s with the admin kubeconfig.
//!
//! Figures: creates/s and gets/s with N concurrent clients (each its own
//! `kube::Client`, so its own connections), the time to list 10,000 objects
//! (a consistent list, which reads the store, and a `resourceVersion=0`
//! list, which the watch cache answers), watch fan-out (W watchers on one
//! namespace's ConfigMaps: from sending one write until every watcher has
//! its event), p50/p99/max of each operation, and the server's resident
//! memory at rest, with the watchers connected, at its peak and after.
//!
//! The server is the real `skiff server` binary run as a child
//! ([`ServerMode::Binary`], what the CLI does: the memory figures are the
//! server's alone), or in this process ([`ServerMode::InProcess`], for the
//! smoke test: memory then includes the clients). Its store is the embedded
//! one in a scratch dir, an etcd this benchmark starts, or a given endpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;

use crate::stats::{Samples, ms};

/// Where the API server runs.
#[derive(Debug, Clone)]
pub enum ServerMode {
    /// In this process (memory figures include the benchmark's clients).
    InProcess,
    /// `<binary> server …` as a child process: the `skiff` binary.
    Binary(PathBuf),
}

/// Which store the server runs on.
#[derive(Debug, Clone)]
pub enum Datastore {
    /// The embedded store in the scratch dir.
    Embedded,
    /// An etcd started by the benchmark (`skiff_testing::EtcdProcess`, data
    /// on disk, real fsync).
    StartEtcd,
    /// An etcd already running at this endpoint.
    Endpoint(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ApiBenchConfig {
    /// Concurrent clients for creates and gets.
    pub clients: usize,
    /// ConfigMaps created (spread over the clients).
    pub creates: usize,
    /// Gets of those ConfigMaps (spread over the clients).
    pub gets: usize,
    /// Objects in the listed namespace.
    pub list_objects: usize,
    /// Timed lists of each kind.
    pub lists: usize,
    /// Watchers of the fan-out figure.
    pub watchers: usize,
    /// Writes timed for the fan-out figure.
    pub watch_writes: usize,
    /// Scratch data goes in a temp dir below this.
    pub work_dir: PathBuf,
    pub server: ServerMode,
    pub datastore: Datastore,
}

impl Default for ApiBenchConfig {
    fn default() -> Self {
        ApiBenchConfig {
            clients: 32,
            creates: 5_000,
            gets: 20_000,
            list_objects: 10_000,
            lists: 5,
            watchers: 1_000,
            watch_writes: 50,
            work_dir: std::env::temp_dir(),
            server: ServerMode::InProcess,
            datastore: Datastore::Embedded,
        }
    }
}

/// One operation's figures.
#[derive(Debug, Clone)]
pub struct OpFigures {
    pub name: String,
    pub count: usize,
    /// Operations per second over the phase (all clients together).
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Resident memory of the server, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub at_rest_kib: u64,
    pub with_watchers_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone)]
pub struct ApiFigures {
    pub backend: String,
    pub server_in_process: bool,
    pub ops: Vec<OpFigures>,
    /// Objects the list figures returned.
    pub listed: usize,
    /// From sending one write until all watchers received it.
    pub fanout_all: OpFigures,
    /// From sending one write until one watcher received it, over all
    /// watchers and writes.
    pub fanout_each: OpFigures,
    pub memory: Memory,
}

/// Runs the benchmark and prints a table on stdout (progress on stderr).
pub async fn run(config: ApiBenchConfig) -> Result<ApiFigures> {
    let scratch = tempfile::Builder::new()
        .prefix("skiff-bench-api-")
        .tempdir_in(&config.work_dir)
        .with_context(|| format!("creating a scratch dir in {}", config.work_dir.display()))?;
    let mut _etcd = None;
    let (endpoint, backend) = match &config.datastore {
        Datastore::Embedded => (String::new(), "embedded".to_string()),
        Datastore::StartEtcd => {
            let etcd = tokio::task::spawn_blocking(skiff_testing::EtcdProcess::start)
                .await?
                .context("starting etcd (is etcd-server installed? scripts/install-deps.sh)")?;
            let url = etcd.client_url();
            _etcd = Some(etcd);
            (url, "etcd".to_string())
        }
        Datastore::Endpoint(e) => (e.clone(), format!("etcd at {e}")),
    };
    let server = RunningServer::start(&config.server, scratch.path(), &endpoint).await?;
    eprintln!(
        "API server ({}) on {backend}, pid {}, data in {}",
        if server.in_process() {
            "in process"
        } else {
            "child process"
        },
        server.pid,
        scratch.path().display()
    );
    let figures = measure(&server, &config, backend).await;
    server.stop().await;
    let figures = figures?;
    print_table(&figures, &config);
    Ok(figures)
}

/// The server under test, however it runs.
struct RunningServer {
    kubeconfig: PathBuf,
    pid: u32,
    inner: ServerInner,
}

enum ServerInner {
    InProcess {
        shutdown: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    },
    Child {
        child: tokio::process::Child,
        log: PathBuf,
    },
}

impl RunningServer {
    async fn start(mode: &ServerMode, dir: &Path, endpoint: &str) -> Result<RunningServer> {
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
                let server = skiff_apiserver::Server::bind(
                    skiff_apiserver::ServerConfig {
                        data_dir: data_dir.clone(),
                        https_listen_port: 0,
                        ..Default::default()
                    },
                    store,
                )
                .await
                .context("starting the API server")?;
                let kubeconfig = server.kubeconfig_path().to_path_buf();
                let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(server.serve(async move {
                    let _ = rx.await;
                }));
                RunningServer {
                    kubeconfig,
                    pid: std::process::id(),
                    inner: ServerInner::InProcess { shutdown, task },
                }
            }
            ServerMode::Binary(binary) => {
                // The API server alone: no controllers, scheduler, agent or DNS.
                let crate::child::ServerChild {
                    child, log, pid, ..
                } = crate::child::spawn_server(
                    binary,
                    dir,
                    &data_dir,
                    endpoint,
                    &[
                        "--disable-controller-manager",
                        "--disable-scheduler",
                        "--disable-agent",
                        "--disable-dns",
                    ],
                )?;
                RunningServer {
                    kubeconfig: data_dir.join("cred/admin.kubeconfig"),
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
            if let ServerInner::Child { log, .. } = &self.inner
                && rss_kib(self.pid).is_err()
            {
                bail!(
                    "the server exited:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the API server did not become ready in 60 s: {last}")
    }

    /// A new client (its own connection pool) with the admin kubeconfig.
    async fn client(&self) -> Result<kube::Client> {
        Ok(skiff_client::client_from_kubeconfig(&self.kubeconfig).await?)
    }

    async fn stop(self) {
        match self.inner {
            ServerInner::InProcess { shutdown, task } => {
                let _ = shutdown.send(());
                let _ = task.await;
            }
            ServerInner::Child { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn ops(name: &str, mut samples: Samples, elapsed: Duration) -> OpFigures {
    let count = samples.len();
    OpFigures {
        name: name.to_string(),
        count,
        per_sec: count as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50: samples.percentile(50.0),
        p99: samples.percentile(99.0),
        max: samples.percentile(100.0),
    }
}

fn config_map(name: String, data: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([("bench".to_string(), "api".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("value".to_string(), data.to_string())])),
        ..Default::default()
    }
}

/// A 256-byte value, so objects are of a realistic small size.
fn payload() -> String {
    "x".repeat(256)
}

async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Runs `total` operations over `clients` workers, each with its own
/// client; `op(client, worker, i)` is one timed operation.
async fn concurrent<F, Fut>(
    server: &RunningServer,
    clients: usize,
    total: usize,
    op: F,
) -> Result<(Samples, Duration)>
where
    F: Fn(kube::Client, usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let clients = clients.max(1);
    let mut workers = Vec::with_capacity(clients);
    for _ in 0..clients {
        workers.push(server.client().await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (w, client) in workers.into_iter().enumerate() {
        let op = op.clone();
        let n = total / clients + usize::from(w < total % clients);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            for i in 0..n {
                let t = Instant::now();
                op(client.clone(), w, i).await?;
                samples.push(t.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.append(t.await??);
    }
    Ok((all, start.elapsed()))
}

async fn measure(
    server: &RunningServer,
    c: &ApiBenchConfig,
    backend: String,
) -> Result<ApiFigures> {
    let mut memory = Memory {
        at_rest_kib: rss_kib(server.pid)?,
        ..Default::default()
    };
    // Peak RSS while the load runs, sampled every 50 ms.
    let peak = Arc::new(AtomicU64::new(memory.at_rest_kib));
    let sampler = {
        let peak = peak.clone();
        let pid = server.pid;
        tokio::spawn(async move {
            loop {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let admin = server.client().await?;
    for ns in ["bench", "bench-list", "bench-fanout"] {
        create_namespace(&admin, ns).await?;
    }
    let value = Arc::new(payload());
    let mut figures = Vec::new();

    // Creates.
    let v = value.clone();
    let (samples, elapsed) = concurrent(server, c.clients, c.creates, move |client, w, i| {
        let v = v.clone();
        async move {
            Api::<ConfigMap>::namespaced(client, "bench")
                .create(
                    &PostParams::default(),
                    &config_map(format!("cm-{w}-{i}"), &v),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let created = samples.len();
    figures.push(ops("create ConfigMap", samples, elapsed));
    eprintln!("  creates: {:.0}/s", figures[0].per_sec);

    // Gets of random created objects.
    let clients = c.clients.max(1);
    let (samples, elapsed) = concurrent(server, c.clients, c.gets, move |client, w, i| {
        async move {
            // xorshift over (worker, i): spread, repeatable.
            let mut x = ((w as u64) << 32 | i as u64) ^ 0x9E37_79B9_7F4A_7C15;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x as usize) % created.max(1);
            // `concurrent` gave worker `w` the indices 0..total/clients, one
            // more to the first total%clients workers: object n is
            // (n % clients, n / clients).
            let (worker, idx) = (n % clients, n / clients);
            let name = format!("cm-{worker}-{idx}");
            Api::<ConfigMap>::namespaced(client, "bench")
                .get(&name)
                .await
                .with_context(|| format!("getting {name}"))?;
            Ok(())
        }
    })
    .await?;
    figures.push(ops("get ConfigMap", samples, elapsed));
    eprintln!("  gets: {:.0}/s", figures[1].per_sec);

    // Lists: fill a namespace (untimed), then time whole lists.
    let v = value.clone();
    concurrent(server, c.clients, c.list_objects, move |client, w, i| {
        let v = v.clone();
        async move {
            Api::<ConfigMap>::namespaced(client, "bench-list")
                .create(
                    &PostParams::default(),
                    &config_map(format!("cm-{w}-{i}"), &v),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let mut listed = 0;
    for (name, params) in [
        ("list (consistent, store)", ListParams::default()),
        (
            "list (rv=0, watch cache)",
            ListParams::default().match_any(),
        ),
    ] {
        let lists = kube::core::Request::new("/api/v1/namespaces/bench-list/configmaps");
        let mut samples = Samples::default();
        let start = Instant::now();
        let mut body = String::new();
        for _ in 0..c.lists.max(1) {
            let t = Instant::now();
            let request = lists.list(&params).context("building the list request")?;
            body = admin.request_text(request).await?;
            samples.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        let list: serde_json::Value = serde_json::from_str(&body)?;
        listed = list["items"].as_array().map(Vec::len).unwrap_or(0);
        if listed != c.list_objects {
            bail!("{name} returned {listed} objects, want {}", c.list_objects);
        }
        figures.push(ops(&format!("{name} of {listed}"), samples, elapsed));
        eprintln!(
            "  {name} of {listed}: {}",
            ms(figures.last().map(|f| f.p50).unwrap_or_default())
        );
    }

    // Watch fan-out.
    let (fanout_all, fanout_each, with_watchers) = fanout(server, c).await?;
    memory.with_watchers_kib = with_watchers;
    sampler.abort();
    memory.peak_kib = peak.load(Ordering::Relaxed);
    memory.after_kib = rss_kib(server.pid)?;
    Ok(ApiFigures {
        backend,
        server_in_process: server.in_process(),
        ops: figures,
        listed,
        fanout_all,
        fanout_each,
        memory,
    })
}

/// The write being timed, shared with the watchers.
struct Round {
    seq: u64,
    sent: Instant,
    received: Vec<Duration>,
}

struct Fanout {
    round: Mutex<Round>,
    everyone: tokio::sync::Notify,
    watchers: usize,
}

impl Fanout {
    fn received(&self, seq: u64) {
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if round.seq == seq {
            let d = round.sent.elapsed();
            round.received.push(d);
            if round.received.len() == self.watchers {
                self.everyone.notify_one();
            }
        }
    }

    /// Starts round `seq`; returns when every watcher saw it.
    async fn write_and_wait<F: std::future::Future<Output = Result<()>>>(
        &self,
        seq: u64,
        write: F,
    ) -> Result<Vec<Duration>> {
        {
            let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
            *round = Round {
                seq,
                sent: Instant::now(),
                received: Vec::with_capacity(self.watchers),
            };
        }
        write.await?;
        if tokio::time::timeout(Duration::from_secs(60), self.everyone.notified())
            .await
            .is_err()
        {
            let round = self.round.lock().unwrap_or_else(|e| e.into_inner());
            bail!(
                "write {seq}: only {} of {} watchers received it within 60 s",
                round.received.len(),
                self.watchers
            );
        }
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut round.received))
    }
}

/// W watchers on `bench-fanout`'s ConfigMaps; one object is patched
/// `watch_writes` times. Returns (time until all received, time until each
/// received, RSS with the watchers connected).
async fn fanout(server: &RunningServer, c: &ApiBenchConfig) -> Result<(OpFigures, OpFigures, u64)> {
    let watchers = c.watchers.max(1);
    let admin = server.client().await?;
    let api = Api::<ConfigMap>::namespaced(admin.clone(), "bench-fanout");
    let obj = api
        .create(&PostParams::default(), &config_map("target".into(), "0"))
        .await?;
    let from = obj
        .metadata
        .resource_version
        .clone()
        .context("no resourceVersion")?;
    let state = Arc::new(Fanout {
        round: Mutex::new(Round {
            seq: u64::MAX,
            sent: Instant::now(),
            received: Vec::new(),
        }),
        everyone: tokio::sync::Notify::new(),
        watchers,
    });
    // Watch streams hold an HTTP/1.1 connection each; a few clients share
    // them out.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await?);
    }
    let mut tasks: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let api = Api::<ConfigMap>::namespaced(clients[w % clients.len()].clone(), "bench-fanout");
        let state = state.clone();
        let from = from.clone();
        tasks.push(tokio::spawn(async move {
            let params = WatchParams::default().timeout(290);
            let mut stream = api.watch(&params, &from).await?.boxed();
            while let Some(event) = stream.try_next().await? {
                match event {
                    WatchEvent::Modified(cm) => {
                        if let Some(seq) = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("value"))
                            .and_then(|v| v.parse().ok())
                        {
                            state.received(seq);
                        }
                    }
                    WatchEvent::Error(e) => bail!("watcher {w}: {e:?}"),
                    _ => {}
                }
            }
            bail!("watcher {w}: the watch ended")
        }));
    }
    let patch = |seq: u64| {
        let api = api.clone();
        async move {
            api.patch(
                "target",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"value": seq.to_string()}})),
            )
            .await?;
            anyhow::Ok(())
        }
    };
    // Warm-up (untimed): every watcher connected and delivering.
    let result = async {
        state.write_and_wait(1, patch(1)).await?;
        let with_watchers = rss_kib(server.pid)?;
        eprintln!(
            "  {watchers} watchers connected; server RSS {} MiB",
            with_watchers / 1024
        );
        let mut all = Samples::default();
        let mut each = Samples::default();
        let start = Instant::now();
        for seq in 2..(2 + c.watch_writes.max(1) as u64) {
            let received = state.write_and_wait(seq, patch(seq)).await?;
            all.push(received.iter().copied().max().unwrap_or_default());
            each.extend(received);
        }
        let elapsed = start.elapsed();
        anyhow::Ok((all, each, elapsed, with_watchers))
    }
    .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("  {e}");
        }
    }
    let (all, each, elapsed, with_watchers) = result?;
    let all = ops(&format!("write → all {watchers} watchers"), all, elapsed);
    let each = ops("write → one watcher", each, elapsed);
    eprintln!(
        "  fan-out to {watchers}: p50 {} p99 {} max {}",
        ms(all.p50),
        ms(all.p99),
        ms(all.max)
    );
    Ok((all, each, with_watchers))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_table(f: &ApiFigures, c: &ApiBenchConfig) {
    println!(
        "API server on {} ({}), {} concurrent clients over HTTPS on loopback",
        f.backend,
        if f.server_in_process {
            "in process: memory includes the clients"
        } else {
            "`skiff server` child process"
        },
        c.clients
    );
    println!();
    println!("| operation | count | ops/s | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in f.ops.iter().chain([&f.fanout_all, &f.fanout_each]) {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            o.name,
            o.count,
            o.per_sec,
            ms(o.p50),
            ms(o.p99),
            ms(o.max)
        );
    }
    println!();
    println!("| server resident memory (VmRSS) | |");
    println!("|---|---:|");
    println!("| at rest (after start) | {} |", mib(f.memory.at_rest_kib));
    println!(
        "| {} watchers connected | {} |",
        c.watchers,
        mib(f.memory.with_watchers_kib)
    );
    println!("| peak under load | {} |", mib(f.memory.peak_kib));
    println!("| after the load | {} |", mib(f.memory.after_kib));
}
