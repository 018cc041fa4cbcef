//! Every write the embedded store acknowledged is there after the writing
//! process was killed with SIGKILL, over several kill/reopen cycles.
//!
//! The test re-runs its own binary as the writer (`crash_writer_child`,
//! which does nothing unless `SKIFF_CRASH_DIR` is set), reads the writer's
//! acknowledgements from its stdout, kills it mid-stream, reopens the store
//! and checks every acknowledged key.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_store::embedded::{EmbeddedConfig, EmbeddedStore};
use skiff_store::{PutOptions, Store};

const DIR_ENV: &str = "SKIFF_CRASH_DIR";
const CYCLE_ENV: &str = "SKIFF_CRASH_CYCLE";

#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return; // Only meaningful when started by the crash test.
    };
    let cycle = std::env::var(CYCLE_ENV).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(
                &std::path::Path::new(&dir).join("state.redb"),
                EmbeddedConfig::default(),
            )
            .unwrap(),
        );
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..32 {
            let store = store.clone();
            let out = out.clone();
            let cycle = cycle.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{cycle}/{w}/{i}");
                    let value = Bytes::from(vec![b'v'; 1024]);
                    let kv = store
                        .create(&key, value, PutOptions::default())
                        .await
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ACK {key} {}", kv.mod_revision).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(String, i64)> = Vec::new();
    for cycle in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let mut parts = rest.split(' ');
                    let key = parts.next().unwrap().to_string();
                    let rev: i64 = parts.next().unwrap().parse().unwrap();
                    lines.push((key, rev));
                }
            }
            lines
        });
        // Let it write for a while, then kill it mid-stream.
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let cycle_acks = reader.join().unwrap();
        assert!(
            cycle_acks.len() > 100,
            "cycle {cycle}: the writer acknowledged only {} writes in {:?}",
            cycle_acks.len(),
            started.elapsed()
        );
        acked.extend(cycle_acks);

        let store = EmbeddedStore::open(&dir.path().join("state.redb"), EmbeddedConfig::default())
            .expect("reopen after SIGKILL");
        let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap();
        assert!(store.current_revision().await.unwrap() >= max_acked);
        for (key, rev) in &acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged key {key} lost"));
            assert_eq!(kv.mod_revision, *rev, "{key}");
            assert_eq!(kv.value.len(), 1024);
        }
        drop(store);
    }
}
