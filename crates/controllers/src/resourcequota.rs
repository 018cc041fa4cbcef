//! The resource quota controller: `status.hard` and `status.used` of every
//! ResourceQuota, from what its namespace holds. Counted: `pods` (pods not
//! in a terminal phase), `requests.cpu`/`cpu`, `requests.memory`/`memory`,
//! `limits.cpu`, `limits.memory` (summed over those pods, each pod's
//! effective request as the scheduler computes it), object counts
//! (`services`, `configmaps`, `secrets`, `persistentvolumeclaims`,
//! `replicationcontrollers`, `resourcequotas`, `services.nodeports`,
//! `services.loadbalancers`, and `count/<resource>[.<group>]` for the
//! common kinds). Quota scopes are not applied (every pod counts).
//! Enforcement at admission is the API server's, not this controller's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::quantity;

use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

struct Context {
    client: kube::Client,
    pods: Informer<Pod>,
}

/// Whether a pod still counts against quota (not Succeeded or Failed).
fn counts(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod's effective `requests` or `limits` of `resource` in milli-units:
/// the larger of the containers' sum and the largest init container.
fn pod_amount(pod: &Pod, field: &str, resource: &str) -> i64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let map = match field {
            "requests" => r.and_then(|r| r.requests.as_ref()),
            _ => r.and_then(|r| r.limits.as_ref()),
        };
        map.and_then(|m| m.get(resource))
            .map(quantity::milli_value)
            .unwrap_or(0)
    };
    let sum: i64 = spec.containers.iter().map(of).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(of)
        .max()
        .unwrap_or(0);
    sum.max(init)
}

/// Renders milli-units as Kubernetes prints them: cores or `Nm` for cpu,
/// binary suffixes for exact memory multiples, plain numbers otherwise.
fn render(resource: &str, milli: i64) -> Quantity {
    let cpu = resource.ends_with("cpu");
    if cpu {
        return Quantity(if milli % 1000 == 0 {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        });
    }
    let value = (milli + 999) / 1000;
    for (suffix, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if value != 0 && value % size == 0 {
            return Quantity(format!("{}{suffix}", value / size));
        }
    }
    Quantity(value.to_string())
}

/// What a namespace holds, as the quota counts it.
#[derive(Debug, Default)]
pub struct Usage {
    pub pods: Vec<Arc<Pod>>,
    /// Object counts by quota resource name.
    pub counts: BTreeMap<String, i64>,
}

/// The pure decision: `status.used` for each resource in `hard`.
pub fn used(hard: &BTreeMap<String, Quantity>, usage: &Usage) -> BTreeMap<String, Quantity> {
    let live: Vec<&Pod> = usage
        .pods
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| counts(p))
        .collect();
    hard.keys()
        .filter_map(|name| {
            let q = match name.as_str() {
                "pods" | "count/pods" => Quantity(live.len().to_string()),
                "cpu" | "requests.cpu" => render(
                    "cpu",
                    live.iter().map(|p| pod_amount(p, "requests", "cpu")).sum(),
                ),
                "memory" | "requests.memory" => render(
                    "memory",
                    live.iter()
                        .map(|p| pod_amount(p, "requests", "memory"))
                        .sum(),
                ),
                "limits.cpu" => render(
                    "cpu",
                    live.iter().map(|p| pod_amount(p, "limits", "cpu")).sum(),
                ),
                "limits.memory" => render(
                    "memory",
                    live.iter().map(|p| pod_amount(p, "limits", "memory")).sum(),
                ),
                other => Quantity(usage.counts.get(other)?.to_string()),
            };
            Some((name.clone(), q))
        })
        .collect()
}

async fn count<K>(client: &kube::Client, ns: &str) -> Result<i64, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api.list_metadata(&ListParams::default()).await?.items.len() as i64)
}

async fn observe(
    client: &kube::Client,
    pods: &Informer<Pod>,
    ns: &str,
    hard: &BTreeMap<String, Quantity>,
) -> Result<Usage, Error> {
    let mut usage = Usage::default();
    let wants_pods = hard.keys().any(|k| {
        matches!(
            k.as_str(),
            "pods"
                | "count/pods"
                | "cpu"
                | "memory"
                | "requests.cpu"
                | "requests.memory"
                | "limits.cpu"
                | "limits.memory"
        )
    });
    if wants_pods {
        usage.pods = pods.list_namespace(ns);
    }
    for name in hard.keys() {
        let n = match name.as_str() {
            "services" | "count/services" => count::<Service>(client, ns).await?,
            "configmaps" | "count/configmaps" => count::<ConfigMap>(client, ns).await?,
            "secrets" | "count/secrets" => count::<Secret>(client, ns).await?,
            "persistentvolumeclaims" | "count/persistentvolumeclaims" => {
                count::<PersistentVolumeClaim>(client, ns).await?
            }
            "replicationcontrollers" | "count/replicationcontrollers" => {
                count::<ReplicationController>(client, ns).await?
            }
            "resourcequotas" | "count/resourcequotas" => count::<ResourceQuota>(client, ns).await?,
            "count/deployments.apps" => count::<Deployment>(client, ns).await?,
            "count/replicasets.apps" => count::<ReplicaSet>(client, ns).await?,
            "count/statefulsets.apps" => count::<StatefulSet>(client, ns).await?,
            "count/daemonsets.apps" => count::<DaemonSet>(client, ns).await?,
            "count/jobs.batch" => count::<Job>(client, ns).await?,
            "count/cronjobs.batch" => count::<CronJob>(client, ns).await?,
            "services.nodeports" | "services.loadbalancers" => {
                let want = if name == "services.nodeports" {
                    "NodePort"
                } else {
                    "LoadBalancer"
                };
                Api::<Service>::namespaced(client.clone(), ns)
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some(want))
                    .count() as i64
            }
            _ => continue,
        };
        usage.counts.insert(name.clone(), n);
    }
    Ok(usage)
}

async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = quota.namespace().unwrap_or_default();
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let usage = observe(&ctx.client, &ctx.pods, &ns, &hard).await?;
    let used = used(&hard, &usage);
    let current = quota.status.as_ref();
    if current.and_then(|s| s.hard.as_ref()) != Some(&hard)
        || current.and_then(|s| s.used.as_ref()) != Some(&used)
    {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"hard": hard, "used": used}});
        api.patch_status(
            &quota.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

fn error_policy(quota: Arc<ResourceQuota>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(quota = %quota.name_any(), error = %err, "resource quota reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller: quotas, re-counted when their namespace's pods change
/// and every 30 s for the object counts.
pub async fn run(client: kube::Client, _config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: informers.pods.clone(),
    });
    let controller = Controller::new(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    );
    let quotas = controller.store();
    controller
        .watches_shared_stream(informers.pods.subscribe(), move |pod| {
            let ns = pod.namespace();
            quotas
                .state()
                .into_iter()
                .filter(|q| q.namespace() == ns)
                .map(|q| ObjectRef::from_obj(&*q))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, cpu: &str, mem: &str) -> Pod {
        serde_json::from_value(json!({
            "spec": {"containers": [{"name": "c", "resources": {
                "requests": {"cpu": cpu, "memory": mem},
                "limits": {"memory": mem}
            }}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn usage_counts_live_pods_and_sums_their_requests() {
        let hard: BTreeMap<String, Quantity> = [
            "pods",
            "requests.cpu",
            "requests.memory",
            "limits.memory",
            "configmaps",
        ]
        .iter()
        .map(|k| (k.to_string(), Quantity("10".into())))
        .collect();
        let usage = Usage {
            pods: vec![
                pod("Running", "250m", "64Mi"),
                pod("Pending", "750m", "64Mi"),
                pod("Succeeded", "4", "1Gi"),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
            counts: BTreeMap::from([("configmaps".to_string(), 3)]),
        };
        let used = used(&hard, &usage);
        assert_eq!(used["pods"], Quantity("2".into()));
        assert_eq!(used["requests.cpu"], Quantity("1".into()));
        assert_eq!(used["requests.memory"], Quantity("128Mi".into()));
        assert_eq!(used["limits.memory"], Quantity("128Mi".into()));
        assert_eq!(used["configmaps"], Quantity("3".into()));
    }

    #[test]
    fn quantities_render_like_kubernetes() {
        assert_eq!(render("cpu", 1500), Quantity("1500m".into()));
        assert_eq!(render("cpu", 2000), Quantity("2".into()));
        assert_eq!(
            render("memory", 1536 * 1024 * 1000),
            Quantity("1536Ki".into())
        );
        assert_eq!(render("memory", 1000 * 1000), Quantity("1000".into()));
        assert_eq!(render("memory", 0), Quantity("0".into()));
    }
}
