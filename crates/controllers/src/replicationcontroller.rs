//! The ReplicationController controller (core/v1): the ReplicaSet
//! controller's decision ([`crate::replicas`]) over an equality-map
//! selector. A missing or empty selector defaults to the template's labels,
//! as the API server's defaulting does upstream.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ReplicationController, ReplicationControllerStatus};
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

/// What the controller should do for one ReplicationController.
pub type Plan = replicas::Plan<ReplicationControllerStatus>;

/// The pure decision: `pods` are all pods of the controller's namespace.
pub fn plan<P: Borrow<Pod>>(rc: &ReplicationController, pods: &[P], now: Timestamp) -> Plan {
    let Some(spec) = rc.spec.as_ref() else {
        return Plan::default();
    };
    let empty = BTreeMap::new();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&empty);
    let selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
        .unwrap_or(template_labels);
    let target = Target {
        uid: rc.metadata.uid.as_deref().unwrap_or_default(),
        replicas: spec.replicas.unwrap_or(1),
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        selector: PodSelector::Map(selector),
        template_labels,
        deleting: rc.metadata.deletion_timestamp.is_some(),
    };
    let plan = replicas::plan(&target, pods, now);
    let counts = plan.status;
    let old = rc.status.clone().unwrap_or_default();
    plan.with_status(ReplicationControllerStatus {
        replicas: counts.replicas,
        fully_labeled_replicas: Some(counts.fully_labeled),
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        observed_generation: rc.metadata.generation,
        conditions: old.conditions,
    })
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    pods: Informer<Pod>,
    expectations: Expectations,
}

async fn reconcile(rc: Arc<ReplicationController>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_default();
    let name = rc.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = owner_ref("v1", "ReplicationController", &rc.metadata)
        .ok_or_else(|| Error::Invalid(name.clone(), "no uid".into()))?;
    let template = rc.spec.as_ref().and_then(|s| s.template.as_ref());
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
        |all| plan(&rc, all, Timestamp::now()),
    )
    .await?;
    if rc.status.clone().unwrap_or_default() != plan.status {
        let api: Api<ReplicationController> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": plan.status})),
        )
        .await?;
    }
    let mut next = plan
        .recheck_after
        .map_or(ctx.config.resync, |d| d.min(ctx.config.resync));
    if !settled {
        // See the ReplicaSet controller.
        next = next.min(Duration::from_secs(1));
    }
    replicas::pace(cost).await;
    Ok(Action::requeue(next))
}

fn error_policy(rc: Arc<ReplicationController>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(replicationcontroller = %rc.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the ReplicationController controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
        expectations: Expectations::new(),
    });
    Controller::new(
        Api::<ReplicationController>::all(client.clone()),
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
    use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationControllerSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    fn rc(replicas: i32, selector: Option<BTreeMap<String, String>>) -> ReplicationController {
        ReplicationController {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("rc-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(ReplicationControllerSpec {
                replicas: Some(replicas),
                selector,
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels("web")),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn owned(name: &str, app: &str, phase: &str) -> Pod {
        let mut p = pod(name, Some("n"), phase, Some(10));
        p.metadata.labels = Some(labels(app));
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ReplicationController".into(),
            name: "web".into(),
            uid: "rc-uid".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        p
    }

    fn orphan(name: &str, app: &str) -> Pod {
        let mut p = pod(name, Some("n"), "Running", Some(10));
        p.metadata.labels = Some(labels(app));
        p
    }

    #[test]
    fn replication_controllers_keep_replicas_like_replica_sets() {
        let now = Timestamp::from_second(10_000).unwrap();
        struct Case {
            name: &'static str,
            rc: ReplicationController,
            pods: Vec<Pod>,
            create: i32,
            delete: usize,
            adopt: Vec<&'static str>,
            release: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "creates missing pods",
                rc: rc(3, Some(labels("web"))),
                pods: vec![owned("a", "web", "Running")],
                create: 2,
                delete: 0,
                adopt: vec![],
                release: vec![],
            },
            Case {
                name: "replaces failed pods",
                rc: rc(1, Some(labels("web"))),
                pods: vec![owned("f", "web", "Failed")],
                create: 1,
                delete: 0,
                adopt: vec![],
                release: vec![],
            },
            Case {
                name: "scales down",
                rc: rc(1, Some(labels("web"))),
                pods: vec![owned("a", "web", "Running"), owned("b", "web", "Running")],
                create: 0,
                delete: 1,
                adopt: vec![],
                release: vec![],
            },
            Case {
                name: "missing selector defaults to the template labels and adopts",
                rc: rc(2, None),
                pods: vec![owned("a", "web", "Running"), orphan("o", "web")],
                create: 0,
                delete: 0,
                adopt: vec!["o"],
                release: vec![],
            },
            Case {
                name: "releases pods that stopped matching",
                rc: rc(1, Some(labels("web"))),
                pods: vec![owned("a", "web", "Running"), owned("r", "db", "Running")],
                create: 0,
                delete: 0,
                adopt: vec![],
                release: vec!["r"],
            },
        ];
        for c in cases {
            let p = plan(&c.rc, &c.pods, now);
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(p.delete.len(), c.delete, "{}: delete", c.name);
            assert_eq!(p.adopt, c.adopt, "{}: adopt", c.name);
            assert_eq!(p.release, c.release, "{}: release", c.name);
        }
    }

    #[test]
    fn status_reports_ready_available_and_fully_labeled_replicas() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut unlabeled = owned("b", "web", "Running");
        unlabeled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        let pods = vec![owned("a", "web", "Running"), unlabeled, {
            let mut p = owned("c", "web", "Pending");
            p.status.as_mut().unwrap().conditions = None;
            p
        }];
        let p = plan(&rc(3, Some(labels("web"))), &pods, now);
        assert_eq!(p.status.replicas, 3);
        assert_eq!(p.status.ready_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(2));
        assert_eq!(p.status.fully_labeled_replicas, Some(3));
        assert_eq!(p.status.observed_generation, Some(2));
    }
}
