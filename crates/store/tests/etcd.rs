//! The behaviour suite against real etcd: one member, and three members whose
//! leader is killed midway through the tests that have a disruption point.
//! Then what only the etcd backend has: TLS, shared leases, writes whose
//! answer was lost, watch cancellation.

#[macro_use]
mod suite;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::etcd::{EtcdConfig, EtcdStore, TlsFiles};
use skiff_store::{Error, EventKind, PutOptions, Store};
use skiff_testing::{EtcdCluster, EtcdOptions, EtcdProcess, ServerTls, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Tests keep etcd's data on tmpfs; benchmarks use the real disk.
fn fast() -> EtcdOptions {
    EtcdOptions {
        data_in_memory: true,
        ..EtcdOptions::default()
    }
}

async fn single() -> suite::Subject {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .expect("start task")
        .expect("start etcd");
    let store = EtcdStore::connect(&[etcd.client_url()], None)
        .await
        .expect("connect to etcd");
    suite::Subject::new(Arc::new(store), etcd)
}

async fn three_members_with_leader_killed() -> suite::Subject {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start_with(3, fast()))
        .await
        .expect("start task")
        .expect("start etcd cluster");
    let cluster = Arc::new(cluster);
    let store = EtcdStore::connect(&cluster.client_urls(), None)
        .await
        .expect("connect to etcd");
    let mut subject = suite::Subject::new(Arc::new(store), cluster.clone());
    subject.disruption = Some(Box::new(move || {
        Box::pin(async move {
            let killed = tokio::task::spawn_blocking(move || cluster.kill_leader())
                .await
                .expect("kill task")
                .expect("kill the etcd leader");
            eprintln!("disruption: killed etcd leader m{killed}");
        })
    }));
    subject
}

mod single_etcd {
    store_behaviour_suite!(super::single);
}

mod three_member_etcd {
    store_behaviour_suite!(super::three_members_with_leader_killed);
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

const NO_TTL: PutOptions = PutOptions { ttl: None };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_is_served_and_without_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let options = EtcdOptions {
        tls: Some(ServerTls::from_pki(&pki, true)),
        ..fast()
    };
    let etcd = tokio::task::spawn_blocking(move || EtcdProcess::start_with(options))
        .await
        .unwrap()
        .unwrap();
    let url = etcd.client_url();
    assert!(url.starts_with("https://"), "{url}");

    let with_cert = TlsFiles {
        ca: Some(pki.ca.clone()),
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
    };
    let store = EtcdStore::connect(std::slice::from_ref(&url), Some(with_cert))
        .await
        .unwrap();
    let kv = store.create("/tls/a", b("1"), NO_TTL).await.unwrap();
    assert_eq!(store.get("/tls/a").await.unwrap(), Some(kv));

    let ca_only = TlsFiles {
        ca: Some(pki.ca.clone()),
        cert: Default::default(),
        key: Default::default(),
    };
    let quick = EtcdConfig {
        retry_budget: Duration::from_secs(1),
        ..EtcdConfig::default()
    };
    let refused = EtcdStore::connect_with(&[url], Some(ca_only), quick).await;
    assert!(refused.is_err(), "a client without a certificate got in");
}

/// The lease of `key`, asked from etcd directly.
async fn lease_of(url: &str, key: &str) -> i64 {
    let mut client = etcd_client::Client::connect([url], None).await.unwrap();
    let resp = client.get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| kv.lease()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_similar_long_ttls_share_a_lease_and_short_ones_do_not() {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .unwrap()
        .unwrap();
    let url = etcd.client_url();
    let store = EtcdStore::connect(std::slice::from_ref(&url), None)
        .await
        .unwrap();
    let hour = PutOptions::with_ttl(Duration::from_secs(3600));
    let short = PutOptions::with_ttl(Duration::from_secs(5));
    store.create("/l/a", b("1"), hour).await.unwrap();
    store.create("/l/b", b("1"), hour).await.unwrap();
    store.create("/l/c", b("1"), short).await.unwrap();
    store.create("/l/d", b("1"), short).await.unwrap();
    store.create("/l/e", b("1"), NO_TTL).await.unwrap();
    let (a, bb, c, d, e) = (
        lease_of(&url, "/l/a").await,
        lease_of(&url, "/l/b").await,
        lease_of(&url, "/l/c").await,
        lease_of(&url, "/l/d").await,
        lease_of(&url, "/l/e").await,
    );
    assert!(a != 0 && a == bb, "hour-long ttls share lease: {a} {bb}");
    assert!(
        c != 0 && d != 0 && c != d && c != a,
        "short ttls get their own: {c} {d}"
    );
    assert_eq!(e, 0, "no ttl, no lease");

    // The shared lease lives the TTL plus the one-minute window.
    let mut client = etcd_client::Client::connect([url.as_str()], None)
        .await
        .unwrap();
    let ttl = client.lease_time_to_live(a, None).await.unwrap();
    assert!(
        (3600..=3660).contains(&ttl.ttl()),
        "lease ttl {}",
        ttl.ttl()
    );
}

/// A TCP proxy in front of etcd that, once armed, closes the connection at
/// the next bytes etcd sends back: a request that reached etcd, whose answer
/// the client never sees.
struct AnswerDroppingProxy {
    url: String,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl AnswerDroppingProxy {
    async fn start(upstream: &str) -> AnswerDroppingProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::SeqCst) {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        AnswerDroppingProxy { url, armed, cuts }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_answer_was_lost_are_answered_from_history() {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .unwrap()
        .unwrap();
    let proxy = AnswerDroppingProxy::start(&etcd.client_url()).await;
    let store = EtcdStore::connect(std::slice::from_ref(&proxy.url), None)
        .await
        .unwrap();
    let direct = EtcdStore::connect(&[etcd.client_url()], None)
        .await
        .unwrap();
    let start = direct.current_revision().await.unwrap();

    proxy.arm();
    let created = store.create("/lost/a", b("1"), NO_TTL).await.unwrap();
    assert_eq!(
        direct.get("/lost/a").await.unwrap().as_ref(),
        Some(&created)
    );

    proxy.arm();
    let updated = store
        .update("/lost/a", b("2"), created.mod_revision, NO_TTL)
        .await
        .unwrap();
    assert_eq!(
        direct.get("/lost/a").await.unwrap().as_ref(),
        Some(&updated)
    );

    proxy.arm();
    let deleted = store
        .delete("/lost/a", Some(updated.mod_revision))
        .await
        .unwrap();
    assert_eq!(deleted.prev, updated);
    assert_eq!(direct.get("/lost/a").await.unwrap(), None);

    proxy.arm();
    let again = store.create("/lost/a", b("3"), NO_TTL).await.unwrap();
    proxy.arm();
    let deleted_again = store.delete("/lost/a", None).await.unwrap();
    assert_eq!(deleted_again.prev, again);

    assert_eq!(proxy.cuts(), 5, "every write lost its first answer");
    // Each write happened exactly once.
    let mut w = direct.watch("/lost/", start).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let e = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push((e.kind, e.revision));
    }
    assert_eq!(
        kinds,
        vec![
            (EventKind::Create, created.mod_revision),
            (EventKind::Update, updated.mod_revision),
            (EventKind::Delete, deleted.revision),
            (EventKind::Create, again.mod_revision),
            (EventKind::Delete, deleted_again.revision),
        ]
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), w.next()).await;
    assert!(extra.is_err(), "a write happened twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_does_not_turn_a_conflict_into_success() {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .unwrap()
        .unwrap();
    let proxy = AnswerDroppingProxy::start(&etcd.client_url()).await;
    let store = EtcdStore::connect(std::slice::from_ref(&proxy.url), None)
        .await
        .unwrap();
    let kv = store.create("/c/a", b("1"), NO_TTL).await.unwrap();
    let newer = store
        .update("/c/a", b("2"), kv.mod_revision, NO_TTL)
        .await
        .unwrap();

    proxy.arm();
    match store.update("/c/a", b("3"), kv.mod_revision, NO_TTL).await {
        Err(Error::Conflict { actual, .. }) => assert_eq!(actual, newer.mod_revision),
        other => panic!("expected a conflict, got {other:?}"),
    }
    proxy.arm();
    match store.create("/c/a", b("1"), NO_TTL).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(store.get("/c/a").await.unwrap(), Some(newer));
}

/// etcd's count of open watchers, from its metrics.
fn watchers(etcd: &EtcdProcess) -> u64 {
    let metrics = etcd.metrics().unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watch_cancels_it_in_etcd() {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .unwrap()
        .unwrap();
    let store = EtcdStore::connect(&[etcd.client_url()], None)
        .await
        .unwrap();
    let before = watchers(&etcd);
    let rev = store.current_revision().await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(store.watch("/w/", rev).await.unwrap());
    }
    assert_eq!(watchers(&etcd), before + 5);
    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watchers(&etcd) > before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watches still open in etcd"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_member_when_its_member_dies() {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start_with(3, fast()))
        .await
        .unwrap()
        .unwrap();
    let urls = cluster.client_urls();
    let store = EtcdStore::connect(&urls, None).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let mut w = store.watch("/m/", start).await.unwrap();
    let mut written = Vec::new();
    // Every member dies once (one at a time, so a quorum stays), so the
    // watch's member certainly does.
    for i in 0..24 {
        if i % 6 == 0 && i > 0 {
            let member = i / 6 - 1;
            tokio::task::block_in_place(|| {
                if member > 0 {
                    cluster.restart_member(member - 1).unwrap();
                }
                cluster.kill_member(member).unwrap();
            });
        }
        written.push(
            store
                .create(&format!("/m/{i}"), b("x"), NO_TTL)
                .await
                .unwrap()
                .mod_revision,
        );
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let e = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("an event within 20 s")
            .expect("the watch goes on")
            .expect("no watch error");
        seen.push(e.revision);
    }
    assert_eq!(seen, written);
}

/// A catch-up watch gets etcd's events in batches far above gRPC's 4 MiB
/// default message size (seen when 30,000 pods were deleted at once: every
/// watch ended with "decoded message length too large" and restarted into
/// the same batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_batches_larger_than_four_mib_are_delivered() {
    let etcd = tokio::task::spawn_blocking(|| EtcdProcess::start_with(fast()))
        .await
        .unwrap()
        .unwrap();
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.client_url()), None)
        .await
        .unwrap();
    let value = Bytes::from(vec![b'x'; 512 * 1024]);
    let first = store.create("/big/0", value.clone(), NO_TTL).await.unwrap();
    for i in 1..24 {
        store
            .create(&format!("/big/{i}"), value.clone(), NO_TTL)
            .await
            .unwrap();
    }
    let mut w = store.watch("/big/", first.mod_revision - 1).await.unwrap();
    for i in 0..24 {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("no error");
        assert_eq!(ev.key, format!("/big/{i}"));
    }
}
