//! Helpers for skiff components that are Kubernetes API clients (scheduler,
//! controllers, node agents, proxy): building a `kube::Client` from a
//! kubeconfig, leader election through a `coordination.k8s.io/v1` Lease,
//! and the pure matching rules every component shares (label selectors,
//! node selectors, tolerations).
//!
//! Must not depend on the API server or the store: everything here would
//! work against any Kubernetes cluster.

pub mod informer;
pub mod leader;
pub mod quantity;
pub mod selectors;

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// What connecting can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig {path}: {source}")]
    Client {
        path: String,
        #[source]
        source: kube::Error,
    },
}

/// A client for the cluster a kubeconfig file points at (its current
/// context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ConnectError> {
    let p = path.display().to_string();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
        path: p.clone(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ConnectError::Kubeconfig {
            path: p.clone(),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| ConnectError::Client { path: p, source })
}
