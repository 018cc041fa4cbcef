//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the
//! selector, owned through `ownerReferences`; adopts matching orphans,
//! releases owned pods that stopped matching, replaces failed and deleted
//! pods, deletes the cheapest pods first on scale-down, and reports status.
//! The decision is shared with the ReplicationController controller
//! ([`crate::replicas`]).

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::informer::Informer;

use crate::expectations::Expectations;
use crate::pods::owner_ref;
use crate::replicas::{self, PodSelector, Target};
use crate::{ControllerConfig, Error, Informers};

/// What the controller should do for one ReplicaSet.
pub type Plan = replicas::Plan<ReplicaSetStatus>;

/// The pure decision: `pods` are all pods of the ReplicaSet's namespace.
pub fn plan<P: Borrow<Pod>>(rs: &ReplicaSet, pods: &[P], now: Timestamp) -> Plan {
    let Some(spec) = rs.spec.as_ref() else {
        return Plan::default();
    };
    let empty = Default::default();
    let target = Target {
        uid: rs.metadata.uid.as_deref().unwrap_or_default(),
        replicas: spec.replicas.unwrap_or(1),
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        selector: PodSelector::Label(&spec.selector),
        template_labels: spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .unwrap_or(&empty),
        deleting: rs.metadata.deletion_timestamp.is_some(),
    };
    let plan = replicas::plan(&target, pods, now);
    let counts = plan.status;
    let old = rs.status.clone().unwrap_or_default();
    plan.with_status(ReplicaSetStatus {
        replicas: counts.replicas,
        fully_labeled_replicas: Some(counts.fully_labeled),
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions,
        ..Default::default()
    })
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    pods: Informer<Pod>,
    expectations: Expectations,
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = owner_ref("apps/v1", "ReplicaSet", &rs.metadata)
        .ok_or_else(|| Error::Invalid(name.clone(), "no uid".into()))?;
    let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
    let replicas::Synced {
        plan,
        settled,
        cost,
    } = replicas::sync(
        &ctx.pods,
        &ctx.expectations,
        &pods,
        &owner,
        &ns,
        template,
        |all| plan(&rs, all, Timestamp::now()),
    )
    .await?;

    let current = rs.status.clone().unwrap_or_default();
    if current != plan.status {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": plan.status});
        rs_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let mut next = ctx.config.resync;
    if let Some(d) = plan.recheck_after {
        next = next.min(d);
    }
    if !settled {
        // Its own writes are not in the cache yet; their events trigger
        // this again, and this bounds the wait should one be lost.
        next = next.min(Duration::from_secs(1));
    }
    replicas::pace(cost).await;
    Ok(Action::requeue(next))
}

fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(replicaset = %rs.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the ReplicaSet controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
        expectations: Expectations::new(),
    });
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.pods.subscribe())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ObjectMeta, OwnerReference,
    };
    use std::collections::BTreeMap;

    fn rs(replicas: i32) -> ReplicaSet {
        let labels: BTreeMap<_, _> = [("app".to_string(), "web".to_string())].into();
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("rs-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn owned(mut p: Pod, uid: &str) -> Pod {
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "x".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        p
    }

    fn labelled(mut p: Pod) -> Pod {
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    }

    /// (name, replica set, pods, create, delete, adopt, release)
    type Case = (
        &'static str,
        ReplicaSet,
        Vec<Pod>,
        i32,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
    );

    #[test]
    fn plans_keep_the_declared_replicas() {
        let now = Timestamp::from_second(10_000).unwrap();
        let running = |n: &str| owned(pod(n, Some("node"), "Running", Some(10)), "rs-uid");
        let cases: Vec<Case> = vec![
            (
                "creates missing pods",
                rs(3),
                vec![running("a")],
                2,
                vec![],
                vec![],
                vec![],
            ),
            (
                "replaces failed pods",
                rs(2),
                vec![
                    running("a"),
                    owned(pod("f", Some("node"), "Failed", None), "rs-uid"),
                ],
                1,
                vec![],
                vec![],
                vec![],
            ),
            (
                "deletes unscheduled pods first on scale-down",
                rs(1),
                vec![
                    running("a"),
                    owned(pod("u", None, "Pending", None), "rs-uid"),
                ],
                0,
                vec!["u"],
                vec![],
                vec![],
            ),
            (
                "picks the cheapest pods of many on scale-down, in order",
                rs(2),
                vec![
                    running("a"),
                    owned(pod("r", Some("node"), "Running", Some(20)), "rs-uid"),
                    owned(pod("u", None, "Pending", None), "rs-uid"),
                    running("c"),
                    owned(pod("p", Some("node"), "Pending", None), "rs-uid"),
                ],
                0,
                vec!["u", "p", "r"],
                vec![],
                vec![],
            ),
            (
                "adopts matching orphans",
                rs(2),
                vec![
                    running("a"),
                    labelled(pod("o", Some("node"), "Running", Some(10))),
                ],
                0,
                vec![],
                vec!["o"],
                vec![],
            ),
            (
                "ignores pods of other controllers",
                rs(1),
                vec![owned(pod("x", Some("node"), "Running", Some(10)), "other")],
                1,
                vec![],
                vec![],
                vec![],
            ),
            (
                "releases owned pods that stopped matching",
                rs(1),
                vec![running("a"), {
                    let mut p = running("r");
                    p.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
                    p
                }],
                0,
                vec![],
                vec![],
                vec!["r"],
            ),
        ];
        for (name, rs, pods, create, delete, adopt, release) in cases {
            let p = plan(&rs, &pods, now);
            assert_eq!(p.create, create, "{name}: create");
            assert_eq!(p.delete, delete, "{name}: delete");
            assert_eq!(p.adopt, adopt, "{name}: adopt");
            assert_eq!(p.release, release, "{name}: release");
        }
    }

    #[test]
    fn status_counts_ready_and_available_pods() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut set = rs(3);
        set.spec.as_mut().unwrap().min_ready_seconds = Some(60);
        let pods = vec![
            owned(pod("old", Some("n"), "Running", Some(100)), "rs-uid"),
            owned(pod("fresh", Some("n"), "Running", Some(9_990)), "rs-uid"),
            owned(pod("starting", Some("n"), "Pending", None), "rs-uid"),
        ];
        let p = plan(&set, &pods, now);
        assert_eq!(p.status.replicas, 3);
        assert_eq!(p.status.ready_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(1));
        assert_eq!(p.status.observed_generation, Some(3));
        assert!(p.recheck_after.is_some());
    }
}
