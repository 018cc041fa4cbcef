//! Node Leases in `kube-node-lease`: created after registration, then
//! renewed every `lease_renew`, spread evenly over the period (node `i` in
//! slot `i mod slots`) so that N nodes cost a steady N/period renewals per
//! second instead of a burst. Renewals have their own in-flight budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::{Outcome, Shared, Stats, with_retries};

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How often the renewal loop wakes (at most; shorter for short periods).
const TICK: Duration = Duration::from_millis(100);

fn lease(shared: &Shared, i: usize) -> Lease {
    let node = &shared.nodes[i];
    Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: node.uid.get().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_string(),
                    kind: "Node".to_string(),
                    name: node.name.clone(),
                    uid: uid.clone(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.name.clone()),
            lease_duration_seconds: Some(shared.config.lease_duration.as_secs() as i32),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// Creates node `i`'s Lease (an existing one is left to the renewals).
async fn create(shared: &Shared, i: usize) {
    let api: Api<Lease> = Api::namespaced(shared.client.clone(), LEASE_NAMESPACE);
    let result = with_retries(&shared.stats, "create lease", || async {
        let _permit = shared.lease_calls.acquire().await;
        api.create(&PostParams::default(), &lease(shared, i)).await
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(node = %shared.nodes[i].name, error = %e, "creating node lease");
    }
}

pub(crate) async fn create_all(shared: &Arc<Shared>) {
    futures::stream::iter(0..shared.config.count)
        .for_each_concurrent(shared.config.lease_in_flight, |i| create(shared, i))
        .await;
}

/// Renews node `i`'s Lease; re-registers the node and recreates the Lease
/// when it is gone.
async fn renew(shared: &Shared, i: usize) {
    let name = &shared.nodes[i].name;
    let api: Api<Lease> = Api::namespaced(shared.client.clone(), LEASE_NAMESPACE);
    let result = with_retries(&shared.stats, "renew lease", || async {
        let _permit = shared.lease_calls.acquire().await;
        let patch = serde_json::json!({"spec": {
            "holderIdentity": name,
            "renewTime": MicroTime(Timestamp::now()),
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    })
    .await;
    match result {
        Ok(Outcome::Done(_)) => Stats::add(&shared.stats.leases_renewed),
        Ok(Outcome::NotFound) => {
            tracing::info!(node = %name, "node lease gone; registering the node again");
            if let Some(uid) = crate::node::register(shared, i).await {
                let _ = shared.nodes[i].uid.set(uid);
            }
            create(shared, i).await;
        }
        Ok(Outcome::Refused) => {}
        Err(e) => tracing::warn!(node = %name, error = %e, "renewing node lease"),
    }
}

/// The number of slots one renew period is cut into.
pub(crate) fn slots(period: Duration) -> (usize, Duration) {
    let tick = TICK.min(period);
    let slots = (period.as_nanos() / tick.as_nanos().max(1)).max(1) as usize;
    (slots, tick)
}

/// Renews every node's Lease once per `lease_renew`, forever. Each tick
/// starts its slot's renewals without waiting for the previous ones (a
/// slow API server must not stretch the period); a node whose previous
/// renewal is still running is skipped for this round.
pub(crate) async fn renew_loop(shared: Arc<Shared>) {
    let (slots, tick) = slots(shared.config.lease_renew);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0;
    loop {
        interval.tick().await;
        for i in (slot..shared.config.count).step_by(slots) {
            if shared.nodes[i].renewing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                renew(&shared, i).await;
                shared.nodes[i].renewing.store(false, Ordering::Release);
            });
        }
        slot = (slot + 1) % slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_are_spread_over_the_period() {
        let cases = [
            ("ten seconds", Duration::from_secs(10), 100, TICK),
            (
                "shorter than a tick",
                Duration::from_millis(50),
                1,
                Duration::from_millis(50),
            ),
            ("one second", Duration::from_secs(1), 10, TICK),
        ];
        for (case, period, want_slots, want_tick) in cases {
            assert_eq!(slots(period), (want_slots, want_tick), "{case}");
        }
    }
}
