//! The pod subresources that are requests rather than views:
//!
//! - `pods/<name>/binding` (and the `bindings` collection): assigns a pod to
//!   a node, as the scheduler does. Mirrors Kubernetes' `BindingREST`:
//!   `spec.nodeName` is set only when empty, the binding's annotations are
//!   copied, and the `PodScheduled=True` condition is added.
//! - `pods/<name>/eviction`: deletes a pod within its PodDisruptionBudget,
//!   as `kubectl drain` asks. Mirrors Kubernetes' `EvictionREST`.
//!
//! Both answer `201` with a Success Status.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skiff_store::{Error as StoreError, KeyValue};

use crate::AppState;
use crate::deletion::{self, DeleteOptions};
use crate::error::{ApiError, ApiResult, FieldError, GroupResource};
use crate::registry::{self, Params};
use crate::resources::{self, ResourceDef};
use crate::selector::labels_of;

/// Evictions refuse when a budget already records this many disrupted pods
/// that its controller has not confirmed (`MaxDisruptedPodSize`).
const MAX_DISRUPTED_PODS: usize = 2000;

const VIOLATES_BUDGET: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn pods_def() -> &'static ResourceDef {
    resources::find("", "v1", "pods").unwrap_or(&resources::RESOURCES[0])
}

fn pdbs_def() -> &'static ResourceDef {
    resources::find("policy", "v1", "poddisruptionbudgets").unwrap_or(&resources::RESOURCES[0])
}

/// The Success Status a create of a binding or eviction answers.
fn created_status() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    })
}

fn parse_body(bytes: &[u8], kinds: &[(&str, &str)]) -> ApiResult<Value> {
    let obj: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A body without type information takes the endpoint's, as Kubernetes'
    // decoder defaults it.
    let untyped = api_version.is_empty() && kind.is_empty();
    if !untyped && !kinds.contains(&(api_version, kind)) {
        let (want_version, want_kind) = kinds.first().copied().unwrap_or_default();
        return Err(ApiError::BadRequest(format!(
            "the body of the request must be a {want_version} {want_kind}, got {api_version:?} {kind:?}"
        )));
    }
    Ok(obj)
}

/// `POST pods/<name>/binding` and `POST pods/<name>/eviction`.
pub async fn subresource_create(
    state: &AppState,
    sub: resources::Subresource,
    ns: &str,
    name: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = registry::read_body(headers, body).await?;
    let dry_run = params.dry_run()?;
    match sub {
        resources::Subresource::Binding => {
            let binding = parse_body(&bytes, &[("v1", "Binding")])?;
            bind(state, ns, Some(name), &binding, dry_run).await?;
        }
        resources::Subresource::Eviction => {
            let eviction = parse_body(
                &bytes,
                &[("policy/v1", "Eviction"), ("policy/v1beta1", "Eviction")],
            )?;
            evict(state, ns, name, &eviction, dry_run).await?;
        }
        _ => return Err(ApiError::MethodNotAllowed),
    }
    Ok(crate::json_response(StatusCode::CREATED, &created_status()))
}

/// `POST /api/v1/namespaces/<ns>/bindings`.
pub async fn bindings_request(state: &AppState, ns: &str, req: Request) -> Response {
    let result = async {
        if req.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let params: Params = axum::extract::Query::try_from_uri(req.uri())
            .map_err(|e| ApiError::BadRequest(e.body_text()))?
            .0;
        let dry_run = params.dry_run()?;
        let (parts, body) = req.into_parts();
        let bytes = registry::read_body(&parts.headers, body).await?;
        let binding = parse_body(&bytes, &[("v1", "Binding")])?;
        bind(state, ns, None, &binding, dry_run).await?;
        Ok(crate::json_response(StatusCode::CREATED, &created_status()))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `ValidatePodBinding` plus the name checks of `BindingREST.Create`;
/// returns the pod's name and the node's.
fn validate_binding(
    ns: &str,
    url_name: Option<&str>,
    binding: &Value,
) -> ApiResult<(String, String)> {
    let name = registry::meta(binding, "name").unwrap_or_default();
    if let Some(url_name) = url_name
        && url_name != name
    {
        return Err(ApiError::BadRequest(
            "name in URL does not match name in Binding object".into(),
        ));
    }
    if registry::meta(binding, "namespace").is_some_and(|n| !n.is_empty() && n != ns) {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    let kind = binding
        .pointer("/target/kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(FieldError::required("metadata.name", ""));
    }
    if !kind.is_empty() && kind != "Node" {
        causes.push(FieldError::invalid(
            "target.kind",
            kind,
            "must be empty or 'Node'",
        ));
    }
    if node.is_empty() {
        causes.push(FieldError::required("target.name", ""));
    }
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            group: String::new(),
            name,
            causes,
        });
    }
    Ok((name, node.to_string()))
}

/// Sets or refreshes a pod condition as `podutil.UpdatePodCondition` does:
/// `lastTransitionTime` changes only when the status does.
fn set_condition(pod: &mut Value, condition: Value, now: &str) {
    let Some(map) = pod.as_object_mut() else {
        return;
    };
    let status = map.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let mut condition = condition;
    match list.iter_mut().find(|c| c["type"] == condition["type"]) {
        Some(existing) => {
            let transition = if existing["status"] == condition["status"] {
                existing
                    .get("lastTransitionTime")
                    .cloned()
                    .unwrap_or(json!(now))
            } else {
                json!(now)
            };
            condition["lastTransitionTime"] = transition;
            condition["lastProbeTime"] = existing
                .get("lastProbeTime")
                .cloned()
                .unwrap_or(Value::Null);
            *existing = condition;
        }
        None => {
            condition["lastTransitionTime"] = json!(now);
            condition["lastProbeTime"] = Value::Null;
            list.push(condition);
        }
    }
}

/// The pod after binding it to `node`, or why it cannot be bound.
fn bound_pod(
    pod: &Value,
    node: &str,
    annotations: Option<&Value>,
    now: &str,
) -> Result<Value, String> {
    let name = registry::meta(pod, "name").unwrap_or_default();
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        ));
    }
    let current = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !current.is_empty() {
        return Err(format!(
            "pod {name} is already assigned to node {}",
            json!(current)
        ));
    }
    if pod
        .pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
    {
        return Err(format!("pod {name} has non-empty .spec.schedulingGates"));
    }
    let mut pod = pod.clone();
    if let Some(map) = pod.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("nodeName".into(), json!(node));
        }
    }
    if let Some(Value::Object(extra)) = annotations {
        let m = registry::meta_mut(&mut pod);
        let slot = m.entry("annotations").or_insert_with(|| json!({}));
        if let Some(existing) = slot.as_object_mut() {
            for (k, v) in extra {
                existing.insert(k.clone(), v.clone());
            }
        }
    }
    set_condition(
        &mut pod,
        json!({"type": "PodScheduled", "status": "True"}),
        now,
    );
    Ok(pod)
}

/// `BindingREST.Create`: assigns pod `metadata.name` of `binding` to
/// `target.name`.
pub async fn bind(
    state: &AppState,
    ns: &str,
    url_name: Option<&str>,
    binding: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let (name, node) = validate_binding(ns, url_name, binding)?;
    let def = pods_def();
    let preconditions = deletion::Preconditions {
        uid: registry::meta(binding, "uid"),
        resource_version: registry::meta(binding, "resourceVersion"),
    };
    let key = registry::key_of(def, Some(ns), &name);
    loop {
        let current = state
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| registry::not_found(def, &name))?;
        let pod = registry::present_kv(def, &current)?;
        deletion::check_preconditions(def, &name, &pod, Some(&preconditions))?;
        let bound = bound_pod(
            &pod,
            &node,
            binding.pointer("/metadata/annotations"),
            &registry::now_rfc3339(),
        )
        .map_err(|detail| ApiError::Conflict {
            resource: GroupResource {
                group: String::new(),
                resource: "pods/binding".into(),
            },
            name: name.clone(),
            detail,
        })?;
        if dry_run {
            return Ok(());
        }
        match state
            .store()
            .update(
                &key,
                registry::encode(&bound)?,
                current.mod_revision,
                registry::put_options(def),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `canIgnorePDB`: evicting a pod that is finished, not yet running or
/// already being deleted disrupts nothing.
fn can_ignore_budget(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed" | "Pending")
    ) || pod.pointer("/metadata/deletionTimestamp").is_some()
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// A `metav1.LabelSelector` applied to `labels`; an empty or nil selector
/// selects nothing (as the eviction code treats PDB selectors).
fn budget_selects(selector: Option<&Value>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector.filter(|s| s.is_object()) else {
        return false;
    };
    let match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if match_labels.is_empty() && expressions.is_empty() {
        return false;
    }
    let labels_ok = match_labels
        .iter()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions_ok = expressions.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let value = labels.get(key).map(String::as_str);
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// What the budget says about one more disruption (`checkAndDecrement`):
/// the budget's new status, or the error to answer.
fn decrement(budget: &Value, pod_name: &str, now: &str) -> ApiResult<Value> {
    let name = registry::meta(budget, "name").unwrap_or_default();
    let int = |path: &str| budget.pointer(path).and_then(Value::as_i64).unwrap_or(0);
    if int("/status/observedGeneration") < int("/metadata/generation") {
        return Err(ApiError::TooManyRequests {
            message: VIOLATES_BUDGET.into(),
            retry_after_seconds: 10,
            cause: Some(format!(
                "The disruption budget {name} is still being processed by the server."
            )),
        });
    }
    let allowed = int("/status/disruptionsAllowed");
    let forbidden = |detail: &str| ApiError::Forbidden {
        resource: GroupResource {
            group: "policy".into(),
            resource: "poddisruptionbudget".into(),
        },
        name: name.clone(),
        detail: detail.into(),
    };
    if allowed < 0 {
        return Err(forbidden("pdb disruptions allowed is negative"));
    }
    let disrupted = budget
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len);
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(ApiError::TooManyRequests {
            message: VIOLATES_BUDGET.into(),
            retry_after_seconds: 0,
            cause: Some(format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                int("/status/desiredHealthy"),
                int("/status/currentHealthy")
            )),
        });
    }
    let mut budget = budget.clone();
    let observed = int("/status/observedGeneration");
    if let Some(status) = budget.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("disruptionsAllowed".into(), json!(allowed - 1));
        let pods = status.entry("disruptedPods").or_insert_with(|| json!({}));
        if !pods.is_object() {
            *pods = json!({});
        }
        if let Some(pods) = pods.as_object_mut() {
            pods.insert(pod_name.into(), json!(now));
        }
        if allowed - 1 == 0 {
            let condition = json!({
                "type": "DisruptionAllowed",
                "status": "False",
                "reason": "InsufficientPods",
                "message": "",
                "observedGeneration": observed,
                "lastTransitionTime": now,
            });
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                match list.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
                    Some(existing) if existing["status"] == "False" => {}
                    Some(existing) => *existing = condition,
                    None => list.push(condition),
                }
            }
        }
    }
    Ok(budget)
}

/// The budgets of namespace `ns` that select `pod`.
async fn budgets_of(state: &AppState, ns: &str, pod: &Value) -> ApiResult<Vec<KeyValue>> {
    let def = pdbs_def();
    let labels = labels_of(pod);
    let page = state
        .store()
        .list(
            &def.key_prefix(Some(ns)),
            skiff_store::ListOptions::default(),
        )
        .await?;
    let mut out = Vec::new();
    for kv in page.items {
        let budget = registry::present_kv(def, &kv)?;
        if budget_selects(budget.pointer("/spec/selector"), &labels) {
            out.push(kv);
        }
    }
    Ok(out)
}

/// Marks the pod with the `DisruptionTarget` condition, then deletes it
/// with `opts` (`addConditionAndDeletePod`).
async fn mark_and_delete(
    state: &AppState,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> ApiResult<()> {
    let def = pods_def();
    let mut opts = opts.clone();
    if !dry_run {
        let key = registry::key_of(def, Some(ns), name);
        loop {
            let current = state
                .store()
                .get(&key)
                .await?
                .ok_or_else(|| registry::not_found(def, name))?;
            let mut pod = registry::present_kv(def, &current)?;
            deletion::check_preconditions(def, name, &pod, opts.preconditions.as_ref())?;
            set_condition(
                &mut pod,
                json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}),
                &registry::now_rfc3339(),
            );
            match state
                .store()
                .update(
                    &key,
                    registry::encode(&pod)?,
                    current.mod_revision,
                    registry::put_options(def),
                )
                .await
            {
                Ok(kv) => {
                    // The precondition was ours to check; the write moved
                    // the version on.
                    if let Some(pre) = opts.preconditions.as_mut()
                        && pre
                            .resource_version
                            .as_deref()
                            .is_some_and(|r| !r.is_empty())
                    {
                        pre.resource_version = Some(kv.mod_revision.to_string());
                    }
                    break;
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    deletion::delete(state, def, Some(ns), name, &opts, dry_run).await?;
    Ok(())
}

fn with_resource_version(opts: &DeleteOptions, rv: String) -> DeleteOptions {
    let mut opts = opts.clone();
    let pre = opts.preconditions.get_or_insert_with(Default::default);
    pre.resource_version = Some(rv);
    opts
}

/// `EvictionREST.Create`.
pub async fn evict(
    state: &AppState,
    ns: &str,
    url_name: &str,
    eviction: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    if registry::meta(eviction, "name").as_deref() != Some(url_name) {
        return Err(ApiError::BadRequest(
            "name in URL does not match name in Eviction object".into(),
        ));
    }
    let opts: DeleteOptions = match eviction.get("deleteOptions") {
        Some(v) if !v.is_null() => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::BadRequest(format!("decoding deleteOptions: {e}")))?,
        _ => DeleteOptions::default(),
    };
    opts.validate()?;
    let dry_run = dry_run || opts.is_dry_run();
    let pods = pods_def();
    let client_rv = opts
        .preconditions
        .as_ref()
        .and_then(|p| p.resource_version.clone())
        .filter(|r| !r.is_empty());
    let pod = registry::get(state, pods, Some(ns), url_name).await?;
    if can_ignore_budget(&pod) {
        // A pod that disrupts nothing is deleted as it was read, unless the
        // client named its own version.
        let opts = match &client_rv {
            Some(_) => opts,
            None => with_resource_version(
                &opts,
                registry::meta(&pod, "resourceVersion").unwrap_or_default(),
            ),
        };
        return match mark_and_delete(state, ns, url_name, &opts, dry_run).await {
            Err(ApiError::Conflict { .. }) if client_rv.is_none() => {
                // The pod changed since: decide again.
                Box::pin(evict(state, ns, url_name, eviction, dry_run)).await
            }
            other => other,
        };
    }
    let budgets = budgets_of(state, ns, &pod).await?;
    let mut guard_version = false;
    match budgets.as_slice() {
        [] => {}
        [_, _, ..] => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
        [budget_kv] => {
            let budget_def = pdbs_def();
            let budget = registry::present_kv(budget_def, budget_kv)?;
            let int = |path: &str| budget.pointer(path).and_then(Value::as_i64).unwrap_or(0);
            let unhealthy_allowed = !is_ready(&pod)
                && (budget
                    .pointer("/spec/unhealthyPodEvictionPolicy")
                    .and_then(Value::as_str)
                    == Some("AlwaysAllow")
                    || (int("/status/currentHealthy") >= int("/status/desiredHealthy")
                        && int("/status/desiredHealthy") > 0));
            if unhealthy_allowed {
                // An unready pod does not count towards the budget.
                guard_version = true;
            } else {
                let mut kv = budget_kv.clone();
                loop {
                    let budget = registry::present_kv(budget_def, &kv)?;
                    let updated = decrement(&budget, url_name, &registry::now_rfc3339())?;
                    if dry_run {
                        break;
                    }
                    match state
                        .store()
                        .update(
                            &kv.key,
                            registry::encode(&updated)?,
                            kv.mod_revision,
                            registry::put_options(budget_def),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => {
                            kv = state.store().get(&kv.key).await?.ok_or_else(|| {
                                registry::not_found(
                                    budget_def,
                                    &registry::meta(&budget, "name").unwrap_or_default(),
                                )
                            })?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    let delete_opts = if guard_version && client_rv.is_none() {
        with_resource_version(
            &opts,
            registry::meta(&pod, "resourceVersion").unwrap_or_default(),
        )
    } else {
        opts
    };
    match mark_and_delete(state, ns, url_name, &delete_opts, dry_run).await {
        Err(ApiError::Conflict { .. }) if guard_version && client_rv.is_none() => {
            let name = budgets
                .first()
                .and_then(|kv| registry::present_kv(pdbs_def(), kv).ok())
                .and_then(|b| registry::meta(&b, "name"))
                .unwrap_or_default();
            Err(ApiError::TooManyRequests {
                message: VIOLATES_BUDGET.into(),
                retry_after_seconds: 10,
                cause: Some(format!(
                    "The disruption budget {name} is still being processed by the server."
                )),
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-01-01T00:00:00Z";

    #[test]
    fn binding_sets_the_node_once_and_marks_the_pod_scheduled() {
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let cases = [
            ("unbound pod", pending.clone(), Ok("n1")),
            (
                "bound pod",
                json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n0"}}),
                Err(r#"pod p is already assigned to node "n0""#),
            ),
            (
                "deleting pod",
                json!({"metadata": {"name": "p", "deletionTimestamp": NOW}, "spec": {}}),
                Err("pod p is being deleted, cannot be assigned to a host"),
            ),
            (
                "gated pod",
                json!({"metadata": {"name": "p"}, "spec": {"schedulingGates": [{"name": "g"}]}}),
                Err("pod p has non-empty .spec.schedulingGates"),
            ),
        ];
        for (name, pod, want) in cases {
            let got = bound_pod(&pod, "n1", Some(&json!({"a": "b"})), NOW);
            match (got, want) {
                (Ok(p), Ok(node)) => {
                    assert_eq!(p["spec"]["nodeName"], node, "{name}");
                    assert_eq!(p["metadata"]["annotations"]["a"], "b", "{name}");
                    assert_eq!(
                        p["status"]["conditions"],
                        json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": NOW}]),
                        "{name}"
                    );
                }
                (Err(e), Err(want)) => assert_eq!(e, want, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn binding_requests_are_validated() {
        let cases = [
            (
                "valid",
                json!({"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}),
                Some("p"),
                None,
            ),
            (
                "kind may be empty",
                json!({"metadata": {"name": "p"}, "target": {"name": "n1"}}),
                Some("p"),
                None,
            ),
            (
                "url mismatch",
                json!({"metadata": {"name": "q"}, "target": {"name": "n1"}}),
                Some("p"),
                Some("name in URL does not match name in Binding object"),
            ),
            (
                "no node",
                json!({"metadata": {"name": "p"}, "target": {}}),
                Some("p"),
                Some(r#"Binding "p" is invalid: target.name: Required value"#),
            ),
            (
                "not a node",
                json!({"metadata": {"name": "p"}, "target": {"kind": "Pod", "name": "x"}}),
                None,
                Some(
                    r#"Binding "p" is invalid: target.kind: Invalid value: "Pod": must be empty or 'Node'"#,
                ),
            ),
        ];
        for (name, binding, url, want) in cases {
            let got = validate_binding("ns", url, &binding)
                .err()
                .map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn budgets_allow_one_disruption_per_allowed_count() {
        let budget = |allowed: i64, observed: i64| json!({"metadata": {"name": "b", "generation": 1}, "status": {"disruptionsAllowed": allowed, "observedGeneration": observed, "desiredHealthy": 2, "currentHealthy": 2}});
        let ok = decrement(&budget(2, 1), "p", NOW).expect("allowed");
        assert_eq!(ok["status"]["disruptionsAllowed"], 1);
        assert_eq!(ok["status"]["disruptedPods"]["p"], NOW);
        let last = decrement(&budget(1, 1), "p", NOW).expect("allowed");
        assert_eq!(last["status"]["disruptionsAllowed"], 0);
        assert_eq!(
            last["status"]["conditions"][0]["reason"],
            "InsufficientPods"
        );
        let cases = [
            (
                "none allowed",
                budget(0, 1),
                429,
                "The disruption budget b needs 2 healthy pods and has 2 currently",
            ),
            (
                "not observed",
                budget(3, 0),
                429,
                "The disruption budget b is still being processed by the server.",
            ),
        ];
        for (name, b, code, cause) in cases {
            let err = decrement(&b, "p", NOW).expect_err(name);
            let status = err.status();
            assert_eq!(status["code"], code, "{name}");
            assert_eq!(status["message"], VIOLATES_BUDGET, "{name}");
            assert_eq!(status["details"]["causes"][0]["message"], cause, "{name}");
            assert_eq!(
                status["details"]["causes"][0]["reason"], "DisruptionBudget",
                "{name}"
            );
        }
        let negative = decrement(&budget(-1, 1), "p", NOW).expect_err("negative");
        assert_eq!(negative.code(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn budget_selectors_match_labels_and_empty_selects_nothing() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let cases = [
            ("nil", None, false),
            ("empty", Some(json!({})), false),
            (
                "matchLabels",
                Some(json!({"matchLabels": {"app": "web"}})),
                true,
            ),
            (
                "other label",
                Some(json!({"matchLabels": {"app": "db"}})),
                false,
            ),
            (
                "In",
                Some(
                    json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]}),
                ),
                true,
            ),
            (
                "DoesNotExist",
                Some(json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})),
                false,
            ),
        ];
        for (name, selector, want) in cases {
            assert_eq!(budget_selects(selector.as_ref(), &labels), want, "{name}");
        }
    }
}
