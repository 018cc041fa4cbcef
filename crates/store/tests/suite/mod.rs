//! The store behaviour suite: written once, run against every backend
//! (`tests/embedded.rs`, `tests/etcd.rs`), like Kubernetes'
//! `storage/testing/store_tests.go`.
//!
//! A backend's test file defines an `async fn` that returns a [`Subject`]
//! and expands [`store_behaviour_suite!`] with it.
#![allow(dead_code)]

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;
use skiff_store::Store;

/// A store under test plus whatever keeps it alive (a temp dir, an etcd
/// process), and an optional disruption that tests call midway (the
/// 3-member etcd run kills a member there).
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn Any + Send>,
    pub disruption: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
}

impl Subject {
    pub fn new(store: Arc<dyn Store>, guard: impl Any + Send) -> Subject {
        Subject {
            store,
            guard: Box::new(guard),
            disruption: None,
        }
    }

    /// Runs the disruption, once; a no-op for subjects without one.
    pub async fn disrupt(&mut self) {
        if let Some(d) = self.disruption.take() {
            d().await;
        }
    }
}

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{
    Error, Event, EventKind, KeyValue, ListOptions, PutOptions, Update, WatchStream,
    guaranteed_update,
};

/// Expands to one `#[tokio::test]` per behaviour, each with a fresh subject
/// from `$make` (a path to an `async fn() -> Subject`).
macro_rules! store_behaviour_suite {
    ($make:path) => {
        store_behaviour_suite!(@tests $make;
            create_then_get_returns_revisions,
            create_of_existing_key_fails_with_already_exists,
            update_with_stale_revision_conflicts_and_missing_key_is_not_found,
            delete_honours_its_precondition,
            every_successful_write_bumps_the_revision_by_one,
            list_returns_only_the_prefix_in_key_order,
            paginated_list_reads_one_consistent_snapshot,
            list_at_a_future_revision_is_refused,
            count_counts_keys_under_a_prefix,
            watch_delivers_changes_in_order_with_previous_values,
            watch_only_sees_its_prefix,
            watch_resumes_from_any_revision_still_in_history,
            compacted_history_answers_compacted,
            keys_with_a_ttl_expire,
            concurrent_writers_on_one_key_exactly_one_wins_each_round,
            guaranteed_update_applies_every_concurrent_increment,
            watch_under_concurrent_writes_sees_every_event_once,
            list_larger_than_one_message_returns_every_key,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let subject = $make().await;
                crate::suite::$name(subject).await;
            }
        )*
    };
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

const NO_TTL: PutOptions = PutOptions { ttl: None };

/// The next event of a watch, or a panic after 10 s.
async fn next_event(w: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

pub async fn create_then_get_returns_revisions(s: Subject) {
    let st = &s.store;
    let kv = st.create("/t/a", b("one"), NO_TTL).await.unwrap();
    assert_eq!(kv.key, "/t/a");
    assert_eq!(kv.value, b("one"));
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(st.current_revision().await.unwrap(), kv.mod_revision);
    let got = st.get("/t/a").await.unwrap().expect("key present");
    assert_eq!(got, kv);
    let updated = st
        .update("/t/a", b("two"), kv.mod_revision, NO_TTL)
        .await
        .unwrap();
    assert_eq!(updated.create_revision, kv.create_revision);
    assert!(updated.mod_revision > kv.mod_revision);
    assert_eq!(st.get("/t/a").await.unwrap(), Some(updated));
    assert_eq!(st.get("/t/missing").await.unwrap(), None);
}

pub async fn create_of_existing_key_fails_with_already_exists(s: Subject) {
    let st = &s.store;
    st.create("/t/a", b("one"), NO_TTL).await.unwrap();
    let err = st.create("/t/a", b("two"), NO_TTL).await.unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { ref key } if key == "/t/a"),
        "{err}"
    );
    assert_eq!(st.get("/t/a").await.unwrap().unwrap().value, b("one"));
}

pub async fn update_with_stale_revision_conflicts_and_missing_key_is_not_found(s: Subject) {
    let st = &s.store;
    let first = st.create("/t/a", b("one"), NO_TTL).await.unwrap();
    let second = st
        .update("/t/a", b("two"), first.mod_revision, NO_TTL)
        .await
        .unwrap();
    let err = st
        .update("/t/a", b("three"), first.mod_revision, NO_TTL)
        .await
        .unwrap_err();
    match err {
        Error::Conflict {
            key,
            expected,
            actual,
        } => {
            assert_eq!(key, "/t/a");
            assert_eq!(expected, first.mod_revision);
            assert_eq!(actual, second.mod_revision);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(st.get("/t/a").await.unwrap().unwrap().value, b("two"));
    let err = st.update("/t/none", b("x"), 1, NO_TTL).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

pub async fn delete_honours_its_precondition(s: Subject) {
    let st = &s.store;
    let kv = st.create("/t/a", b("one"), NO_TTL).await.unwrap();
    let err = st
        .delete("/t/a", Some(kv.mod_revision + 100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(st.get("/t/a").await.unwrap().is_some());
    let deleted = st.delete("/t/a", Some(kv.mod_revision)).await.unwrap();
    assert_eq!(deleted.prev, kv);
    assert!(deleted.revision > kv.mod_revision);
    assert_eq!(st.current_revision().await.unwrap(), deleted.revision);
    assert_eq!(st.get("/t/a").await.unwrap(), None);
    let err = st.delete("/t/a", None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // Unconditional delete.
    st.create("/t/b", b("x"), NO_TTL).await.unwrap();
    st.delete("/t/b", None).await.unwrap();
    assert_eq!(st.get("/t/b").await.unwrap(), None);
}

pub async fn every_successful_write_bumps_the_revision_by_one(s: Subject) {
    let st = &s.store;
    let r0 = st.current_revision().await.unwrap();
    let a = st.create("/t/a", b("1"), NO_TTL).await.unwrap();
    assert_eq!(a.mod_revision, r0 + 1);
    // Failed writes do not count.
    st.create("/t/a", b("1"), NO_TTL).await.unwrap_err();
    st.update("/t/a", b("2"), a.mod_revision + 7, NO_TTL)
        .await
        .unwrap_err();
    let a2 = st
        .update("/t/a", b("2"), a.mod_revision, NO_TTL)
        .await
        .unwrap();
    assert_eq!(a2.mod_revision, r0 + 2);
    let c = st.create("/t/c", b("3"), NO_TTL).await.unwrap();
    assert_eq!(c.mod_revision, r0 + 3);
    let d = st.delete("/t/a", None).await.unwrap();
    assert_eq!(d.revision, r0 + 4);
    assert_eq!(st.current_revision().await.unwrap(), r0 + 4);
}

pub async fn list_returns_only_the_prefix_in_key_order(s: Subject) {
    let st = &s.store;
    for k in ["/p/c", "/p/a", "/p/b", "/pa/x", "/o/z", "/p/a/nested"] {
        st.create(k, b(k), NO_TTL).await.unwrap();
    }
    let list = st.list("/p/", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&list.items), ["/p/a", "/p/a/nested", "/p/b", "/p/c"]);
    assert!(!list.more);
    assert_eq!(list.revision, st.current_revision().await.unwrap());
    for kv in &list.items {
        assert_eq!(kv.value, b(&kv.key));
    }
    let empty = st.list("/nothing/", ListOptions::default()).await.unwrap();
    assert!(empty.items.is_empty());
}

pub async fn paginated_list_reads_one_consistent_snapshot(mut s: Subject) {
    let st = s.store.clone();
    let mut want = BTreeMap::new();
    for i in 0..10 {
        let key = format!("/p/{i:02}");
        st.create(&key, b(&format!("v{i}")), NO_TTL).await.unwrap();
        want.insert(key, format!("v{i}"));
    }
    let first = st
        .list(
            "/p/",
            ListOptions {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&first.items), ["/p/00", "/p/01", "/p/02"]);
    assert!(first.more);
    let at = first.revision;

    // Writes after the first page must not show in the later pages.
    s.disrupt().await;
    let cur = st.get("/p/05").await.unwrap().unwrap();
    st.update("/p/05", b("changed"), cur.mod_revision, NO_TTL)
        .await
        .unwrap();
    st.delete("/p/07", None).await.unwrap();
    st.create("/p/045", b("new"), NO_TTL).await.unwrap();
    st.create("/p/99", b("new"), NO_TTL).await.unwrap();

    let mut seen: Vec<KeyValue> = first.items.clone();
    let mut last = first.items.last().unwrap().key.clone();
    loop {
        let page = st
            .list(
                "/p/",
                ListOptions {
                    limit: 3,
                    continue_after: Some(last.clone()),
                    revision: Some(at),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.revision, at);
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().cloned());
        if !page.more {
            break;
        }
        last = page.items.last().unwrap().key.clone();
    }
    let got: BTreeMap<String, String> = seen
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(seen.len(), 10, "no key twice");
    for kv in &seen {
        assert!(
            kv.mod_revision <= at,
            "{} modified after the snapshot",
            kv.key
        );
    }

    // The current state has the changes.
    let now = st.list("/p/", ListOptions::default()).await.unwrap();
    assert_eq!(now.items.len(), 11);
    assert!(now.revision > at);
}

pub async fn list_at_a_future_revision_is_refused(s: Subject) {
    let st = &s.store;
    st.create("/t/a", b("1"), NO_TTL).await.unwrap();
    let cur = st.current_revision().await.unwrap();
    let err = st
        .list(
            "/t/",
            ListOptions {
                revision: Some(cur + 1000),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FutureRevision { .. }), "{err}");
}

pub async fn count_counts_keys_under_a_prefix(s: Subject) {
    let st = &s.store;
    for i in 0..25 {
        st.create(&format!("/c/{i}"), b("x"), NO_TTL).await.unwrap();
    }
    st.create("/d/0", b("x"), NO_TTL).await.unwrap();
    assert_eq!(st.count("/c/").await.unwrap(), 25);
    assert_eq!(st.count("/d/").await.unwrap(), 1);
    assert_eq!(st.count("/e/").await.unwrap(), 0);
}

pub async fn watch_delivers_changes_in_order_with_previous_values(s: Subject) {
    let st = &s.store;
    let start = st.current_revision().await.unwrap();
    let mut w = st.watch("/w/", start).await.unwrap();
    let a = st.create("/w/a", b("1"), NO_TTL).await.unwrap();
    let a2 = st
        .update("/w/a", b("2"), a.mod_revision, NO_TTL)
        .await
        .unwrap();
    let d = st.delete("/w/a", None).await.unwrap();

    let e1 = next_event(&mut w).await;
    assert_eq!(e1.kind, EventKind::Create);
    assert_eq!(e1.revision, a.mod_revision);
    assert_eq!(e1.current.as_ref(), Some(&a));
    assert_eq!(e1.prev, None);

    let e2 = next_event(&mut w).await;
    assert_eq!(e2.kind, EventKind::Update);
    assert_eq!(e2.current.as_ref(), Some(&a2));
    assert_eq!(e2.prev.as_ref(), Some(&a));

    let e3 = next_event(&mut w).await;
    assert_eq!(e3.kind, EventKind::Delete);
    assert_eq!(e3.revision, d.revision);
    assert_eq!(e3.key, "/w/a");
    assert_eq!(e3.current, None);
    assert_eq!(e3.prev.as_ref(), Some(&a2));
}

pub async fn watch_only_sees_its_prefix(s: Subject) {
    let st = &s.store;
    let start = st.current_revision().await.unwrap();
    let mut w = st.watch("/w/", start).await.unwrap();
    st.create("/other/a", b("1"), NO_TTL).await.unwrap();
    st.create("/wx", b("1"), NO_TTL).await.unwrap();
    let mine = st.create("/w/b", b("1"), NO_TTL).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(e.key, "/w/b");
    assert_eq!(e.revision, mine.mod_revision);
}

pub async fn watch_resumes_from_any_revision_still_in_history(s: Subject) {
    let st = &s.store;
    // Every revision written under /r/, in order.
    let mut all = Vec::new();
    for i in 0..6 {
        all.push(
            st.create(&format!("/r/{i}"), b("x"), NO_TTL)
                .await
                .unwrap()
                .mod_revision,
        );
    }
    let starts: Vec<_> = all.clone();
    for (i, after) in starts.iter().enumerate() {
        let mut w = st.watch("/r/", *after).await.unwrap();
        // The history after `after`, replayed in order...
        for want in all.iter().filter(|r| *r > after) {
            assert_eq!(
                next_event(&mut w).await.revision,
                *want,
                "resume after {after}"
            );
        }
        // ...then live events.
        let kv = st
            .create(&format!("/r/live{i}"), b("x"), NO_TTL)
            .await
            .unwrap();
        all.push(kv.mod_revision);
        assert_eq!(next_event(&mut w).await.revision, kv.mod_revision);
    }
}

pub async fn compacted_history_answers_compacted(s: Subject) {
    let st = &s.store;
    let first = st.create("/k/a", b("1"), NO_TTL).await.unwrap();
    let mut last = first.clone();
    for i in 0..5 {
        last = st
            .update("/k/a", b(&i.to_string()), last.mod_revision, NO_TTL)
            .await
            .unwrap();
    }
    st.compact(last.mod_revision).await.unwrap();
    match st.watch("/k/", first.mod_revision).await {
        Err(Error::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(Error::Compacted { .. }))) => {}
            other => panic!("expected a Compacted error from the watch, got {other:?}"),
        },
    }
    let err = st
        .list(
            "/k/",
            ListOptions {
                revision: Some(first.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }), "{err}");
    // History from the compaction point on is still there.
    let mut w = st.watch("/k/", last.mod_revision).await.unwrap();
    let next = st
        .update("/k/a", b("after"), last.mod_revision, NO_TTL)
        .await
        .unwrap();
    assert_eq!(next_event(&mut w).await.revision, next.mod_revision);
    // Compacting to the same point again is not a failure that loses data.
    match st.compact(last.mod_revision).await {
        Ok(()) | Err(Error::Compacted { .. }) => {}
        Err(e) => panic!("re-compaction failed: {e}"),
    }
    assert_eq!(st.get("/k/a").await.unwrap().unwrap().value, b("after"));
}

pub async fn keys_with_a_ttl_expire(s: Subject) {
    let st = &s.store;
    let start = st.current_revision().await.unwrap();
    let mut w = st.watch("/ttl/", start).await.unwrap();
    st.create(
        "/ttl/short",
        b("x"),
        PutOptions::with_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    st.create("/ttl/keep", b("x"), NO_TTL).await.unwrap();
    assert!(st.get("/ttl/short").await.unwrap().is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while st.get("/ttl/short").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 1 s TTL key still exists after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(st.get("/ttl/keep").await.unwrap().is_some());
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = next_event(&mut w).await;
        kinds.push((e.key, e.kind));
    }
    assert!(
        kinds.contains(&("/ttl/short".to_string(), EventKind::Delete)),
        "{kinds:?}"
    );
}

pub async fn concurrent_writers_on_one_key_exactly_one_wins_each_round(mut s: Subject) {
    let st = s.store.clone();
    let mut kv = st.create("/race/k", b("0"), NO_TTL).await.unwrap();
    const WRITERS: usize = 16;
    for round in 0..20 {
        if round == 10 {
            s.disrupt().await;
        }
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let st = st.clone();
            let expected = kv.mod_revision;
            tasks.push(tokio::spawn(async move {
                st.update("/race/k", b(&format!("{round}-{w}")), expected, NO_TTL)
                    .await
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(kv) => winners.push(kv),
                Err(Error::Conflict { .. }) => {}
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins");
        kv = winners.pop().unwrap();
        assert_eq!(st.get("/race/k").await.unwrap().as_ref(), Some(&kv));
    }
}

pub async fn guaranteed_update_applies_every_concurrent_increment(s: Subject) {
    let st = s.store.clone();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                guaranteed_update::<_, Error, _>(st.as_ref(), "/counter", NO_TTL, |cur| {
                    let n: u64 = match cur {
                        None => 0,
                        Some(kv) => std::str::from_utf8(&kv.value).unwrap().parse().unwrap(),
                    };
                    Ok(Update::Put(b(&(n + 1).to_string())))
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = st.get("/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, b("80"));
    // Unchanged writes nothing.
    let before = st.current_revision().await.unwrap();
    let same = guaranteed_update::<_, Error, _>(st.as_ref(), "/counter", NO_TTL, |_| {
        Ok(Update::Unchanged)
    })
    .await
    .unwrap();
    assert_eq!(same, Some(kv));
    assert_eq!(st.current_revision().await.unwrap(), before);
}

pub async fn watch_under_concurrent_writes_sees_every_event_once(mut s: Subject) {
    let st = s.store.clone();
    let start = st.current_revision().await.unwrap();
    let mut w = st.watch("/load/", start).await.unwrap();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 100;
    let mut tasks = Vec::new();
    for wr in 0..WRITERS {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..PER_WRITER {
                let key = format!("/load/{wr}/{i}");
                revs.push(st.create(&key, b("x"), NO_TTL).await.unwrap().mod_revision);
            }
            revs
        }));
    }
    let mut written = HashSet::new();
    let mut disrupted = false;
    let mut seen = Vec::new();
    while seen.len() < WRITERS * PER_WRITER {
        let e = next_event(&mut w).await;
        seen.push(e);
        if !disrupted && seen.len() == WRITERS * PER_WRITER / 2 {
            s.disrupt().await;
            disrupted = true;
        }
    }
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    let revisions: Vec<_> = seen.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|p| p[0] < p[1]),
        "events in strictly increasing revision order"
    );
    let seen_set: HashSet<_> = revisions.iter().copied().collect();
    assert_eq!(
        seen_set, written,
        "every acknowledged write seen exactly once"
    );
    // Nothing more arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), w.next()).await;
    assert!(extra.is_err(), "unexpected extra event {extra:?}");
}

pub async fn list_larger_than_one_message_returns_every_key(s: Subject) {
    let st = s.store.clone();
    // 2,400 values of 4 KiB: about 10 MB, over gRPC's 4 MiB message limit.
    let value = Bytes::from(vec![b'v'; 4096]);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let st = st.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                st.create(&format!("/big/{w:02}/{i:03}"), value.clone(), NO_TTL)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = st.list("/big/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 2400);
    assert!(!all.more);
    assert!(
        all.items.windows(2).all(|p| p[0].key < p[1].key),
        "key order"
    );
    let page = st
        .list(
            "/big/",
            ListOptions {
                limit: 1500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1500);
    assert!(page.more);
    assert_eq!(page.items[..], all.items[..1500]);
}
