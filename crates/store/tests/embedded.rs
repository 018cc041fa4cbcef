//! The behaviour suite against the embedded (redb) backend, plus the crash
//! test that only an embedded store can have.

#[macro_use]
mod suite;

use std::sync::Arc;

use skiff_store::embedded::{EmbeddedConfig, EmbeddedStore};

async fn embedded() -> suite::Subject {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("state.redb"), EmbeddedConfig::default())
        .expect("open embedded store");
    suite::Subject::new(Arc::new(store), dir)
}

store_behaviour_suite!(embedded);

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{PutOptions, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_that_overflows_the_broadcast_replays_from_disk_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        broadcast_capacity: 16,
        ..Default::default()
    };
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state.redb"), config).unwrap());
    let mut w = store.watch("/lag/", 0).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..125 {
                let kv = store
                    .create(
                        &format!("/lag/{t}/{i}"),
                        Bytes::from_static(b"x"),
                        PutOptions::default(),
                    )
                    .await
                    .unwrap();
                revs.push(kv.mod_revision);
            }
            revs
        }));
    }
    // Nobody reads while 2000 events go by a 16-slot broadcast.
    let mut written = HashSet::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("no error");
        seen.push(e.revision);
    }
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "in order, no repeats");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_revision_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (first, last) = {
        let store = EmbeddedStore::open(&path, EmbeddedConfig::default()).unwrap();
        let first = store
            .create("/h/a", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .unwrap();
        let last = store
            .update(
                "/h/a",
                Bytes::from_static(b"2"),
                first.mod_revision,
                PutOptions::default(),
            )
            .await
            .unwrap();
        (first, last)
    };
    let store = EmbeddedStore::open(&path, EmbeddedConfig::default()).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), last.mod_revision);
    let mut w = store.watch("/h/", first.mod_revision - 1).await.unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    let e2 = w.next().await.unwrap().unwrap();
    assert_eq!(
        (e1.revision, e2.revision),
        (first.mod_revision, last.mod_revision)
    );
    assert_eq!(e2.prev.unwrap().value, Bytes::from_static(b"1"));
    let next = store
        .create("/h/b", Bytes::from_static(b"3"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(next.mod_revision, last.mod_revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compactor_discards_old_history_but_keeps_the_newest_revisions() {
    use skiff_store::{CompactionConfig, Compactor, Error};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&dir.path().join("state.redb"), EmbeddedConfig::default()).unwrap(),
    );
    for i in 0..50 {
        store
            .create(
                &format!("/c/{i}"),
                Bytes::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let _compactor = Compactor::spawn(
        store.clone(),
        CompactionConfig {
            interval: Duration::from_millis(100),
            keep_revisions: 10,
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.watch("/c/", 0).await {
            Err(Error::Compacted { compacted, .. }) => {
                assert!(
                    compacted <= 40,
                    "kept the newest 10 revisions, compacted to {compacted}"
                );
                break;
            }
            Err(e) => panic!("{e}"),
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no compaction within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The newest revisions can still be watched.
    let mut w = store.watch("/c/", 45).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 46);
}
