//! `skiff bench store`: the same workload against the embedded store and a
//! real etcd on this machine, side by side.
//!
//! Figures: writes/s with 1 and 64 concurrent writers (1 KiB values), point
//! reads/s, the time to list 10,000 keys, and watch delivery latency (from
//! the writer's acknowledgement to the watcher's event).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{ListOptions, PutOptions, Store, StoreConfig};

use crate::stats::{Samples, ms};

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreBenchConfig {
    /// Sequential writes for the 1-writer figure.
    pub serial_writes: usize,
    /// Writes for the 64-writer figure (spread over the writers).
    pub concurrent_writes: usize,
    pub writers: usize,
    /// Point reads, spread over `readers` tasks.
    pub reads: usize,
    pub readers: usize,
    /// Keys in the list figure.
    pub list_keys: usize,
    /// Writes timed for the watch latency figure.
    pub watch_writes: usize,
    /// Where the embedded store and the etcd data go (a real disk, so that
    /// fsync costs what it costs). A temp dir under it is removed after.
    pub work_dir: PathBuf,
    /// Use this etcd instead of starting one.
    pub etcd_endpoint: Option<String>,
    pub embedded: bool,
    pub etcd: bool,
}

impl Default for StoreBenchConfig {
    fn default() -> Self {
        StoreBenchConfig {
            serial_writes: 2000,
            concurrent_writes: 20_000,
            writers: 64,
            reads: 100_000,
            readers: 16,
            list_keys: 10_000,
            watch_writes: 2000,
            work_dir: std::env::temp_dir(),
            etcd_endpoint: None,
            embedded: true,
            etcd: true,
        }
    }
}

/// The figures of one backend.
#[derive(Debug, Clone)]
pub struct StoreFigures {
    pub backend: String,
    pub serial_writes_per_sec: f64,
    pub concurrent_writes_per_sec: f64,
    pub reads_per_sec: f64,
    pub list_ms: f64,
    pub list_count: usize,
    pub watch_p50: Duration,
    pub watch_p99: Duration,
    /// From sending the write to the watcher's event (includes the commit).
    pub write_to_event_p50: Duration,
    pub write_to_event_p99: Duration,
}

/// Runs the benchmark and prints a table on stdout.
pub async fn run(config: StoreBenchConfig) -> Result<Vec<StoreFigures>> {
    let scratch = tempfile::Builder::new()
        .prefix("skiff-bench-store-")
        .tempdir_in(&config.work_dir)
        .with_context(|| format!("creating a scratch dir in {}", config.work_dir.display()))?;
    let mut figures = Vec::new();
    if config.embedded {
        let store = skiff_store::open(&StoreConfig {
            data_dir: scratch.path().join("embedded"),
            ..Default::default()
        })
        .await
        .context("opening the embedded store")?;
        eprintln!(
            "benchmarking the embedded store in {}",
            scratch.path().display()
        );
        figures.push(measure(store, &config).await?);
    }
    if config.etcd {
        let mut _etcd_process = None;
        let endpoint = match &config.etcd_endpoint {
            Some(e) => e.clone(),
            None => {
                // Real fsync, data on the same disk as the embedded store.
                let p = skiff_testing::EtcdProcess::start()
                    .context("starting etcd (is etcd-server installed? scripts/install-deps.sh)")?;
                let url = p.client_url();
                _etcd_process = Some(p);
                url
            }
        };
        eprintln!("benchmarking etcd at {endpoint}");
        let store = skiff_store::open(&StoreConfig {
            endpoint,
            ..Default::default()
        })
        .await
        .context("connecting to etcd")?;
        figures.push(measure(store, &config).await?);
    }
    print_table(&figures, &config);
    Ok(figures)
}

fn value() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

async fn measure(store: Arc<dyn Store>, c: &StoreBenchConfig) -> Result<StoreFigures> {
    let name = store.backend_name().to_string();

    // 1 writer.
    let start = Instant::now();
    for i in 0..c.serial_writes {
        store
            .create(
                &format!("/bench/serial/{i:08}"),
                value(),
                PutOptions::default(),
            )
            .await?;
    }
    let serial = c.serial_writes as f64 / start.elapsed().as_secs_f64();
    eprintln!("  {name}: 1 writer: {serial:.0} writes/s");

    // N writers.
    let per_writer = c.concurrent_writes / c.writers.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c.writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                store
                    .create(
                        &format!("/bench/conc/{w:03}/{i:08}"),
                        value(),
                        PutOptions::default(),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let concurrent = (per_writer * c.writers) as f64 / start.elapsed().as_secs_f64();
    eprintln!("  {name}: {} writers: {concurrent:.0} writes/s", c.writers);

    // Point reads of keys written above.
    let per_reader = c.reads / c.readers.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..c.readers {
        let store = store.clone();
        let n = c.serial_writes.max(1);
        tasks.push(tokio::spawn(async move {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ r as u64;
            for _ in 0..per_reader {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("/bench/serial/{:08}", x as usize % n);
                store.get(&key).await?.context("a written key is missing")?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let reads = (per_reader * c.readers) as f64 / start.elapsed().as_secs_f64();
    eprintln!("  {name}: {reads:.0} point reads/s");

    // List of N keys: fill with 64 writers, then time full lists.
    let per_writer = c.list_keys.div_ceil(64);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        let total = c.list_keys;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let n = w * per_writer + i;
                if n >= total {
                    break;
                }
                store
                    .create(
                        &format!("/bench/list/{n:08}"),
                        value(),
                        PutOptions::default(),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut list_samples = Samples::default();
    let mut list_count = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let list = store.list("/bench/list/", ListOptions::default()).await?;
        list_samples.push(start.elapsed());
        list_count = list.items.len();
    }
    let list_ms = list_samples.percentile(50.0).as_secs_f64() * 1000.0;
    eprintln!("  {name}: list of {list_count} keys: {list_ms:.1} ms (median of 5)");

    // Watch delivery: ack time per revision vs event time per revision.
    let from = store.current_revision().await?;
    let mut watch = store.watch("/bench/watch/", from).await?;
    let n = c.watch_writes;
    let receiver = tokio::spawn(async move {
        let mut seen: HashMap<i64, Instant> = HashMap::with_capacity(n);
        while seen.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                Ok(Some(Ok(e))) => {
                    seen.insert(e.revision, Instant::now());
                }
                Ok(Some(Err(e))) => return Err(anyhow::anyhow!("watch failed: {e}")),
                Ok(None) => return Err(anyhow::anyhow!("watch ended early")),
                Err(_) => return Err(anyhow::anyhow!("watch stalled")),
            }
        }
        Ok(seen)
    });
    let mut acks = Vec::with_capacity(n);
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let kv = store
            .create(
                &format!("/bench/watch/{i:08}"),
                value(),
                PutOptions::default(),
            )
            .await?;
        acks.push((kv.mod_revision, Instant::now()));
        sent.push((kv.mod_revision, started));
        // Pace the writes a little so each is timed on its own.
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let seen = receiver.await??;
    let mut watch_samples = Samples::default();
    for (rev, acked) in acks {
        let got = seen
            .get(&rev)
            .context("an acknowledged write was not seen")?;
        // An event that arrived before the writer saw its ack counts as 0.
        watch_samples.push(got.saturating_duration_since(acked));
    }
    let watch_p50 = watch_samples.percentile(50.0);
    let watch_p99 = watch_samples.percentile(99.0);
    let mut end_to_end = Samples::default();
    for (rev, started) in sent {
        let got = seen
            .get(&rev)
            .context("an acknowledged write was not seen")?;
        end_to_end.push(got.saturating_duration_since(started));
    }
    let write_to_event_p50 = end_to_end.percentile(50.0);
    let write_to_event_p99 = end_to_end.percentile(99.0);
    eprintln!(
        "  {name}: watch delivery p50 {} p99 {}",
        ms(watch_p50),
        ms(watch_p99)
    );

    Ok(StoreFigures {
        backend: name,
        serial_writes_per_sec: serial,
        concurrent_writes_per_sec: concurrent,
        reads_per_sec: reads,
        list_ms,
        list_count,
        watch_p50,
        watch_p99,
        write_to_event_p50,
        write_to_event_p99,
    })
}

fn print_table(figures: &[StoreFigures], c: &StoreBenchConfig) {
    let mut rows: Vec<(String, Vec<String>)> = vec![
        ("writes/s, 1 writer (1 KiB)".into(), vec![]),
        (format!("writes/s, {} writers (1 KiB)", c.writers), vec![]),
        (format!("point reads/s ({} readers)", c.readers), vec![]),
        (format!("list {} keys (median)", c.list_keys), vec![]),
        ("watch delivery p50 (ack → event)".into(), vec![]),
        ("watch delivery p99 (ack → event)".into(), vec![]),
        ("write sent → event p50".into(), vec![]),
        ("write sent → event p99".into(), vec![]),
    ];
    for f in figures {
        rows[0].1.push(format!("{:.0}", f.serial_writes_per_sec));
        rows[1]
            .1
            .push(format!("{:.0}", f.concurrent_writes_per_sec));
        rows[2].1.push(format!("{:.0}", f.reads_per_sec));
        rows[3].1.push(format!("{:.1} ms", f.list_ms));
        rows[4].1.push(ms(f.watch_p50));
        rows[5].1.push(ms(f.watch_p99));
        rows[6].1.push(ms(f.write_to_event_p50));
        rows[7].1.push(ms(f.write_to_event_p99));
    }
    print!("| figure |");
    for f in figures {
        print!(" {} |", f.backend);
    }
    println!();
    print!("|---|");
    for _ in figures {
        print!("---:|");
    }
    println!();
    for (name, cells) in rows {
        print!("| {name} |");
        for cell in cells {
            print!(" {cell} |");
        }
        println!();
    }
}
