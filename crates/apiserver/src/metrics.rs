//! `/metrics` in the Prometheus text format: a small hand-rolled registry
//! with Kubernetes' metric names for what the API server measures so far.
//!
//! - `apiserver_request_total{verb,group,version,resource,subresource,code}`
//! - `apiserver_request_duration_seconds{verb,group,version,resource,subresource}`
//!   (a histogram; watches are long-running and not timed, as in Kubernetes)
//! - `apiserver_longrunning_requests{verb="WATCH",group,version,resource}`:
//!   the watches open now.
//! - `etcd_request_duration_seconds{operation,type}`: store latency per
//!   operation and resource, whichever backend (recorded by [`MeteredStore`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use skiff_store::{
    Deleted, KeyValue, ListOptions, ListResult, PutOptions, Revision, Store, WatchStream,
};

/// Kubernetes' request latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// What a request was, for its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`,
    /// `DELETECOLLECTION`.
    pub verb: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(RequestLabels, u16), u64>,
    durations: BTreeMap<RequestLabels, Histogram>,
    /// Open watches by (group, version, resource).
    watches: BTreeMap<(&'static str, &'static str, &'static str), i64>,
    /// Store latency by (operation, type).
    store: BTreeMap<(&'static str, String), Histogram>,
}

/// The API server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps invalid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a finished request; `took` is recorded unless it is a watch.
    pub fn observe(&self, labels: RequestLabels, code: u16, took: Duration) {
        let mut inner = self.lock();
        *inner.requests.entry((labels.clone(), code)).or_default() += 1;
        if labels.verb != "WATCH" {
            inner
                .durations
                .entry(labels)
                .or_default()
                .observe(took.as_secs_f64());
        }
    }

    /// Records one store operation on keys of `key`'s resource.
    pub fn observe_store(&self, operation: &'static str, key: &str, took: Duration) {
        let ty = store_type(key);
        let mut inner = self.lock();
        match inner.store.get_mut(&(operation, ty.clone())) {
            Some(h) => h.observe(took.as_secs_f64()),
            None => {
                let mut h = Histogram::default();
                h.observe(took.as_secs_f64());
                inner.store.insert((operation, ty), h);
            }
        }
    }

    /// Counts an open watch until the returned guard is dropped.
    pub fn watch_started(
        self: &Arc<Self>,
        group: &'static str,
        version: &'static str,
        resource: &'static str,
    ) -> WatchGuard {
        *self
            .lock()
            .watches
            .entry((group, version, resource))
            .or_default() += 1;
        WatchGuard {
            metrics: self.clone(),
            key: (group, version, resource),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let labels = |l: &RequestLabels| {
            format!(
                "verb=\"{}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\"",
                l.verb, l.group, l.version, l.resource, l.subresource
            )
        };
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((l, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{{},code=\"{code}\"}} {n}",
                labels(l)
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource and subresource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for (l, h) in &inner.durations {
            let l = labels(l);
            for (le, n) in BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{l}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{l}}} {}",
                h.count
            );
        }
        out.push_str("# HELP etcd_request_duration_seconds Store request latency in seconds for each operation and object type.\n");
        out.push_str("# TYPE etcd_request_duration_seconds histogram\n");
        for ((op, ty), h) in &inner.store {
            let l = format!("operation=\"{op}\",type=\"{ty}\"");
            for (le, n) in BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "etcd_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "etcd_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "etcd_request_duration_seconds_sum{{{l}}} {}", h.sum);
            let _ = writeln!(
                out,
                "etcd_request_duration_seconds_count{{{l}}} {}",
                h.count
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version and resource.\n");
        out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
        for ((group, version, resource), n) in &inner.watches {
            let _ = writeln!(
                out,
                "apiserver_longrunning_requests{{verb=\"WATCH\",group=\"{group}\",version=\"{version}\",resource=\"{resource}\"}} {n}"
            );
        }
        out
    }
}

/// Keeps a watch counted in `apiserver_longrunning_requests`.
#[derive(Debug)]
pub struct WatchGuard {
    metrics: Arc<Metrics>,
    key: (&'static str, &'static str, &'static str),
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(n) = self.metrics.lock().watches.get_mut(&self.key) {
            *n -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(verb: &'static str) -> RequestLabels {
        RequestLabels {
            verb,
            group: "",
            version: "v1",
            resource: "pods",
            subresource: "",
        }
    }

    #[test]
    fn requests_latencies_and_watches_are_exposed() {
        let m = Arc::new(Metrics::default());
        m.observe(pods("LIST"), 200, Duration::from_millis(30));
        m.observe(pods("LIST"), 200, Duration::from_millis(3));
        m.observe(pods("GET"), 404, Duration::from_millis(1));
        m.observe(pods("WATCH"), 200, Duration::from_secs(100));
        let guard = m.watch_started("", "v1", "pods");
        let text = m.render();
        let base = r#"group="",version="v1",resource="pods",subresource="""#;
        for want in [
            format!(r#"apiserver_request_total{{verb="LIST",{base},code="200"}} 2"#),
            format!(r#"apiserver_request_total{{verb="GET",{base},code="404"}} 1"#),
            format!(r#"apiserver_request_total{{verb="WATCH",{base},code="200"}} 1"#),
            format!(r#"apiserver_request_duration_seconds_bucket{{verb="LIST",{base},le="0.005"}} 1"#),
            format!(r#"apiserver_request_duration_seconds_bucket{{verb="LIST",{base},le="0.05"}} 2"#),
            format!(r#"apiserver_request_duration_seconds_bucket{{verb="LIST",{base},le="+Inf"}} 2"#),
            format!(r#"apiserver_request_duration_seconds_count{{verb="LIST",{base}}} 2"#),
            r#"apiserver_longrunning_requests{verb="WATCH",group="",version="v1",resource="pods"} 1"#
                .to_string(),
            "# TYPE apiserver_request_duration_seconds histogram".to_string(),
        ] {
            assert!(text.contains(&want), "{want} missing in:\n{text}");
        }
        assert!(
            !text.contains(r#"apiserver_request_duration_seconds_count{verb="WATCH""#),
            "watches are not timed"
        );
        drop(guard);
        assert!(m.render().contains(
            r#"apiserver_longrunning_requests{verb="WATCH",group="",version="v1",resource="pods"} 0"#
        ));
    }
}

/// The object type of a storage key (`/registry/apps/deployments/…` →
/// `deployments.apps`, `/registry/core/pods/…` → `pods`).
fn store_type(key: &str) -> String {
    let mut parts = key.trim_start_matches('/').split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("core"), Some(plural)) => plural.to_string(),
        (Some(group), Some(plural)) => format!("{plural}.{group}"),
        _ => "unknown".to_string(),
    }
}

/// A [`Store`] that records each operation's latency in [`Metrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $key:expr, $call:expr) => {{
        let started = std::time::Instant::now();
        let out = $call.await;
        $self.metrics.observe_store($op, $key, started.elapsed());
        out
    }};
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> skiff_store::Result<Option<KeyValue>> {
        timed!(self, "get", key, self.inner.get(key))
    }
    async fn list(&self, prefix: &str, opts: ListOptions) -> skiff_store::Result<ListResult> {
        timed!(self, "list", prefix, self.inner.list(prefix, opts))
    }
    async fn count(&self, prefix: &str) -> skiff_store::Result<i64> {
        timed!(self, "count", prefix, self.inner.count(prefix))
    }
    async fn create(
        &self,
        key: &str,
        value: Bytes,
        opts: PutOptions,
    ) -> skiff_store::Result<KeyValue> {
        timed!(self, "create", key, self.inner.create(key, value, opts))
    }
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
        opts: PutOptions,
    ) -> skiff_store::Result<KeyValue> {
        timed!(
            self,
            "update",
            key,
            self.inner.update(key, value, expected, opts)
        )
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> skiff_store::Result<Deleted> {
        timed!(self, "delete", key, self.inner.delete(key, expected))
    }
    async fn watch(&self, prefix: &str, after: Revision) -> skiff_store::Result<WatchStream> {
        timed!(self, "watch", prefix, self.inner.watch(prefix, after))
    }
    async fn current_revision(&self) -> skiff_store::Result<Revision> {
        self.inner.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> skiff_store::Result<()> {
        self.inner.compact(revision).await
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

#[cfg(test)]
mod store_type_tests {
    use super::*;

    #[test]
    fn store_types_follow_kubernetes_resource_names() {
        assert_eq!(store_type("/registry/core/pods/default/a"), "pods");
        assert_eq!(
            store_type("/registry/apps/deployments/"),
            "deployments.apps"
        );
        assert_eq!(store_type("x"), "unknown");
    }
}
