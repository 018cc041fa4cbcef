//! Namespace lifecycle as Kubernetes' namespace storage and the
//! `NamespaceLifecycle` admission plugin define it.
//!
//! - `DELETE namespaces/<name>` marks the namespace (`deletionTimestamp`,
//!   `status.phase: Terminating`) and leaves its contents alone: removing
//!   them is the namespace controller's job, not the API server's.
//! - Nothing new can be created in a Terminating namespace (403).
//! - The namespace is removed by the update that leaves both its
//!   `spec.finalizers` (changed only through `namespaces/<name>/finalize`)
//!   and its `metadata.finalizers` empty, or by a later delete once
//!   `spec.finalizers` is empty.
//! - The four system namespaces cannot be deleted.

use axum::http::StatusCode;
use serde_json::{Value, json};
use skiff_store::Error as StoreError;
use time::OffsetDateTime;

use crate::AppState;
use crate::deletion::{self, DeleteOptions};
use crate::error::{ApiError, ApiResult, GroupResource};
use crate::registry::{self, SYSTEM_NAMESPACES};
use crate::resources::{ResourceDef, Subresource};

fn is_namespaces(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "namespaces"
}

/// The namespace lifecycle admission for a create of `name` of kind `def`
/// in namespace `ns`: the namespace must exist and not be terminating.
pub async fn admit_create(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> ApiResult<()> {
    let ns_def = registry::namespaces_def();
    let kv = state
        .store()
        .get(&ns_def.key(None, ns))
        .await?
        .ok_or_else(|| registry::not_found(ns_def, ns))?;
    let namespace = registry::present_kv(ns_def, &kv)?;
    if namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return Err(ApiError::NamespaceTerminating {
            resource: GroupResource::of(def),
            name: name.to_string(),
            namespace: ns.to_string(),
        });
    }
    Ok(())
}

/// The label every namespace carries with its own name
/// (`kubernetes.io/metadata.name`), so that a namespace selector can pick
/// one namespace by name (NetworkPolicy peers, webhooks).
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Sets [`NAME_LABEL`] to the namespace's name, whatever the client sent,
/// as the namespace strategy does on create and update.
pub fn label_with_name(ns: &mut Value) {
    let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) else {
        return;
    };
    let name = Value::String(name.to_string());
    let meta = registry::meta_mut(ns);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(NAME_LABEL.into(), name);
    }
}

/// The namespace strategies' `PrepareForUpdate`: `spec.finalizers` changes
/// only through `finalize` (and `status` only through `status`, which the
/// generic update already enforces); the name label stays.
pub fn prepare_update(def: &ResourceDef, sub: Option<Subresource>, old: &Value, new: &mut Value) {
    if !is_namespaces(def) {
        return;
    }
    label_with_name(new);
    if sub == Some(Subresource::Finalize) {
        return;
    }
    let kept = old.pointer("/spec/finalizers").cloned();
    let Some(map) = new.as_object_mut() else {
        return;
    };
    let spec = map.entry("spec").or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        match kept {
            Some(f) => spec.insert("finalizers".into(), f),
            None => spec.remove("finalizers"),
        };
    }
}

/// The first delete of a namespace: what it looks like once marked.
fn mark_terminating(
    def: &ResourceDef,
    ns: &Value,
    opts: &DeleteOptions,
    now: OffsetDateTime,
) -> Value {
    let mut marked = ns.clone();
    if let Some(f) = deletion::gc_finalizers(def, &marked, opts) {
        registry::meta_mut(&mut marked).insert("finalizers".into(), json!(f));
    }
    registry::meta_mut(&mut marked)
        .entry("deletionTimestamp")
        .or_insert_with(|| json!(deletion::format_time(now)));
    if let Some(map) = marked.as_object_mut() {
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            status.insert("phase".into(), json!("Terminating"));
        }
    }
    marked
}

/// `DELETE namespaces/<name>`, as the namespace storage's `Delete`.
pub async fn delete(
    state: &AppState,
    def: &ResourceDef,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> ApiResult<(StatusCode, Value)> {
    if SYSTEM_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden {
            resource: GroupResource::of(def),
            name: name.to_string(),
            detail: "this namespace may not be deleted".into(),
        });
    }
    let dry_run = dry_run || opts.is_dry_run();
    let key = registry::key_of(def, None, name);
    loop {
        let current = state
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| registry::not_found(def, name))?;
        let ns = registry::present_kv(def, &current)?;
        deletion::check_preconditions(def, name, &ns, opts.preconditions.as_ref())?;
        if ns.pointer("/metadata/deletionTimestamp").is_none() {
            let marked = mark_terminating(def, &ns, opts, OffsetDateTime::now_utc());
            if dry_run {
                return Ok((StatusCode::OK, marked));
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
                Ok(kv) => return Ok((StatusCode::OK, registry::present_kv(def, &kv)?)),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Already terminating: removed only once finalized.
        let finalized = ns
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if !finalized {
            return Ok((StatusCode::OK, ns));
        }
        return deletion::delete(state, def, None, name, opts, dry_run).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn a_namespace_always_carries_its_name_label() {
        let nss = find("", "v1", "namespaces").expect("namespaces");
        let old = json!({"metadata": {"name": "demo", "labels": {NAME_LABEL: "demo"}}});
        let cases = [
            ("labels removed", json!({"metadata": {"name": "demo"}})),
            (
                "label changed",
                json!({"metadata": {"name": "demo", "labels": {NAME_LABEL: "other", "team": "a"}}}),
            ),
            (
                "labels not a map",
                json!({"metadata": {"name": "demo", "labels": null}}),
            ),
        ];
        for (case, mut new) in cases {
            prepare_update(nss, None, &old, &mut new);
            assert_eq!(new["metadata"]["labels"][NAME_LABEL], "demo", "{case}");
        }
        let mut created = json!({"metadata": {"name": "fresh", "labels": {"team": "a"}}});
        label_with_name(&mut created);
        assert_eq!(
            created["metadata"]["labels"],
            json!({"team": "a", NAME_LABEL: "fresh"})
        );
    }

    #[test]
    fn namespace_updates_keep_spec_finalizers_except_through_finalize() {
        let nss = find("", "v1", "namespaces").expect("namespaces");
        let old = json!({"spec": {"finalizers": ["kubernetes"]}});
        let cases = [
            ("main resource", None, json!(["kubernetes"])),
            ("status", Some(Subresource::Status), json!(["kubernetes"])),
            ("finalize", Some(Subresource::Finalize), json!([])),
        ];
        for (name, sub, want) in cases {
            let mut new = json!({"spec": {"finalizers": []}});
            prepare_update(nss, sub, &old, &mut new);
            assert_eq!(new["spec"]["finalizers"], want, "{name}");
        }
    }

    #[test]
    fn first_delete_marks_terminating_and_keeps_spec_finalizers() {
        let nss = find("", "v1", "namespaces").expect("namespaces");
        let ns = json!({"metadata": {"name": "demo"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let now = OffsetDateTime::UNIX_EPOCH;
        let cases = [
            ("default", DeleteOptions::default(), None),
            (
                "orphan",
                DeleteOptions {
                    propagation_policy: Some("Orphan".into()),
                    ..Default::default()
                },
                Some(json!(["orphan"])),
            ),
        ];
        for (name, opts, finalizers) in cases {
            let marked = mark_terminating(nss, &ns, &opts, now);
            assert_eq!(marked["status"]["phase"], "Terminating", "{name}");
            assert_eq!(
                marked["metadata"]["deletionTimestamp"], "1970-01-01T00:00:00Z",
                "{name}"
            );
            assert_eq!(
                marked["spec"]["finalizers"],
                json!(["kubernetes"]),
                "{name}"
            );
            assert_eq!(
                marked["metadata"].get("finalizers"),
                finalizers.as_ref(),
                "{name}"
            );
        }
    }
}
