//! Keeps the [`Snapshot`] current: one kube watcher on Services and one on
//! EndpointSlices fill reflector stores; after any change (a burst of
//! changes coalesced for a few milliseconds) the snapshot is rebuilt whole
//! and published on a `watch` channel the query handlers read from.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::Error;
use crate::snapshot::{Snapshot, Zone};

/// How long a burst of watch events is gathered before one rebuild.
const COALESCE: Duration = Duration::from_millis(20);

/// Watches, and publishes a new snapshot on `tx` after each change. Returns
/// only if a watch stream ends (it retries errors with backoff itself).
pub(crate) async fn watch(
    client: kube::Client,
    zone: Zone,
    tx: watch::Sender<Arc<Snapshot>>,
) -> Error {
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let services_stream = reflector::reflector(
        services_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let slices_stream = reflector::reflector(
        slices_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    tokio::select! {
        e = drive(services_stream, "services", changed.clone()) => e,
        e = drive(slices_stream, "endpointslices", changed.clone()) => e,
        never = publish(zone, services, slices, changed, tx) => match never {},
    }
}

async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
    changed: Arc<Notify>,
) -> Error {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => warn!(%error, what, "watch failed, retrying"),
        }
    }
    Error::WatchEnded { what }
}

async fn publish(
    zone: Zone,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Snapshot>>,
) -> std::convert::Infallible {
    // A store whose writer is gone is never ready; the select above then
    // returns with the stream's end anyway.
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let mut first = true;
    loop {
        let services = services.state();
        let slices = slices.state();
        let snapshot = Snapshot::build(
            zone.clone(),
            serial(),
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
        );
        if first {
            info!(
                services = snapshot.services.len(),
                "cluster dns synced with the api"
            );
            first = false;
        }
        tx.send_replace(Arc::new(snapshot));
        changed.notified().await;
        tokio::time::sleep(COALESCE).await;
    }
}

/// The SOA serial: the build time in seconds (wrapping in 2106, which
/// serial arithmetic allows).
fn serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or_default()
}
