//! The embedded backend: a `redb` database file under the data directory.
//!
//! - **Durability**: every acknowledged write was committed with
//!   `Durability::Immediate` (fsync) before the caller heard back.
//! - **Group commit**: one committer thread owns all writes. It drains every
//!   request queued while the previous commit was syncing, applies them in
//!   order inside one transaction (each successful write gets its own
//!   revision), and pays one fsync for all of them.
//! - **History**: the `log` table holds one entry per revision with the new
//!   and previous value, until compaction. Watches replay it from disk to
//!   catch up and then follow the committer's in-memory broadcast.
//! - **TTL**: a sweeper thread deletes keys whose time ran out, through the
//!   committer, conditionally on the revision that set the TTL.

mod codec;
mod committer;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::Store;
use crate::error::{Error, Result};
use crate::types::{
    Deleted, Event, KeyValue, ListOptions, ListResult, PutOptions, Revision, WatchStream,
    prefix_end,
};
use codec::Record;
use committer::{Committer, Op, OpResult, Request};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const TTL: TableDefinition<(u64, &str), u64> = TableDefinition::new("ttl");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// How often expired keys are looked for.
    pub ttl_sweep_interval: Duration,
    /// The most write requests one transaction takes.
    pub max_batch: usize,
    /// How many events the in-memory broadcast holds for slow watchers
    /// before they fall back to reading the log from disk.
    pub broadcast_capacity: usize,
    /// redb's page cache. redb defaults to 1 GiB, which the process keeps
    /// once the database grows past it; the API server's watch cache holds
    /// the current objects anyway, and misses are served from the kernel's
    /// page cache.
    pub cache_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            ttl_sweep_interval: Duration::from_millis(500),
            max_batch: 2048,
            broadcast_capacity: 16 * 1024,
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}

/// State shared by the store handle, the committer and the watchers.
pub(crate) struct Shared {
    pub db: Database,
    pub path: PathBuf,
    /// The revision of the last committed write.
    pub revision: AtomicI64,
    /// History before this revision is gone.
    pub compacted: AtomicI64,
}

impl Shared {
    pub fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::Embedded {
            path: self.path.display().to_string(),
            source: e.into(),
        }
    }
}

/// The embedded store. Cheap to share through `Arc<dyn Store>`; dropping the
/// last handle finishes the commit in progress and closes the database.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::UnboundedSender<Request>>,
    events: broadcast::Sender<Arc<Event>>,
    committer: Option<JoinHandle<()>>,
    sweeper: Option<(std_mpsc::Sender<()>, JoinHandle<()>)>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating its directory.
    pub fn open(path: &Path, config: EmbeddedConfig) -> Result<EmbeddedStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(path)
            .map_err(|e| Error::Embedded {
                path: path.display().to_string(),
                source: e.into(),
            })?;
        let shared = Arc::new(Shared {
            db,
            path: path.to_path_buf(),
            revision: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
        });
        let (revision, compacted) = init_tables(&shared)?;
        shared.revision.store(revision, Ordering::SeqCst);
        shared.compacted.store(compacted, Ordering::SeqCst);

        let (events, _) = broadcast::channel(config.broadcast_capacity.max(16));
        let (requests, rx) = mpsc::unbounded_channel();
        let committer = Committer::new(shared.clone(), events.clone(), config.max_batch.max(1));
        let committer = std::thread::Builder::new()
            .name("skiff-store-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|source| Error::Io {
                path: "committer thread".into(),
                source,
            })?;

        let (stop, stopped) = std_mpsc::channel();
        let sweeper_shared = shared.clone();
        let sweeper_requests = requests.clone();
        let interval = config.ttl_sweep_interval;
        let sweeper = std::thread::Builder::new()
            .name("skiff-store-ttl".into())
            .spawn(move || sweep_ttl(sweeper_shared, sweeper_requests, stopped, interval))
            .map_err(|source| Error::Io {
                path: "ttl sweeper thread".into(),
                source,
            })?;

        Ok(EmbeddedStore {
            shared,
            requests: Some(requests),
            events,
            committer: Some(committer),
            sweeper: Some((stop, sweeper)),
        })
    }

    async fn submit(&self, op: Op) -> Result<OpResult> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or(Error::Closed)?
            .send(Request { op, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| self.shared.err(e))?;
        f(&txn)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.sweeper.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        // Closing the request channel ends the committer after the batch in
        // progress; its broadcast sender goes with it, which ends watches.
        self.requests.take();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

fn init_tables(shared: &Shared) -> Result<(Revision, Revision)> {
    let txn = shared.db.begin_write().map_err(|e| shared.err(e))?;
    let (revision, compacted) = {
        txn.open_table(KV).map_err(|e| shared.err(e))?;
        txn.open_table(LOG).map_err(|e| shared.err(e))?;
        txn.open_table(TTL).map_err(|e| shared.err(e))?;
        let meta = txn.open_table(META).map_err(|e| shared.err(e))?;
        let get = |k: &str| -> Result<u64> {
            Ok(meta
                .get(k)
                .map_err(|e| shared.err(e))?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        (
            get(META_REVISION)? as Revision,
            get(META_COMPACTED)? as Revision,
        )
    };
    txn.commit().map_err(|e| shared.err(e))?;
    Ok((revision, compacted))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sweep_ttl(
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
    stop: std_mpsc::Receiver<()>,
    interval: Duration,
) {
    loop {
        match stop.recv_timeout(interval) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let expired = match expired_keys(&shared, now_ms()) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "ttl sweep: reading expired keys failed");
                continue;
            }
        };
        for (key, mod_revision) in expired {
            let (reply, answer) = oneshot::channel();
            let op = Op::Expire { key, mod_revision };
            if requests.send(Request { op, reply }).is_err() {
                return;
            }
            // Wait, so one sweep never floods the committer.
            match answer.blocking_recv() {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "ttl sweep: expiring a key failed"),
            }
        }
    }
}

fn expired_keys(shared: &Shared, now: u64) -> Result<Vec<(String, Revision)>> {
    let txn = shared.db.begin_read().map_err(|e| shared.err(e))?;
    let ttl = txn.open_table(TTL).map_err(|e| shared.err(e))?;
    let mut out = Vec::new();
    for entry in ttl
        .range::<(u64, &str)>(..(now + 1, ""))
        .map_err(|e| shared.err(e))?
    {
        let (k, v) = entry.map_err(|e| shared.err(e))?;
        let (_, key) = k.value();
        out.push((key.to_string(), v.value() as Revision));
        if out.len() >= 10_000 {
            break;
        }
    }
    Ok(out)
}

/// The key range `[start, end)` of a list: after `continue_after` when
/// given, else from `prefix`, up to the end of the prefix.
fn list_range(prefix: &str, continue_after: Option<&str>) -> (String, Option<String>) {
    let start = match continue_after {
        // The smallest key greater than `after`.
        Some(after) if after >= prefix => format!("{after}\0"),
        _ => prefix.to_string(),
    };
    let end = prefix_end(prefix.as_bytes()).and_then(|e| String::from_utf8(e).ok());
    (start, end)
}

fn in_range(key: &str, start: &str, end: Option<&str>) -> bool {
    key >= start && end.is_none_or(|end| key < end)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.read(|txn| {
            let kv = txn.open_table(KV).map_err(|e| self.shared.err(e))?;
            match kv.get(key).map_err(|e| self.shared.err(e))? {
                None => Ok(None),
                Some(v) => Ok(Some(Record::decode(v.value())?.into_key_value(key))),
            }
        })
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let shared = self.shared.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&shared, &prefix, &opts))
            .await
            .map_err(|_| Error::Closed)?
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        self.read(|txn| {
            let kv = txn.open_table(KV).map_err(|e| self.shared.err(e))?;
            let (start, end) = list_range(prefix, None);
            let mut n = 0i64;
            let iter = match &end {
                Some(end) => kv.range::<&str>(start.as_str()..end.as_str()),
                None => kv.range::<&str>(start.as_str()..),
            }
            .map_err(|e| self.shared.err(e))?;
            for entry in iter {
                entry.map_err(|e| self.shared.err(e))?;
                n += 1;
            }
            Ok(n)
        })
    }

    async fn create(&self, key: &str, value: Bytes, opts: PutOptions) -> Result<KeyValue> {
        let op = Op::Create {
            key: key.to_string(),
            value,
            ttl: opts.ttl,
        };
        match self.submit(op).await? {
            OpResult::Put(kv) => Ok(kv),
            other => Err(Error::Corrupt(format!(
                "committer answered {other:?} to a create"
            ))),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
        opts: PutOptions,
    ) -> Result<KeyValue> {
        let op = Op::Update {
            key: key.to_string(),
            value,
            expected: expected_mod_revision,
            ttl: opts.ttl,
        };
        match self.submit(op).await? {
            OpResult::Put(kv) => Ok(kv),
            other => Err(Error::Corrupt(format!(
                "committer answered {other:?} to an update"
            ))),
        }
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        let op = Op::Delete {
            key: key.to_string(),
            expected: expected_mod_revision,
        };
        match self.submit(op).await? {
            OpResult::Deleted(d) => Ok(d),
            other => Err(Error::Corrupt(format!(
                "committer answered {other:?} to a delete"
            ))),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if after_revision + 1 < compacted {
            return Err(Error::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        // Subscribe before reading the log, so nothing committed in between
        // is missed (the watcher skips what it already read from disk).
        let live = self.events.subscribe();
        Ok(watch::spawn(
            self.shared.clone(),
            prefix.to_string(),
            after_revision,
            live,
        ))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.submit(Op::Compact { revision }).await? {
            OpResult::Compacted => Ok(()),
            other => Err(Error::Corrupt(format!(
                "committer answered {other:?} to a compaction"
            ))),
        }
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

fn list_blocking(shared: &Shared, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
    let txn = shared.db.begin_read().map_err(|e| shared.err(e))?;
    let meta = txn.open_table(META).map_err(|e| shared.err(e))?;
    let read_meta = |k: &str| -> Result<Revision> {
        Ok(meta
            .get(k)
            .map_err(|e| shared.err(e))?
            .map(|v| v.value() as Revision)
            .unwrap_or(0))
    };
    let current = read_meta(META_REVISION)?;
    let compacted = read_meta(META_COMPACTED)?;
    let at = match opts.revision {
        None | Some(0) => current,
        Some(r) if r > current => {
            return Err(Error::FutureRevision {
                requested: r,
                current,
            });
        }
        Some(r) if r < compacted => {
            return Err(Error::Compacted {
                requested: r,
                compacted,
            });
        }
        Some(r) => r,
    };
    let limit = if opts.limit == 0 {
        usize::MAX
    } else {
        opts.limit
    };
    let (start, end) = list_range(prefix, opts.continue_after.as_deref());
    let kv = txn.open_table(KV).map_err(|e| shared.err(e))?;
    let iter = match &end {
        Some(end) => kv.range::<&str>(start.as_str()..end.as_str()),
        None => kv.range::<&str>(start.as_str()..),
    }
    .map_err(|e| shared.err(e))?;

    // Writes after `at` are undone from the log: for each key they touched,
    // the value at `at` is the `prev` of the first such write.
    let mut undo: std::collections::BTreeMap<String, Option<KeyValue>> = Default::default();
    if at < current {
        let log = txn.open_table(LOG).map_err(|e| shared.err(e))?;
        for entry in log
            .range((at as u64 + 1)..=(current as u64))
            .map_err(|e| shared.err(e))?
        {
            let (rev, bytes) = entry.map_err(|e| shared.err(e))?;
            let event = codec::decode_event(rev.value() as Revision, bytes.value())?;
            if in_range(&event.key, &start, end.as_deref()) && !undo.contains_key(&event.key) {
                undo.insert(event.key.clone(), event.prev);
            }
        }
    }

    let mut items = Vec::new();
    let mut more = false;
    let mut undo_iter = undo.into_iter().peekable();
    let mut cur_iter = iter.peekable();
    loop {
        // Merge the current keys with the keys the log says differ at `at`.
        let next_current = match cur_iter.peek() {
            None => None,
            Some(Err(_)) => {
                if let Some(Err(e)) = cur_iter.next() {
                    return Err(shared.err(e));
                }
                continue;
            }
            Some(Ok((k, _))) => Some(k.value().to_string()),
        };
        let next_undo = undo_iter.peek().map(|(k, _)| k.clone());
        let candidate: Option<KeyValue> = match (next_current, next_undo) {
            (None, None) => break,
            (Some(c), Some(u)) if u <= c => {
                if u == c {
                    cur_iter.next();
                }
                undo_iter.next().and_then(|(_, prev)| prev)
            }
            (None, Some(_)) => undo_iter.next().and_then(|(_, prev)| prev),
            (Some(c), _) => match cur_iter.next() {
                Some(Ok((_, v))) => Some(Record::decode(v.value())?.into_key_value(&c)),
                Some(Err(e)) => return Err(shared.err(e)),
                None => None,
            },
        };
        if let Some(kv) = candidate {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(kv);
        }
    }
    Ok(ListResult {
        items,
        revision: at,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_range_starts_after_the_continue_key() {
        let cases = [
            ("no continue", "/p/", None, "/p/", Some("/p0")),
            (
                "continue inside prefix",
                "/p/",
                Some("/p/b"),
                "/p/b\0",
                Some("/p0"),
            ),
            (
                "continue before prefix ignored",
                "/p/",
                Some("/a"),
                "/p/",
                Some("/p0"),
            ),
        ];
        for (name, prefix, after, want_start, want_end) in cases {
            let (start, end) = list_range(prefix, after);
            assert_eq!(start, want_start, "{name}");
            assert_eq!(end.as_deref(), want_end, "{name}");
        }
    }
}
