//! The etcd v3 backend: a real etcd cluster through `etcd-client`.
//!
//! Revisions are etcd's own, one to one: every answer carries the revision
//! etcd's response header (or the key's `mod_revision`) says.
//!
//! - `create` is a transaction `create_revision(key) == 0 → put`;
//!   `update` is `mod_revision(key) == expected → put, get` else `get`, so a
//!   failed compare answers [`Error::Conflict`] or [`Error::NotFound`] from
//!   the same snapshot; `delete` likewise, with `prev_kv`.
//! - `list` reads `[start, prefix_end)` at one revision with etcd's `limit`
//!   and `more`; later pages pass the first page's revision.
//! - `watch` is an etcd watch from `after + 1` with `prev_kv`; see
//!   the `watch` submodule for how it survives a member's death.
//! - TTLs become shared leases; see the `leases` submodule.
//!
//! # Failover and retries
//!
//! The client holds every endpoint and balances requests over them. When a
//! member dies, the balancer keeps picking it now and then; those requests
//! fail to connect and are retried, most likely on another member. A failed
//! request falls in one of three classes (`faults::Fault`):
//!
//! - **not applied**: it never reached a server (the connection could not be
//!   made), or etcd refused it before proposing it to raft (`no leader`, as
//!   every request carries etcd's require-leader flag; `too many requests`;
//!   a dropped proposal). Every operation retries these, with backoff, for up
//!   to [`EtcdConfig::retry_budget`].
//! - **unknown**: a broken connection, a timeout (ours or etcd's own
//!   `request timed out`), `leader changed`. A read retries. A write cannot
//!   simply retry: if the first attempt was applied, the retry's compare
//!   fails and the caller would be told `AlreadyExists` or `Conflict` about
//!   its own write. Instead the store **looks for its write in etcd's
//!   history**: it reads the current revision `H`, watches every key from a
//!   revision known to precede the attempt (the highest revision this store
//!   had seen before sending, or the expected revision if later) up to `H`,
//!   and looks for an event that matches the write: a create of this key
//!   with this value and one of the leases this call used; for an update,
//!   the first change after the expected revision being a put of this value
//!   and lease; for a conditional delete, the first change after the
//!   expected revision being a delete; for an unconditional delete, any
//!   delete of the key. Found: the write landed, and its event is the answer.
//!   Not found: it had not landed by `H`, so the write is sent again (a
//!   first attempt still in flight can land only if its compare still holds,
//!   and then the retry's compare fails and triggers the same search).
//!   History compacted, or the search itself failing: the original error
//!   is returned, and the outcome stays unknown to the caller, as with any
//!   etcd client.
//! - **permanent**: returned at once.
//!
//! What the search cannot tell apart: another client's byte-identical write
//! under the same precondition (same value, same lease, same expected
//! revision) — both callers are then told they wrote — and, for deletes,
//! another client's delete of the same key version. Both leave the store in
//! the state the caller asked for.
//!
//! This crate is the only one that knows about etcd.

mod faults;
mod leases;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::proto::{PbEvent, PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaseClient,
    ResponseHeader, Txn, TxnOp, TxnResponse, WatchOptions,
};
use tokio::time::Instant;

/// The largest gRPC response taken from etcd. gRPC's 4 MiB default is
/// less than one watch response carries when thousands of pods change at
/// once (etcd batches events), which ended every watch in a loop.
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

use self::faults::{Backoff, Fault, classify};
use self::leases::Leases;
use crate::Store;
use crate::error::{Error, Result};
use crate::types::{
    Deleted, KeyValue, ListOptions, ListResult, PutOptions, Revision, WatchStream, prefix_end,
};

/// Client certificate files for etcd. An empty `cert`/`key` means server
/// verification only.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Timeouts of the etcd backend. The defaults suit a cluster on one LAN.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// How long one attempt of a request may take. Longer than etcd's own
    /// proposal timeout (5 s plus two election timeouts), so that etcd's
    /// verdict usually arrives first.
    pub request_timeout: Duration,
    /// How long an operation keeps retrying (and a broken watch keeps
    /// resuming) before it gives up with the last error.
    pub retry_budget: Duration,
    /// How long connecting to one member may take.
    pub connect_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            request_timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The store on a real etcd v3 cluster.
/// The most keys one range request asks for (1 KiB values stay well under
/// gRPC's 4 MiB message limit).
const LIST_PAGE: usize = 1000;

pub struct EtcdStore {
    conn: Conn,
    leases: Leases,
}

/// What the store and its watch tasks share.
#[derive(Clone)]
struct Conn {
    client: Client,
    config: EtcdConfig,
    /// The highest revision seen in any response: any write sent after it
    /// was seen lands at a higher revision.
    seen: Arc<AtomicI64>,
}

/// Connects to etcd at `endpoints` (all `http://` or all `https://`) and
/// checks that it answers.
pub async fn connect(endpoints: &[String], tls: Option<TlsFiles>) -> Result<EtcdStore> {
    EtcdStore::connect_with(endpoints, tls, EtcdConfig::default()).await
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String], tls: Option<TlsFiles>) -> Result<EtcdStore> {
        connect(endpoints, tls).await
    }

    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<TlsFiles>,
        config: EtcdConfig,
    ) -> Result<EtcdStore> {
        let options = connect_options(endpoints, tls.as_ref(), &config)?;
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(Error::Etcd)?;
        let store = EtcdStore {
            conn: Conn {
                client,
                config,
                seen: Arc::new(AtomicI64::new(0)),
            },
            leases: Leases::default(),
        };
        // The channel connects lazily: ask once, so a wrong address or TLS
        // setup fails here rather than at the first request.
        store.current_revision().await?;
        Ok(store)
    }

    /// The lease for a write with `ttl` (0 for none); see [`leases`].
    async fn lease_for(&self, ttl: Option<Duration>) -> Result<i64> {
        let Some(ttl) = ttl else { return Ok(0) };
        let ttl = leases::ttl_secs(ttl);
        let now = Instant::now();
        if let Some(id) = self.leases.reusable(ttl, now) {
            return Ok(id);
        }
        let asked = ttl + leases::window_secs(ttl);
        // A grant retried after an unknown outcome may leave an unused
        // lease behind; it expires by itself.
        let resp = self
            .conn
            .idempotent(|| {
                let mut leases: LeaseClient = self.conn.client.lease_client();
                async move { leases.grant(asked, None).await }
            })
            .await
            .map_err(Error::Etcd)?;
        self.conn.saw(resp.header());
        // etcd may raise a TTL to its minimum, never lower it.
        self.leases.remember(resp.id(), resp.ttl().max(asked), now);
        Ok(resp.id())
    }

    /// Maps an etcd error of a read at `revision` to the store's answers.
    async fn revision_error(&self, e: etcd_client::Error, revision: Revision) -> Error {
        if faults::is_compacted(&e) {
            let compacted = self.conn.compacted_revision().await.unwrap_or(0);
            return Error::Compacted {
                requested: revision,
                compacted,
            };
        }
        if faults::is_future_revision(&e) {
            let current = self.conn.current_revision().await.unwrap_or(0);
            return Error::FutureRevision {
                requested: revision,
                current,
            };
        }
        Error::Etcd(e)
    }

    /// Looks for this store's own write to `key` in the history after
    /// `after` (see the module docs). `Ok(None)`: it had not landed by the
    /// current revision. `Err`: history cannot tell.
    async fn find_own_write(
        &self,
        key: &str,
        after: Revision,
        mine: Mine<'_>,
    ) -> Result<Option<PbEvent>> {
        let upto = self.conn.current_revision().await?;
        if upto <= after {
            return Ok(None);
        }
        let mut stream = self
            .conn
            .open_watch(vec![0], vec![0], after + 1, true)
            .await?;
        let mut first_on_key = true;
        let deadline = Instant::now() + self.conn.config.request_timeout;
        loop {
            let resp = match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => {
                    return Err(Error::Etcd(faults::timed_out(
                        self.conn.config.request_timeout,
                    )));
                }
                Ok(Err(e)) => return Err(Error::Etcd(e)),
                Ok(Ok(None)) => return Err(unexpected("watch ended while searching history")),
                Ok(Ok(Some(resp))) => resp,
            };
            let resp = resp.0;
            if resp.compact_revision > 0 || resp.canceled {
                return Err(Error::Compacted {
                    requested: after,
                    compacted: resp.compact_revision,
                });
            }
            for event in resp.events {
                let Some(kv) = event.kv.as_ref() else {
                    continue;
                };
                let revision = kv.mod_revision;
                if kv.key == key.as_bytes() {
                    let matched = mine.matches(&event, first_on_key);
                    first_on_key = false;
                    match matched {
                        Some(true) => return Ok(Some(event)),
                        Some(false) => return Ok(None),
                        None => {}
                    }
                }
                if revision >= upto {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends a write transaction, retrying what certainly did not apply.
    async fn send_txn(&self, backoff: &mut Backoff, txn: &Txn) -> Result<Sent<TxnResponse>> {
        let resp = self
            .conn
            .write(backoff, || {
                let mut kv = self
                    .conn
                    .client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if let Sent::Done(resp) = &resp {
            self.conn.saw(resp.header());
        }
        Ok(resp)
    }
}

/// The write whose fate [`EtcdStore::find_own_write`] looks for.
#[derive(Clone, Copy)]
enum Mine<'a> {
    Create {
        value: &'a [u8],
        leases: &'a [i64],
    },
    Update {
        expected: Revision,
        value: &'a [u8],
        leases: &'a [i64],
    },
    Delete {
        expected: Option<Revision>,
    },
}

impl Mine<'_> {
    /// Some(true): this event is the write; Some(false): the write cannot
    /// have landed; None: keep looking.
    fn matches(&self, event: &PbEvent, first_on_key: bool) -> Option<bool> {
        let is_put = event.r#type == 0;
        let is_delete = event.r#type == 1;
        let kv = event.kv.as_ref()?;
        let prev_mod = event.prev_kv.as_ref().map(|p| p.mod_revision);
        match self {
            Mine::Create { value, leases } => (is_put
                && kv.create_revision == kv.mod_revision
                && kv.value == *value
                && leases.contains(&kv.lease))
            .then_some(true),
            // Conditional on `expected`: only the first change after it
            // can be ours.
            Mine::Update {
                expected,
                value,
                leases,
            } => first_on_key.then_some(
                is_put
                    && prev_mod == Some(*expected)
                    && kv.value == *value
                    && leases.contains(&kv.lease),
            ),
            Mine::Delete {
                expected: Some(expected),
            } => first_on_key.then_some(is_delete && prev_mod == Some(*expected)),
            Mine::Delete { expected: None } => is_delete.then_some(true),
        }
    }
}

/// The outcome of sending a write.
enum Sent<T> {
    Done(T),
    /// It may or may not have been applied.
    Unknown(etcd_client::Error),
}

impl Conn {
    fn saw(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.seen.fetch_max(h.revision(), Ordering::SeqCst);
        }
    }

    fn seen(&self) -> Revision {
        self.seen.load(Ordering::SeqCst)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.config.retry_budget)
    }

    /// One attempt, bounded by the request timeout.
    async fn attempt<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| Err(faults::timed_out(limit)))
    }

    /// Runs a request that may be repeated safely, retrying every transient
    /// failure until the retry budget is spent.
    async fn idempotent<T, F, Fut>(&self, mut request: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut backoff = self.backoff();
        loop {
            match self.attempt(request()).await {
                Ok(v) => return Ok(v),
                Err(e) if classify(&e) == Fault::Permanent => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "etcd request failed; retrying");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Runs a write, retrying only failures that certainly did not apply it.
    async fn write<T, F, Fut>(&self, backoff: &mut Backoff, mut request: F) -> Result<Sent<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        loop {
            match self.attempt(request()).await {
                Ok(v) => return Ok(Sent::Done(v)),
                Err(e) => match classify(&e) {
                    Fault::Permanent => return Err(Error::Etcd(e)),
                    Fault::Unknown => return Ok(Sent::Unknown(e)),
                    Fault::NotApplied => {
                        tracing::debug!(error = %e, "etcd write not applied; retrying");
                        if !backoff.wait().await {
                            return Err(Error::Etcd(e));
                        }
                    }
                },
            }
        }
    }

    /// The revision of the last write: the header of a one-key count.
    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .idempotent(|| {
                let mut kv = self
                    .client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                async move {
                    kv.get(vec![0], Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        self.saw(resp.header());
        header_revision(resp.header())
    }

    /// The revision etcd compacted to, learned from a watch at revision 1;
    /// `None` when etcd does not say (nothing compacted) within a moment.
    async fn compacted_revision(&self) -> Option<Revision> {
        let mut stream = self.open_watch(vec![0], Vec::new(), 1, false).await.ok()?;
        let probe = async {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .ok()
            .flatten()
    }

    /// Opens an etcd watch on `[key, range_end)` from `start` and waits for
    /// etcd to confirm it. Retries transient failures.
    async fn open_watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start: Revision,
        prev_kv: bool,
    ) -> Result<etcd_client::WatchStream> {
        self.idempotent(|| {
            let mut client = self
                .client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let mut options = WatchOptions::new().with_start_revision(start);
            if !range_end.is_empty() {
                options = options.with_range(range_end.clone());
            }
            if prev_kv {
                options = options.with_prev_key();
            }
            let key = key.clone();
            async move {
                let mut stream = client.watch(key, Some(options)).await?;
                match stream.message().await? {
                    Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                    Some(resp) => Err(etcd_client::Error::WatchError(format!(
                        "etcd refused the watch: {}",
                        resp.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError(
                        "watch stream closed before etcd confirmed the watch".into(),
                    )),
                }
            }
        })
        .await
        .map_err(Error::Etcd)
    }
}

fn connect_options(
    endpoints: &[String],
    tls: Option<&TlsFiles>,
    config: &EtcdConfig,
) -> Result<ConnectOptions> {
    if endpoints.is_empty() {
        return Err(Error::InvalidConfig("no etcd endpoints given".into()));
    }
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    if https + http != endpoints.len() || (https > 0 && http > 0) {
        return Err(Error::InvalidConfig(format!(
            "etcd endpoints must be all http:// or all https://, got {endpoints:?}"
        )));
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        // Notices a member that vanished without closing the connection.
        // Only with open streams: etcd answers idle pings with GOAWAY.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false)
        // A member cut off from the leader refuses requests at once (a safe
        // retry) and cancels its watches (which then resume elsewhere).
        .with_require_leader(true);
    match (tls, https > 0) {
        (None, false) => {}
        (None, true) => {
            return Err(Error::InvalidConfig(
                "https:// etcd endpoints need TLS files (at least a CA)".into(),
            ));
        }
        (Some(_), false) => {
            return Err(Error::InvalidConfig(
                "etcd TLS files given but the endpoints are http://".into(),
            ));
        }
        (Some(files), true) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| Error::Io {
                    path: path.display().to_string(),
                    source,
                })
            };
            let Some(ca) = &files.ca else {
                return Err(Error::InvalidConfig(
                    "etcd TLS needs a CA file: the etcd backend has no built-in trust roots".into(),
                ));
            };
            let mut tls_options = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            let has_cert = !files.cert.as_os_str().is_empty();
            let has_key = !files.key.as_os_str().is_empty();
            match (has_cert, has_key) {
                (true, true) => {
                    tls_options = tls_options.identity(etcd_client::Identity::from_pem(
                        read(&files.cert)?,
                        read(&files.key)?,
                    ));
                }
                (false, false) => {}
                _ => {
                    return Err(Error::InvalidConfig(
                        "etcd client certificate and key must be given together".into(),
                    ));
                }
            }
            options = options.with_tls(tls_options);
        }
    }
    Ok(options)
}

fn header_revision(header: Option<&ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| unexpected("response without a header"))
}

fn unexpected(what: &str) -> Error {
    Error::Etcd(etcd_client::Error::Internal(format!(
        "unexpected answer from etcd: {what}"
    )))
}

fn key_value(kv: PbKeyValue) -> Result<KeyValue> {
    let key = String::from_utf8(kv.key)
        .map_err(|e| Error::Etcd(etcd_client::Error::Utf8Error(e.utf8_error())))?;
    Ok(KeyValue {
        key,
        value: Bytes::from(kv.value),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}

/// `[key, range_end)` for every key starting with `prefix`, as etcd wants
/// it ("\0" stands for "no end", and for the smallest key).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    (key, end)
}

/// The first key-value of the `index`th operation of a transaction, which
/// must be a range.
fn txn_range_kv(resp: &mut TxnResponse, index: usize) -> Result<Option<PbKeyValue>> {
    match resp
        .0
        .responses
        .get_mut(index)
        .and_then(|r| r.response.take())
    {
        Some(PbTxnOpResponse::ResponseRange(range)) => Ok(range.kvs.into_iter().next()),
        _ => Err(unexpected("transaction without the expected range result")),
    }
}

/// The previous value of the `index`th operation, which must be a delete.
fn txn_deleted_kv(resp: &mut TxnResponse, index: usize) -> Result<Option<PbKeyValue>> {
    match resp
        .0
        .responses
        .get_mut(index)
        .and_then(|r| r.response.take())
    {
        Some(PbTxnOpResponse::ResponseDeleteRange(del)) => Ok(del.prev_kvs.into_iter().next()),
        _ => Err(unexpected("transaction without the expected delete result")),
    }
}

fn put_options(lease: i64) -> Option<etcd_client::PutOptions> {
    (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease))
}

/// The answer to a conditional write whose compare failed, read in the
/// same transaction.
fn failed_compare(key: &str, expected: Revision, current_mod_revision: Option<Revision>) -> Error {
    match current_mod_revision {
        None => Error::NotFound {
            key: key.to_string(),
        },
        Some(actual) => Error::Conflict {
            key: key.to_string(),
            expected,
            actual,
        },
    }
}

fn found_put(event: PbEvent) -> Result<KeyValue> {
    key_value(
        event
            .kv
            .ok_or_else(|| unexpected("put event without a value"))?,
    )
}

fn found_delete(event: PbEvent) -> Result<Deleted> {
    let revision = event
        .kv
        .as_ref()
        .map(|kv| kv.mod_revision)
        .ok_or_else(|| unexpected("delete event without a key"))?;
    let prev = event
        .prev_kv
        .ok_or_else(|| unexpected("delete event without the previous value"))?;
    Ok(Deleted {
        revision,
        prev: key_value(prev)?,
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut resp = self
            .conn
            .idempotent(|| {
                let mut kv = self
                    .conn
                    .client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(Error::Etcd)?;
        self.conn.saw(resp.header());
        resp.0.kvs.drain(..).next().map(key_value).transpose()
    }

    /// Reads in pages of at most [`LIST_PAGE`] keys at one revision, so a
    /// large list never exceeds gRPC's message size limit and stays one
    /// consistent snapshot.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let (mut start, end) = prefix_range(prefix);
        if let Some(after) = &opts.continue_after {
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            if next > start {
                start = next;
            }
        }
        let mut at = opts.revision.filter(|r| *r > 0);
        let wanted = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let mut items: Vec<KeyValue> = Vec::new();
        loop {
            let page = (wanted - items.len()).min(LIST_PAGE);
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(page as i64);
            if let Some(r) = at {
                options = options.with_revision(r);
            }
            let result = self
                .conn
                .idempotent(|| {
                    let mut kv = self
                        .conn
                        .client
                        .kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await;
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => return Err(self.revision_error(e, at.unwrap_or(0)).await),
            };
            self.conn.saw(resp.header());
            let revision = match at {
                Some(r) => r,
                None => header_revision(resp.header())?,
            };
            at = Some(revision);
            let more = resp.0.more;
            for kv in resp.0.kvs {
                items.push(key_value(kv)?);
            }
            if !more || items.len() >= wanted {
                return Ok(ListResult {
                    items,
                    revision,
                    more,
                });
            }
            let Some(last) = items.last() else {
                return Ok(ListResult {
                    items,
                    revision,
                    more,
                });
            };
            let mut next = last.key.as_bytes().to_vec();
            next.push(0);
            start = next;
        }
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        let (start, end) = prefix_range(prefix);
        let resp = self
            .conn
            .idempotent(|| {
                let mut kv = self
                    .conn
                    .client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let (start, end) = (start.clone(), end.clone());
                async move {
                    kv.get(
                        start,
                        Some(GetOptions::new().with_range(end).with_count_only()),
                    )
                    .await
                }
            })
            .await
            .map_err(Error::Etcd)?;
        self.conn.saw(resp.header());
        Ok(resp.count())
    }

    async fn create(&self, key: &str, value: Bytes, opts: PutOptions) -> Result<KeyValue> {
        let baseline = self.conn.seen();
        let mut backoff = self.conn.backoff();
        let mut leases_used = Vec::new();
        let mut maybe_landed = false;
        loop {
            let lease = self.lease_for(opts.ttl).await?;
            leases_used.push(lease);
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.to_vec(), put_options(lease))]);
            let mine = Mine::Create {
                value: &value,
                leases: &leases_used,
            };
            let unknown = match self.send_txn(&mut backoff, &txn).await {
                Ok(Sent::Done(resp)) if resp.succeeded() => {
                    let revision = header_revision(resp.header())?;
                    return Ok(KeyValue {
                        key: key.to_string(),
                        value,
                        create_revision: revision,
                        mod_revision: revision,
                    });
                }
                Ok(Sent::Done(_)) => {
                    if maybe_landed
                        && let Some(event) = self.find_own_write(key, baseline, mine).await?
                    {
                        return found_put(event);
                    }
                    return Err(Error::AlreadyExists {
                        key: key.to_string(),
                    });
                }
                Err(Error::Etcd(e)) if faults::is_lease_not_found(&e) => {
                    self.leases.forget(lease);
                    if !backoff.wait().await {
                        return Err(Error::Etcd(e));
                    }
                    continue;
                }
                Err(e) => return Err(e),
                Ok(Sent::Unknown(e)) => e,
            };
            match self.find_own_write(key, baseline, mine).await {
                Ok(Some(event)) => return found_put(event),
                Ok(None) if backoff.wait().await => maybe_landed = true,
                Ok(None) | Err(_) => return Err(Error::Etcd(unknown)),
            }
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
        opts: PutOptions,
    ) -> Result<KeyValue> {
        let expected = expected_mod_revision;
        if expected <= 0 {
            // No key ever has that revision; a compare on it would match an
            // absent key.
            let current = self.get(key).await?;
            return Err(failed_compare(
                key,
                expected,
                current.map(|kv| kv.mod_revision),
            ));
        }
        let baseline = self.conn.seen().max(expected);
        let mut backoff = self.conn.backoff();
        let mut leases_used = Vec::new();
        let mut maybe_landed = false;
        loop {
            let lease = self.lease_for(opts.ttl).await?;
            leases_used.push(lease);
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([
                    TxnOp::put(key, value.to_vec(), put_options(lease)),
                    TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
                ])
                .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
            let mine = Mine::Update {
                expected,
                value: &value,
                leases: &leases_used,
            };
            let unknown = match self.send_txn(&mut backoff, &txn).await {
                Ok(Sent::Done(mut resp)) if resp.succeeded() => {
                    let revision = header_revision(resp.header())?;
                    let stored = txn_range_kv(&mut resp, 1)?.ok_or_else(|| {
                        unexpected("updated key missing from its own transaction")
                    })?;
                    return Ok(KeyValue {
                        key: key.to_string(),
                        value,
                        create_revision: stored.create_revision,
                        mod_revision: revision,
                    });
                }
                Ok(Sent::Done(mut resp)) => {
                    if maybe_landed
                        && let Some(event) = self.find_own_write(key, baseline, mine).await?
                    {
                        return found_put(event);
                    }
                    return Err(failed_compare(
                        key,
                        expected,
                        txn_range_kv(&mut resp, 0)?.map(|kv| kv.mod_revision),
                    ));
                }
                Err(Error::Etcd(e)) if faults::is_lease_not_found(&e) => {
                    self.leases.forget(lease);
                    if !backoff.wait().await {
                        return Err(Error::Etcd(e));
                    }
                    continue;
                }
                Err(e) => return Err(e),
                Ok(Sent::Unknown(e)) => e,
            };
            match self.find_own_write(key, baseline, mine).await {
                Ok(Some(event)) => return found_put(event),
                Ok(None) if backoff.wait().await => maybe_landed = true,
                Ok(None) | Err(_) => return Err(Error::Etcd(unknown)),
            }
        }
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        if let Some(expected) = expected_mod_revision
            && expected <= 0
        {
            let current = self.get(key).await?;
            return Err(failed_compare(
                key,
                expected,
                current.map(|kv| kv.mod_revision),
            ));
        }
        let baseline = self.conn.seen().max(expected_mod_revision.unwrap_or(0));
        let mut backoff = self.conn.backoff();
        let mut maybe_landed = false;
        let delete = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let txn = match expected_mod_revision {
            Some(expected) => Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([delete])
                .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]),
            None => Txn::new().and_then([delete]),
        };
        let mine = Mine::Delete {
            expected: expected_mod_revision,
        };
        loop {
            let unknown = match self.send_txn(&mut backoff, &txn).await? {
                Sent::Done(mut resp) => {
                    let revision = header_revision(resp.header())?;
                    let answer = if resp.succeeded() {
                        match txn_deleted_kv(&mut resp, 0)? {
                            Some(prev) => {
                                return Ok(Deleted {
                                    revision,
                                    prev: key_value(prev)?,
                                });
                            }
                            None => Error::NotFound {
                                key: key.to_string(),
                            },
                        }
                    } else {
                        let expected = expected_mod_revision.unwrap_or(0);
                        failed_compare(
                            key,
                            expected,
                            txn_range_kv(&mut resp, 0)?.map(|kv| kv.mod_revision),
                        )
                    };
                    if maybe_landed
                        && let Some(event) = self.find_own_write(key, baseline, mine).await?
                    {
                        return found_delete(event);
                    }
                    return Err(answer);
                }
                Sent::Unknown(e) => e,
            };
            match self.find_own_write(key, baseline, mine).await {
                Ok(Some(event)) => return found_delete(event),
                Ok(None) if backoff.wait().await => maybe_landed = true,
                Ok(None) | Err(_) => return Err(Error::Etcd(unknown)),
            }
        }
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        watch::start(self, prefix, after_revision).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.conn.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        // Compacting twice to one revision answers "compacted", which the
        // compactor takes as done: retrying an unknown outcome is safe.
        let result = self
            .conn
            .idempotent(|| {
                let mut kv = self
                    .conn
                    .client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                async move { kv.compact(revision, None).await }
            })
            .await;
        match result {
            Ok(resp) => {
                self.conn.saw(resp.header());
                Ok(())
            }
            Err(e) => Err(self.revision_error(e, revision).await),
        }
    }

    fn backend_name(&self) -> &'static str {
        "etcd"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        let cases: &[(&str, &str, &[u8], &[u8])] = &[
            (
                "a prefix",
                "/registry/pods/",
                b"/registry/pods/",
                b"/registry/pods0",
            ),
            ("everything", "", b"\0", b"\0"),
        ];
        for (name, prefix, key, end) in cases {
            let (k, e) = prefix_range(prefix);
            assert_eq!((k.as_slice(), e.as_slice()), (*key, *end), "{name}");
        }
    }

    #[test]
    fn endpoints_and_tls_files_must_agree() {
        let http = vec!["http://127.0.0.1:2379".to_string()];
        let https = vec!["https://127.0.0.1:2379".to_string()];
        let mixed = vec![http[0].clone(), https[0].clone()];
        let bare = vec!["127.0.0.1:2379".to_string()];
        let ca_only = TlsFiles {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        let no_ca = TlsFiles {
            ca: None,
            cert: PathBuf::from("c.pem"),
            key: PathBuf::from("k.pem"),
        };
        let config = EtcdConfig::default();
        let invalid = |r: Result<ConnectOptions>| matches!(r, Err(Error::InvalidConfig(_)));
        assert!(connect_options(&http, None, &config).is_ok(), "plain http");
        assert!(invalid(connect_options(&[], None, &config)), "no endpoints");
        assert!(
            invalid(connect_options(&mixed, None, &config)),
            "mixed schemes"
        );
        assert!(invalid(connect_options(&bare, None, &config)), "no scheme");
        assert!(
            invalid(connect_options(&https, None, &config)),
            "https without tls"
        );
        assert!(
            invalid(connect_options(&http, Some(&ca_only), &config)),
            "tls on http"
        );
        assert!(
            invalid(connect_options(&https, Some(&no_ca), &config)),
            "tls without a ca"
        );
        assert!(
            matches!(
                connect_options(&https, Some(&ca_only), &config),
                Err(Error::Io { .. })
            ),
            "unreadable ca"
        );
    }

    fn put(
        key: &str,
        value: &str,
        lease: i64,
        create: i64,
        modified: i64,
        prev_mod: Option<i64>,
    ) -> PbEvent {
        PbEvent {
            r#type: 0,
            kv: Some(PbKeyValue {
                key: key.into(),
                value: value.into(),
                lease,
                create_revision: create,
                mod_revision: modified,
                version: 1,
            }),
            prev_kv: prev_mod.map(|m| PbKeyValue {
                key: key.into(),
                mod_revision: m,
                ..PbKeyValue::default()
            }),
        }
    }

    fn del(key: &str, revision: i64, prev_mod: i64) -> PbEvent {
        PbEvent {
            r#type: 1,
            kv: Some(PbKeyValue {
                key: key.into(),
                mod_revision: revision,
                ..PbKeyValue::default()
            }),
            prev_kv: Some(PbKeyValue {
                key: key.into(),
                mod_revision: prev_mod,
                ..PbKeyValue::default()
            }),
        }
    }

    #[test]
    fn own_writes_are_recognised_in_history() {
        let leases = [0, 42];
        let create = Mine::Create {
            value: b"v",
            leases: &leases,
        };
        let update = Mine::Update {
            expected: 5,
            value: b"v",
            leases: &leases,
        };
        let cond_delete = Mine::Delete { expected: Some(5) };
        let any_delete = Mine::Delete { expected: None };
        let cases = [
            (
                "our create",
                &create,
                put("k", "v", 42, 9, 9, None),
                true,
                Some(true),
            ),
            (
                "a create with another value",
                &create,
                put("k", "x", 42, 9, 9, None),
                true,
                None,
            ),
            (
                "a create with a lease we did not use",
                &create,
                put("k", "v", 7, 9, 9, None),
                true,
                None,
            ),
            (
                "an update is no create",
                &create,
                put("k", "v", 0, 3, 9, Some(8)),
                true,
                None,
            ),
            (
                "our update",
                &update,
                put("k", "v", 0, 3, 9, Some(5)),
                true,
                Some(true),
            ),
            (
                "another update came first",
                &update,
                put("k", "x", 0, 3, 9, Some(5)),
                true,
                Some(false),
            ),
            (
                "only the first change can be ours",
                &update,
                put("k", "v", 0, 3, 9, Some(5)),
                false,
                None,
            ),
            (
                "a delete came first",
                &update,
                del("k", 9, 5),
                true,
                Some(false),
            ),
            (
                "our conditional delete",
                &cond_delete,
                del("k", 9, 5),
                true,
                Some(true),
            ),
            (
                "an update came before the delete",
                &cond_delete,
                put("k", "x", 0, 3, 9, Some(5)),
                true,
                Some(false),
            ),
            (
                "any delete for an unconditional one",
                &any_delete,
                del("k", 9, 7),
                false,
                Some(true),
            ),
            (
                "puts do not end an unconditional search",
                &any_delete,
                put("k", "x", 0, 3, 9, Some(5)),
                true,
                None,
            ),
        ];
        for (name, mine, event, first, want) in cases {
            assert_eq!(mine.matches(&event, first), want, "{name}");
        }
    }
}
