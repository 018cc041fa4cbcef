//! The cluster store: the single source of truth of a skiff cluster.
//!
//! The semantics are etcd v3's, because the Kubernetes API is built on them:
//! one cluster-wide revision incremented by every write, `create_revision` and
//! `mod_revision` on every key, optimistic concurrency on `mod_revision`,
//! watches that deliver every change after a revision exactly once and in
//! order, and compaction that makes older history answer [`Error::Compacted`].
//!
//! Two backends implement [`Store`]:
//! - [`embedded::EmbeddedStore`]: a `redb` database under the data directory,
//!   with group commit and watches fed from memory (the default);
//! - [`etcd::EtcdStore`]: a real etcd v3 cluster through `etcd-client`.
//!
//! [`open`] picks one from a k3s-style datastore endpoint: empty means
//! embedded, `http(s)://host:port[,…]` means etcd.
//!
//! This crate must not know about Kubernetes objects: keys are strings and
//! values are opaque bytes. Only the API server uses it.

mod compactor;
pub mod embedded;
mod error;
pub mod etcd;
mod types;
mod update;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use compactor::{CompactionConfig, Compactor};
pub use error::{Error, Result};
pub use types::{
    Deleted, Event, EventKind, KeyValue, ListOptions, ListResult, PutOptions, Revision,
    WatchStream, prefix_end,
};
pub use update::{Update, guaranteed_update};

/// The store's operations. Every backend passes the same behaviour suite
/// (`tests/suite`).
///
/// Revisions are etcd's: a write that succeeds gets a revision one higher
/// than the previous successful write, cluster-wide.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, in key order, from one consistent
    /// snapshot. With `opts.revision` the snapshot is that revision (as a
    /// paginated list's later pages need); otherwise the current one. The
    /// result carries the revision it was read at.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<i64>;

    /// Stores `value` at `key` if the key does not exist, else
    /// [`Error::AlreadyExists`].
    async fn create(&self, key: &str, value: Bytes, opts: PutOptions) -> Result<KeyValue>;

    /// Replaces the value at `key` if its `mod_revision` is still
    /// `expected_mod_revision`: else [`Error::Conflict`], or
    /// [`Error::NotFound`] when the key is gone.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
        opts: PutOptions,
    ) -> Result<KeyValue>;

    /// Removes `key`, only if its `mod_revision` is `expected_mod_revision`
    /// when one is given. Returns the removed value and the delete's revision.
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted>;

    /// Every change to keys starting with `prefix` with a revision greater
    /// than `after_revision`, in revision order, each exactly once, with the
    /// previous value. [`Error::Compacted`] when that history is gone.
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream>;

    /// The revision of the last successful write.
    async fn current_revision(&self) -> Result<Revision>;

    /// Discards history before `revision`: watches and lists at older
    /// revisions fail with [`Error::Compacted`] afterwards.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// A short name for logs and benchmarks (`embedded`, `etcd`).
    fn backend_name(&self) -> &'static str;
}

/// Where the store lives and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// k3s's `--datastore-endpoint`: empty for the embedded store, or a
    /// comma-separated list of `http://` / `https://` etcd endpoints.
    pub endpoint: String,
    /// Directory for the embedded database (`<data-dir>/db`).
    pub data_dir: PathBuf,
    /// Client TLS for etcd: the CA that signed the etcd servers' certificates.
    pub etcd_ca_file: Option<PathBuf>,
    /// Client TLS for etcd: this client's certificate and key.
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
}

/// Opens the backend that `config.endpoint` names.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    let endpoint = config.endpoint.trim();
    if endpoint.is_empty() {
        let path = config.data_dir.join("state.redb");
        let store = embedded::EmbeddedStore::open(&path, embedded::EmbeddedConfig::default())?;
        return Ok(Arc::new(store));
    }
    let endpoints: Vec<String> = endpoint
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!(
                "datastore endpoint {e:?} is neither empty nor an http(s):// etcd address"
            )));
        }
    }
    let tls = match (&config.etcd_cert_file, &config.etcd_key_file) {
        (Some(cert), Some(key)) => Some(etcd::TlsFiles {
            ca: config.etcd_ca_file.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => config.etcd_ca_file.as_ref().map(|ca| etcd::TlsFiles {
            ca: Some(ca.clone()),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        }),
        _ => {
            return Err(Error::InvalidConfig(
                "etcd client certificate and key must be given together".into(),
            ));
        }
    };
    let store = etcd::EtcdStore::connect(&endpoints, tls).await?;
    Ok(Arc::new(store))
}
