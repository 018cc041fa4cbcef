//! Deletion as Kubernetes' generic registry does it (`registry.Store.Delete`
//! with `rest.BeforeDelete`): `DeleteOptions` (grace period, propagation
//! policy, preconditions), graceful deletion of pods (the pod strategy's
//! `CheckGracefulDelete`), the garbage collector's `orphan` and
//! `foregroundDeletion` finalizers, and objects held by finalizers.
//!
//! The decisions are pure functions of (object, options, now) so that they
//! are tested without a store; [`delete`] applies them with optimistic
//! concurrency.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_store::Error as StoreError;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::registry::{self, Params};
use crate::resources::ResourceDef;

/// The garbage collector's finalizer that orphans dependents.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The garbage collector's finalizer of foreground deletion.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// A pod's grace period when neither the request nor the pod names one
/// (the API default of `spec.terminationGracePeriodSeconds`).
pub const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// `meta/v1` `DeleteOptions`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<bool>,
    pub preconditions: Option<Preconditions>,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// The propagation policies a request may name.
const POLICIES: &[&str] = &["Foreground", "Background", "Orphan"];

impl DeleteOptions {
    /// The options of a delete request: the body when there is one, else
    /// the query parameters (as Kubernetes' `DeleteResource` decodes them).
    pub fn decode(body: &[u8], params: &Params) -> ApiResult<DeleteOptions> {
        let opts = if body.iter().all(u8::is_ascii_whitespace) {
            DeleteOptions {
                grace_period_seconds: params.grace_period_seconds,
                propagation_policy: params.propagation_policy.clone(),
                orphan_dependents: params.orphan_dependents,
                preconditions: None,
                dry_run: Vec::new(),
            }
        } else if body.starts_with(b"k8s\x00") {
            // client-go's typed clients (helm, kubectl) send protobuf.
            let value = crate::protobuf::decode(body)
                .map_err(|e| ApiError::BadRequest(format!("decoding DeleteOptions: {e}")))?;
            serde_json::from_value(value)
                .map_err(|e| ApiError::BadRequest(format!("decoding DeleteOptions: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("decoding DeleteOptions: {e}")))?
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Kubernetes' `ValidateDeleteOptions`.
    pub fn validate(&self) -> ApiResult<()> {
        let mut causes = Vec::new();
        if let (Some(_), Some(policy)) = (self.orphan_dependents, &self.propagation_policy) {
            causes.push(FieldError::invalid(
                "propagationPolicy",
                policy,
                "orphanDependents and deletionPropagation cannot be both set",
            ));
        }
        if let Some(policy) = &self.propagation_policy
            && !POLICIES.contains(&policy.as_str())
        {
            causes.push(FieldError {
                reason: "FieldValueNotSupported",
                field: "propagationPolicy".into(),
                message: format!(
                    "Unsupported value: {}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"",
                    json!(policy)
                ),
            });
        }
        for value in &self.dry_run {
            if value != "All" {
                causes.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: "dryRun".into(),
                    message: format!(
                        "Unsupported value: {}: supported values: \"All\"",
                        json!(value)
                    ),
                });
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: "DeleteOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes,
            })
        }
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.iter().any(|v| v == "All")
    }
}

/// What a kind's garbage-collection default is when a delete names no
/// policy (`DefaultGarbageCollectionPolicy` of its strategy).
fn default_orphans(def: &ResourceDef) -> bool {
    // batch/v1 Jobs orphan their pods by default, for backwards
    // compatibility; every other kind deletes dependents in the background.
    def.group == "batch" && def.plural == "jobs"
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `shouldOrphanDependents`.
fn should_orphan(def: &ResourceDef, current: &[String], opts: &DeleteOptions) -> bool {
    if let Some(orphan) = opts.orphan_dependents {
        return orphan;
    }
    match opts.propagation_policy.as_deref() {
        Some("Orphan") => return true,
        Some("Background" | "Foreground") => return false,
        _ => {}
    }
    for f in current {
        match f.as_str() {
            FINALIZER_ORPHAN => return true,
            FINALIZER_FOREGROUND => return false,
            _ => {}
        }
    }
    default_orphans(def)
}

/// `shouldDeleteDependents`.
fn should_delete_in_foreground(current: &[String], opts: &DeleteOptions) -> bool {
    if opts.orphan_dependents.is_some() {
        return false;
    }
    match opts.propagation_policy.as_deref() {
        Some("Foreground") => return true,
        Some("Background" | "Orphan") => return false,
        _ => {}
    }
    current.iter().any(|f| f == FINALIZER_FOREGROUND)
}

/// `deletionFinalizersForGarbageCollection`: the finalizers the object
/// should have for the requested propagation, when they differ from its
/// current ones.
pub fn gc_finalizers(def: &ResourceDef, obj: &Value, opts: &DeleteOptions) -> Option<Vec<String>> {
    let current = finalizers(obj);
    let orphan = should_orphan(def, &current, opts);
    let foreground = should_delete_in_foreground(&current, opts);
    let mut new: Vec<String> = current
        .iter()
        .filter(|f| *f != FINALIZER_ORPHAN && *f != FINALIZER_FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        new.push(FINALIZER_ORPHAN.into());
    }
    if foreground {
        new.push(FINALIZER_FOREGROUND.into());
    }
    let as_set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    (as_set(&current) != as_set(&new)).then_some(new)
}

/// The pod strategy's `CheckGracefulDelete`: the grace period a pod gets.
fn pod_grace_period(pod: &Value, opts: &DeleteOptions) -> i64 {
    let mut period = opts.grace_period_seconds.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_POD_GRACE_SECONDS)
    });
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node.is_empty() {
        // Not scheduled: nothing runs it, delete at once.
        period = 0;
    }
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Failed" | "Succeeded")
    ) {
        period = 0;
    }
    if period < 0 { 1 } else { period }
}

/// Kinds whose strategy supports graceful deletion.
fn graceful_kind(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "pods"
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// What `rest.BeforeDelete` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BeforeDelete {
    /// Not graceful: delete now, or mark when finalizers are pending.
    NotGraceful,
    /// The object was marked (deletionTimestamp and grace period set or
    /// shortened) with this grace period.
    Graceful(i64),
    /// A graceful deletion is already under way and is not shortened.
    Pending,
}

/// `rest.BeforeDelete`: updates `obj` in place.
fn before_delete(
    def: &ResourceDef,
    obj: &mut Value,
    opts: &DeleteOptions,
    now: OffsetDateTime,
) -> BeforeDelete {
    // Negative grace periods count as one second.
    let requested = opts.grace_period_seconds.map(|g| if g < 0 { 1 } else { g });
    if !graceful_kind(def) {
        return BeforeDelete::NotGraceful;
    }
    let m = registry::meta_mut(obj);
    if let Some(ts) = m.get("deletionTimestamp").and_then(Value::as_str) {
        let current_grace = m
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .map(|g| if g < 0 { 1 } else { g });
        let Some(current_grace) = current_grace.filter(|g| *g != 0) else {
            return BeforeDelete::NotGraceful;
        };
        let Some(period) = requested else {
            return BeforeDelete::Pending;
        };
        if period >= current_grace {
            return BeforeDelete::Pending;
        }
        let start = parse_time(ts).unwrap_or(now) - time::Duration::seconds(current_grace);
        let shortened = start + time::Duration::seconds(period);
        m.insert("deletionTimestamp".into(), json!(format_time(shortened)));
        m.insert("deletionGracePeriodSeconds".into(), json!(period));
        return BeforeDelete::Graceful(period);
    }
    let opts = DeleteOptions {
        grace_period_seconds: requested,
        ..opts.clone()
    };
    let pod = obj.clone();
    let period = pod_grace_period(&pod, &opts);
    let m = registry::meta_mut(obj);
    m.insert(
        "deletionTimestamp".into(),
        json!(format_time(now + time::Duration::seconds(period))),
    );
    m.insert("deletionGracePeriodSeconds".into(), json!(period));
    bump_generation(m);
    BeforeDelete::Graceful(period)
}

fn bump_generation(m: &mut serde_json::Map<String, Value>) {
    if let Some(g) = m
        .get("generation")
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
    {
        m.insert("generation".into(), json!(g + 1));
    }
}

/// `markAsDeleting`: an object held by finalizers that has no grace period.
fn mark_as_deleting(obj: &mut Value, now: OffsetDateTime) {
    let m = registry::meta_mut(obj);
    let existing = m
        .get("deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_time);
    if existing.is_none() {
        bump_generation(m);
    }
    if existing.is_none_or(|t| t > now) {
        m.insert("deletionTimestamp".into(), json!(format_time(now)));
    }
    m.insert("deletionGracePeriodSeconds".into(), json!(0));
}

/// What one delete does to a stored object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Remove it from the store now; the value is the object as last seen
    /// (with any deletion marks).
    DeleteNow(Value),
    /// Write this version (marked for deletion) and keep it.
    Mark(Value),
    /// Nothing to write: a deletion is already under way.
    Pending(Value),
}

/// The decision of `registry.Store.Delete` for `obj` (as stored, with its
/// resourceVersion) and `opts`, at `now`. Pure.
pub fn plan(def: &ResourceDef, obj: &Value, opts: &DeleteOptions, now: OffsetDateTime) -> Plan {
    let mut new = obj.clone();
    let decision = before_delete(def, &mut new, opts, now);
    if decision == BeforeDelete::Pending {
        return Plan::Pending(obj.clone());
    }
    let gc = gc_finalizers(def, &new, opts);
    if let Some(f) = &gc {
        registry::meta_mut(&mut new).insert("finalizers".into(), json!(f));
    }
    let pending_finalizers = !finalizers(&new).is_empty();
    match decision {
        BeforeDelete::NotGraceful if pending_finalizers => {
            mark_as_deleting(&mut new, now);
            if new == *obj {
                Plan::Pending(new)
            } else {
                Plan::Mark(new)
            }
        }
        BeforeDelete::NotGraceful => Plan::DeleteNow(new),
        BeforeDelete::Graceful(period) if pending_finalizers || period > 0 => Plan::Mark(new),
        BeforeDelete::Graceful(_) => Plan::DeleteNow(new),
        BeforeDelete::Pending => Plan::Pending(obj.clone()),
    }
}

/// The Conflict of a failed precondition, with Kubernetes' messages.
pub(crate) fn check_preconditions(
    def: &ResourceDef,
    name: &str,
    obj: &Value,
    pre: Option<&Preconditions>,
) -> ApiResult<()> {
    let Some(pre) = pre else {
        return Ok(());
    };
    let uid = registry::meta(obj, "uid").unwrap_or_default();
    if let Some(want) = pre.uid.as_deref().filter(|u| !u.is_empty() && *u != uid) {
        return Err(registry::conflict(
            def,
            name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    let rv = registry::meta(obj, "resourceVersion").unwrap_or_default();
    if let Some(want) = pre
        .resource_version
        .as_deref()
        .filter(|r| !r.is_empty() && *r != rv)
    {
        return Err(registry::conflict(
            def,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            ),
        ));
    }
    Ok(())
}

/// What a finished (object removed) delete answers: the object for kinds
/// that return it, else a Success Status.
fn finalized(def: &ResourceDef, obj: Value) -> Value {
    if registry::returns_deleted_object(def) {
        obj
    } else {
        let name = registry::meta(&obj, "name").unwrap_or_default();
        registry::success_status(def, &name, registry::meta(&obj, "uid"))
    }
}

/// Deletes one object as Kubernetes' generic registry does; returns the
/// HTTP status (200, or 202 for a deletion still in progress requested
/// with `orphanDependents: false`) and the body.
pub async fn delete(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> ApiResult<(StatusCode, Value)> {
    let dry_run = dry_run || opts.is_dry_run();
    let key = registry::key_of(def, ns, name);
    let still_running = if opts.orphan_dependents == Some(false) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    loop {
        let current = state
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| registry::not_found(def, name))?;
        let obj = registry::present_kv(def, &current)?;
        check_preconditions(def, name, &obj, opts.preconditions.as_ref())?;
        match plan(def, &obj, opts, OffsetDateTime::now_utc()) {
            // The object as it is: a deletion is under way.
            Plan::Pending(obj) => return Ok((still_running, obj)),
            Plan::Mark(marked) => {
                if dry_run {
                    return Ok((still_running, marked));
                }
                match state
                    .store()
                    .update(
                        &key,
                        registry::encode(&marked)?,
                        current.mod_revision,
                        registry::put_options(def),
                    )
                    .await
                {
                    Ok(kv) => return Ok((still_running, registry::present_kv(def, &kv)?)),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Plan::DeleteNow(last) => {
                if dry_run {
                    return Ok((StatusCode::OK, finalized(def, last)));
                }
                match state.store().delete(&key, Some(current.mod_revision)).await {
                    Ok(deleted) => {
                        if (def.group, def.plural) == ("", "services") {
                            crate::allocator::release_service(state, &last).await;
                        }
                        let mut out = last;
                        registry::meta_mut(&mut out).insert(
                            "resourceVersion".into(),
                            json!(deleted.revision.to_string()),
                        );
                        return Ok((StatusCode::OK, finalized(def, out)));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound { .. }) => return Err(registry::not_found(def, name)),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Kubernetes' `ShouldDeleteDuringUpdate`: an update of an object being
/// deleted without a pending grace period that leaves no finalizers removes
/// it. Namespaces also need their `spec.finalizers` emptied.
pub fn should_delete_during_update(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    if !finalizers(new).is_empty() {
        return false;
    }
    if old.pointer("/metadata/deletionTimestamp").is_none() {
        return false;
    }
    let grace = old
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if grace.is_some_and(|g| g != 0) {
        return false;
    }
    if def.group.is_empty() && def.plural == "namespaces" {
        return new
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn at(s: &str) -> OffsetDateTime {
        parse_time(s).expect("time")
    }

    const NOW: &str = "2025-01-01T00:00:00Z";

    fn opts(grace: Option<i64>, policy: Option<&str>) -> DeleteOptions {
        DeleteOptions {
            grace_period_seconds: grace,
            propagation_policy: policy.map(str::to_string),
            ..Default::default()
        }
    }

    fn pod(node: &str, extra_meta: Value) -> Value {
        let mut p = json!({"metadata": {"name": "p", "generation": 1}, "spec": {"nodeName": node}, "status": {"phase": "Running"}});
        if let (Some(m), Some(extra)) = (p["metadata"].as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        p
    }

    fn kind(plan: &Plan) -> (&'static str, Value) {
        match plan {
            Plan::DeleteNow(v) => ("delete", v["metadata"].clone()),
            Plan::Mark(v) => ("mark", v["metadata"].clone()),
            Plan::Pending(v) => ("pending", v["metadata"].clone()),
        }
    }

    #[test]
    fn deletion_plans_follow_the_generic_registry_and_pod_strategy() {
        let pods = find("", "v1", "pods").expect("pods");
        let cms = find("", "v1", "configmaps").expect("configmaps");
        let jobs = find("batch", "v1", "jobs").expect("jobs");
        let cm = |meta: Value| json!({"metadata": meta});
        // (name, def, object, options, want kind, want deletionTimestamp,
        //  want grace, want finalizers)
        type Case = (
            &'static str,
            &'static ResourceDef,
            Value,
            DeleteOptions,
            &'static str,
            Option<&'static str>,
            Option<i64>,
            Option<Value>,
        );
        let cases: Vec<Case> = vec![
            (
                "unscheduled pod goes at once",
                pods,
                pod("", json!({})),
                opts(None, None),
                "delete",
                Some(NOW),
                Some(0),
                None,
            ),
            (
                "scheduled pod gets the default grace",
                pods,
                pod("n1", json!({})),
                opts(None, None),
                "mark",
                Some("2025-01-01T00:00:30Z"),
                Some(30),
                None,
            ),
            (
                "scheduled pod with its own grace",
                pods,
                {
                    let mut p = pod("n1", json!({}));
                    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
                    p
                },
                opts(None, None),
                "mark",
                Some("2025-01-01T00:00:05Z"),
                Some(5),
                None,
            ),
            (
                "grace zero removes a scheduled pod",
                pods,
                pod("n1", json!({})),
                opts(Some(0), None),
                "delete",
                Some(NOW),
                Some(0),
                None,
            ),
            (
                "a finished pod goes at once",
                pods,
                {
                    let mut p = pod("n1", json!({}));
                    p["status"]["phase"] = json!("Succeeded");
                    p
                },
                opts(None, None),
                "delete",
                Some(NOW),
                Some(0),
                None,
            ),
            (
                "a shorter grace shortens a pending deletion",
                pods,
                pod(
                    "n1",
                    json!({"deletionTimestamp": "2025-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                ),
                opts(Some(10), None),
                "mark",
                Some("2025-01-01T00:00:00Z"),
                Some(10),
                None,
            ),
            (
                "a longer grace leaves a pending deletion alone",
                pods,
                pod(
                    "n1",
                    json!({"deletionTimestamp": "2025-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                ),
                opts(Some(60), None),
                "pending",
                Some("2025-01-01T00:00:20Z"),
                Some(30),
                None,
            ),
            (
                "a second delete without grace is pending",
                pods,
                pod(
                    "n1",
                    json!({"deletionTimestamp": "2025-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                ),
                opts(None, None),
                "pending",
                Some("2025-01-01T00:00:20Z"),
                Some(30),
                None,
            ),
            (
                "grace zero on a terminating pod removes it",
                pods,
                pod(
                    "n1",
                    json!({"deletionTimestamp": "2025-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                ),
                opts(Some(0), None),
                "delete",
                Some("2024-12-31T23:59:50Z"),
                Some(0),
                None,
            ),
            (
                "configmap without finalizers goes at once",
                cms,
                cm(json!({"name": "c"})),
                opts(None, None),
                "delete",
                None,
                None,
                None,
            ),
            (
                "configmap with a finalizer is marked",
                cms,
                cm(json!({"name": "c", "finalizers": ["x/y"]})),
                opts(None, None),
                "mark",
                Some(NOW),
                Some(0),
                Some(json!(["x/y"])),
            ),
            (
                "orphan adds the orphan finalizer",
                cms,
                cm(json!({"name": "c"})),
                opts(None, Some("Orphan")),
                "mark",
                Some(NOW),
                Some(0),
                Some(json!(["orphan"])),
            ),
            (
                "foreground adds foregroundDeletion",
                cms,
                cm(json!({"name": "c"})),
                opts(None, Some("Foreground")),
                "mark",
                Some(NOW),
                Some(0),
                Some(json!(["foregroundDeletion"])),
            ),
            (
                "background replaces orphan and deletes",
                cms,
                cm(json!({"name": "c", "finalizers": ["orphan"]})),
                opts(None, Some("Background")),
                "delete",
                None,
                None,
                Some(json!([])),
            ),
            (
                "batch/v1 jobs orphan by default",
                jobs,
                cm(json!({"name": "j"})),
                opts(None, None),
                "mark",
                Some(NOW),
                Some(0),
                Some(json!(["orphan"])),
            ),
            (
                "jobs deleted in the background go at once",
                jobs,
                cm(json!({"name": "j"})),
                opts(None, Some("Background")),
                "delete",
                None,
                None,
                None,
            ),
            (
                "orphanDependents=true orphans",
                cms,
                cm(json!({"name": "c"})),
                DeleteOptions {
                    orphan_dependents: Some(true),
                    ..Default::default()
                },
                "mark",
                Some(NOW),
                Some(0),
                Some(json!(["orphan"])),
            ),
            (
                "already marked with finalizers stays pending",
                cms,
                cm(
                    json!({"name": "c", "finalizers": ["x/y"], "deletionTimestamp": "2024-12-31T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
                opts(None, None),
                "pending",
                Some("2024-12-31T00:00:00Z"),
                Some(0),
                Some(json!(["x/y"])),
            ),
        ];
        for (name, def, obj, opts, want, ts, grace, fins) in cases {
            let (got, meta) = kind(&plan(def, &obj, &opts, at(NOW)));
            assert_eq!(got, want, "{name}");
            assert_eq!(
                meta["deletionTimestamp"].as_str(),
                ts,
                "{name}: deletionTimestamp"
            );
            assert_eq!(
                meta["deletionGracePeriodSeconds"].as_i64(),
                grace,
                "{name}: grace"
            );
            if let Some(fins) = fins {
                let got = meta.get("finalizers").cloned().unwrap_or(json!([]));
                assert_eq!(got, fins, "{name}: finalizers");
            }
        }
    }

    #[test]
    fn delete_options_are_validated_like_kubernetes() {
        let cases = [
            ("empty", DeleteOptions::default(), None),
            ("background", opts(None, Some("Background")), None),
            (
                "unknown policy",
                opts(None, Some("Sideways")),
                Some(
                    r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": supported values: "Foreground", "Background", "Orphan", "nil""#,
                ),
            ),
            (
                "both orphan and policy",
                DeleteOptions {
                    orphan_dependents: Some(true),
                    propagation_policy: Some("Orphan".into()),
                    ..Default::default()
                },
                Some(
                    r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Invalid value: "Orphan": orphanDependents and deletionPropagation cannot be both set"#,
                ),
            ),
        ];
        for (name, opts, want) in cases {
            let got = opts.validate().err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn updates_remove_objects_only_when_nothing_holds_them() {
        let cms = find("", "v1", "configmaps").expect("configmaps");
        let pods = find("", "v1", "pods").expect("pods");
        let nss = find("", "v1", "namespaces").expect("namespaces");
        let marked =
            json!({"metadata": {"deletionTimestamp": NOW, "deletionGracePeriodSeconds": 0}});
        let cases = [
            (
                "not being deleted",
                cms,
                json!({"metadata": {}}),
                json!({"metadata": {}}),
                false,
            ),
            (
                "last finalizer removed",
                cms,
                marked.clone(),
                json!({"metadata": {}}),
                true,
            ),
            (
                "finalizer left",
                cms,
                marked.clone(),
                json!({"metadata": {"finalizers": ["a"]}}),
                false,
            ),
            (
                "pod in its grace period",
                pods,
                json!({"metadata": {"deletionTimestamp": NOW, "deletionGracePeriodSeconds": 30}}),
                json!({"metadata": {}}),
                false,
            ),
            (
                "namespace with spec finalizers",
                nss,
                json!({"metadata": {"deletionTimestamp": NOW}}),
                json!({"metadata": {}, "spec": {"finalizers": ["kubernetes"]}}),
                false,
            ),
            (
                "namespace finalized",
                nss,
                json!({"metadata": {"deletionTimestamp": NOW}}),
                json!({"metadata": {}, "spec": {"finalizers": []}}),
                true,
            ),
        ];
        for (name, def, old, new, want) in cases {
            assert_eq!(should_delete_during_update(def, &old, &new), want, "{name}");
        }
    }
}
