//! The disruption controller: the status of each PodDisruptionBudget
//! (policy/v1) — `currentHealthy`, `desiredHealthy`, `expectedPods`,
//! `disruptionsAllowed` and the `DisruptionAllowed` condition — from the
//! pods its selector picks, which the API server's eviction endpoint then
//! honours. `minAvailable` as a number counts the selected pods;
//! percentages and `maxUnavailable` are taken against the scale of the
//! pods' controllers (ReplicaSet — or its Deployment —,
//! ReplicationController, StatefulSet), as upstream does. `disruptedPods`
//! entries written by the eviction endpoint are dropped once the pod is
//! gone or after two minutes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::deployment::resolve;
use crate::pods::{controller_ref, is_ready};
use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

/// How long an eviction's `disruptedPods` entry is kept (upstream).
pub const DISRUPTED_POD_TIMEOUT: i64 = 120;

/// The pods a budget selects: policy/v1 selects nothing with no selector,
/// everything in the namespace with an empty one.
pub fn selected<'a, P: Borrow<Pod>>(pdb: &PodDisruptionBudget, pods: &'a [P]) -> Vec<&'a Pod> {
    let empty = BTreeMap::new();
    let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
    pods.iter()
        .map(Borrow::borrow)
        .filter(|p| {
            skiff_client::selectors::label_selector_matches(
                selector,
                p.metadata.labels.as_ref().unwrap_or(&empty),
            )
        })
        .collect()
}

/// The pure decision: `pods` are the selected pods, `scale` the summed
/// replicas of their controllers (`None` when some pod has none, which
/// only matters for percentages and `maxUnavailable`).
pub fn status(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scale: Option<i32>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let spec = pdb.spec.clone().unwrap_or_default();
    let old = pdb.status.clone().unwrap_or_default();
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let disrupted: BTreeMap<String, Time> = old
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            names.contains(name) && now.as_second() - at.0.as_second() < DISRUPTED_POD_TIMEOUT
        })
        .collect();
    let current_healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !disrupted.contains_key(&p.name_any())
                && is_ready(p)
        })
        .count() as i32;

    let (expected, desired, error) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => (pods.len() as i32, *n, None),
        (Some(pct @ IntOrString::String(_)), _) => match scale {
            Some(s) => (s, resolve(Some(pct), 0, s, true), None),
            None => (0, 0, Some("pods without a scalable controller")),
        },
        (None, Some(mu)) => match scale {
            Some(s) => (s, (s - resolve(Some(mu), 0, s, true)).max(0), None),
            None => (0, 0, Some("pods without a scalable controller")),
        },
        // Neither: minAvailable defaults to 1 upstream.
        (None, None) => (pods.len() as i32, 1, None),
    };
    let mut allowed = current_healthy - desired;
    if expected <= 0 || allowed < 0 || error.is_some() {
        allowed = 0;
    }
    let (cstatus, reason, message) = match error {
        Some(e) => ("False", "SyncFailed", e.to_string()),
        None if allowed > 0 => ("True", "SufficientPods", String::new()),
        None => ("False", "InsufficientPods", String::new()),
    };
    let mut conditions: Vec<Condition> = old.conditions.clone().unwrap_or_default();
    let same = conditions
        .iter()
        .any(|c| c.type_ == "DisruptionAllowed" && c.status == cstatus && c.reason == reason);
    if !same {
        conditions.retain(|c| c.type_ != "DisruptionAllowed");
        conditions.push(Condition {
            type_: "DisruptionAllowed".into(),
            status: cstatus.into(),
            reason: reason.into(),
            message,
            last_transition_time: Time(now),
            observed_generation: pdb.metadata.generation,
        });
    }
    PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: Some(conditions),
    }
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    pods: Informer<Pod>,
}

/// The summed replicas of the pods' controllers; `None` if a pod has no
/// controller of a scalable kind.
async fn scale_of(client: &kube::Client, ns: &str, pods: &[&Pod]) -> Result<Option<i32>, Error> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let Some(owner) = controller_ref(&pod.metadata) else {
            return Ok(None);
        };
        if !seen.insert(owner.uid.clone()) {
            continue;
        }
        let replicas = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get_opt(&owner.name)
                    .await?;
                let deployment = rs
                    .as_ref()
                    .and_then(|rs| controller_ref(&rs.metadata))
                    .filter(|o| o.kind == "Deployment");
                match deployment {
                    Some(d) => {
                        if !seen.insert(d.uid.clone()) {
                            continue;
                        }
                        Api::<Deployment>::namespaced(client.clone(), ns)
                            .get_opt(&d.name)
                            .await?
                            .and_then(|d| d.spec?.replicas)
                    }
                    None => rs.and_then(|rs| rs.spec?.replicas),
                }
            }
            "ReplicationController" => Api::<ReplicationController>::namespaced(client.clone(), ns)
                .get_opt(&owner.name)
                .await?
                .and_then(|rc| rc.spec?.replicas),
            "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&owner.name)
                .await?
                .and_then(|s| s.spec?.replicas),
            _ => return Ok(None),
        };
        total += replicas.unwrap_or(1);
    }
    Ok(Some(total))
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let all = ctx.pods.list_namespace(&ns);
    let pods = selected(&pdb, &all);
    let scale = scale_of(&ctx.client, &ns, &pods).await?;
    let status = status(&pdb, &pods, scale, Timestamp::now());
    if pdb.status.as_ref() != Some(&status) {
        let mut body = serde_json::to_value(&status)?;
        // A merge patch must clear disruptedPods explicitly.
        if status.disrupted_pods.is_none()
            && let Some(m) = body.as_object_mut()
        {
            m.insert("disruptedPods".into(), serde_json::Value::Null);
        }
        Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": body })),
            )
            .await?;
    }
    // Look again when a disrupted-pod entry expires.
    let next = if status.disrupted_pods.is_some() {
        Duration::from_secs(DISRUPTED_POD_TIMEOUT as u64).min(ctx.config.resync)
    } else {
        ctx.config.resync
    };
    Ok(Action::requeue(next))
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(poddisruptionbudget = %pdb.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the disruption controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        pods: informers.pods.clone(),
    });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    controller
        // Any pod change may change any budget of its namespace.
        .watches_shared_stream(informers.pods.subscribe(), move |pod| {
            let ns = pod.namespace();
            budgets
                .state()
                .into_iter()
                .filter(|b| b.namespace() == ns)
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("b".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector::default()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn disruptions_allowed_follow_min_available_and_max_unavailable() {
        let now = Timestamp::from_second(10_000).unwrap();
        let ready = |n: &str| pod(n, Some("n"), "Running", Some(1));
        let pods = [
            ready("a"),
            ready("b"),
            ready("c"),
            pod("d", Some("n"), "Pending", None),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        // (name, budget, scale, expected, desired, allowed)
        let cases = [
            (
                "minAvailable 2 of 3 healthy",
                pdb(Some(int(2)), None),
                Some(4),
                4,
                2,
                1,
            ),
            (
                "minAvailable 3 of 3 healthy",
                pdb(Some(int(3)), None),
                Some(4),
                4,
                3,
                0,
            ),
            (
                "minAvailable 50% rounds up",
                pdb(Some(pct("50%")), None),
                Some(5),
                5,
                3,
                0,
            ),
            (
                "maxUnavailable 1 of scale 4",
                pdb(None, Some(int(1))),
                Some(4),
                4,
                3,
                0,
            ),
            (
                "maxUnavailable 2 of scale 4",
                pdb(None, Some(int(2))),
                Some(4),
                4,
                2,
                1,
            ),
            (
                "maxUnavailable without controllers",
                pdb(None, Some(int(1))),
                None,
                0,
                0,
                0,
            ),
        ];
        for (name, b, scale, expected, desired, allowed) in cases {
            let s = status(&b, &refs, scale, now);
            assert_eq!(s.current_healthy, 3, "{name}");
            assert_eq!(
                (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
                (expected, desired, allowed),
                "{name}"
            );
            let c = s.conditions.unwrap();
            assert_eq!(c[0].type_, "DisruptionAllowed");
            assert_eq!(
                c[0].status,
                if allowed > 0 { "True" } else { "False" },
                "{name}"
            );
            assert_eq!(s.observed_generation, Some(2));
        }
    }

    #[test]
    fn pods_being_evicted_do_not_count_until_their_entry_expires() {
        let now = Timestamp::from_second(10_000).unwrap();
        let pods = [
            pod("a", Some("n"), "Running", Some(1)),
            pod("b", Some("n"), "Running", Some(1)),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut b = pdb(Some(IntOrString::Int(1)), None);
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(
                [
                    (
                        "a".to_string(),
                        Time(Timestamp::from_second(9_990).unwrap()),
                    ),
                    (
                        "gone".to_string(),
                        Time(Timestamp::from_second(9_990).unwrap()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        });
        let s = status(&b, &refs, None, now);
        assert_eq!((s.current_healthy, s.disruptions_allowed), (1, 0));
        assert_eq!(s.disrupted_pods.map(|d| d.len()), Some(1));
        let later = Timestamp::from_second(10_200).unwrap();
        let s = status(&b, &refs, None, later);
        assert_eq!((s.current_healthy, s.disruptions_allowed), (2, 1));
        assert!(s.disrupted_pods.is_none());
    }
}
