//! The cluster DNS (skiff-dns): answers `<svc>.<ns>.svc.<domain>`, headless
//! endpoints, SRV for named ports, ExternalName CNAMEs, `<a-b-c-d>.<ns>.pod.
//! <domain>` and PTR for service IPs, the way CoreDNS's `kubernetes` plugin
//! does, from Services and EndpointSlices it watches; every other name is
//! forwarded to the upstream servers of the node's resolv.conf.
//!
//! The crate is a Kubernetes API client only: it reads Services and
//! EndpointSlices through `kube` watchers and would run against any
//! cluster. It must not talk to the store or the API server's internals,
//! must not write to the API, and must never panic on network input: a
//! malformed query is answered FORMERR (or dropped when not even its header
//! parses), an upstream failure is a SERVFAIL.
//!
//! Layout: [`snapshot`] turns the watched objects into an immutable index;
//! [`answer()`] is the pure question → records function over it (no IO);
//! `forward` asks the upstream servers; `server` is the UDP/TCP front end
//! on `hickory-server` (which also sets the TC bit on UDP answers larger
//! than the client's payload size); `watch` keeps the snapshot current.

mod answer;
mod forward;
mod server;
pub mod snapshot;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use answer::{Answer, Response, answer};
pub use forward::parse_resolv_conf;
pub use server::DnsServer;
pub use snapshot::{Snapshot, Zone};

/// How the DNS server runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Addresses served over both UDP and TCP (the cluster DNS address
    /// `10.43.0.10:53` in production). Port 0 picks a free port, the same
    /// one for UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// The cluster domain, `cluster.local`.
    pub cluster_domain: String,
    /// The resolv.conf whose `nameserver`s names outside the cluster domain
    /// are forwarded to (the node's `/etc/resolv.conf`); read again when it
    /// changes.
    pub upstream_resolv_conf: PathBuf,
    /// The TTL of every answer from the cluster domain (whole seconds).
    pub ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([10, 43, 0, 10], 53))],
            cluster_domain: "cluster.local".to_string(),
            upstream_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            ttl: Duration::from_secs(5),
        }
    }
}

/// What starting or running the server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cluster domain {0:?}")]
    InvalidDomain(String),
    #[error("no listen address configured")]
    NoListenAddress,
    #[error("binding udp {addr}: {source}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding tcp {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("dns server stopped: {0}")]
    Serve(String),
    #[error("watching {what} stopped")]
    WatchEnded { what: &'static str },
}

/// Binds `config.listen` and serves until a listener fails: the whole
/// component, as `skiff server` runs it.
pub async fn run(client: kube::Client, config: DnsConfig) -> Result<(), Error> {
    DnsServer::bind(config).await?.run(client).await
}
