//! Server-side apply and field management (`metadata.managedFields`).
//!
//! Pure functions over objects as JSON, following Kubernetes'
//! structured-merge-diff: every write records which fields its manager set
//! (`FieldsV1`: a tree of `f:<field>`, `k:<key json>` for items of keyed
//! lists, `v:<value json>` for items of sets, and `.` for an item itself).
//! An apply (`application/apply-patch+yaml`) merges the applied
//! configuration into the live object, removes the fields the same manager
//! applied before and no longer applies (unless someone else also owns
//! them), and refuses with a conflict to change a field another manager
//! owns with a different value, unless forced, in which case the field
//! changes owner. An ordinary update takes ownership of the fields it
//! changed, without conflicts.
//!
//! Lists are keyed, sets or atomic by the same per-field rules as strategic
//! merge patch ([`crate::patch::merge_key`]); everything else is atomic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::patch;

/// A set of field paths as a `FieldsV1` tree; an empty map is a leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fields(pub BTreeMap<String, Fields>);

/// One path element, as `FieldsV1` spells it.
type Path = Vec<String>;

impl Fields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every leaf path.
    pub fn leaves(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_leaves(&mut Vec::new(), &mut out);
        out
    }

    fn collect_leaves(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for (pe, child) in &self.0 {
            prefix.push(pe.clone());
            if child.is_empty() {
                out.push(prefix.clone());
            } else {
                child.collect_leaves(prefix, out);
            }
            prefix.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut cur = self;
        for pe in path {
            match cur.0.get(pe) {
                Some(next) => cur = next,
                None => return false,
            }
        }
        true
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut cur = self;
        for pe in path {
            cur = cur.0.entry(pe.clone()).or_default();
        }
    }

    /// Removes a leaf path and the branches it leaves empty.
    pub fn remove(&mut self, path: &[String]) {
        fn go(node: &mut Fields, path: &[String]) -> bool {
            let Some((first, rest)) = path.split_first() else {
                return true;
            };
            let prune = match node.0.get_mut(first) {
                Some(_) if rest.is_empty() => true,
                Some(child) => go(child, rest) && child.is_empty(),
                None => false,
            };
            if prune {
                node.0.remove(first);
            }
            true
        }
        go(self, path);
    }
}

/// The fields an object sets, without the ones no manager owns (identity,
/// server-set metadata, `apiVersion`, `kind`, and `status` when
/// `ignore_status`).
pub fn fields_of(obj: &Value, ignore_status: bool) -> Fields {
    let mut out = Fields::default();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" || (ignore_status && k == "status") {
                continue;
            }
            let mut child = Fields::default();
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta {
                        if SERVER_SET_METADATA.contains(&mk.as_str()) {
                            continue;
                        }
                        let mut grandchild = Fields::default();
                        collect_value(mk, mv, &mut grandchild);
                        child.0.insert(format!("f:{mk}"), grandchild);
                    }
                    if child.is_empty() {
                        continue;
                    }
                }
            } else {
                collect_value(k, v, &mut child);
            }
            out.0.insert(format!("f:{k}"), child);
        }
    }
    out
}

/// Metadata the server sets, which no manager owns.
const SERVER_SET_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn collect_map(map: &Map<String, Value>, out: &mut Fields) {
    for (k, v) in map {
        let mut child = Fields::default();
        collect_value(k, v, &mut child);
        out.0.insert(format!("f:{k}"), child);
    }
}

/// How the items of list `field` are told apart.
enum ListKind {
    Keyed(&'static str),
    Set,
    Atomic,
}

fn list_kind(field: &str, items: &[Value]) -> ListKind {
    if patch::is_merged_primitive_list(field) {
        return ListKind::Set;
    }
    let sample = items
        .iter()
        .find_map(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match patch::merge_key(field, &sample) {
        Some(key) if items.iter().all(|i| i.get(key).is_some()) => ListKind::Keyed(key),
        _ => ListKind::Atomic,
    }
}

fn item_key(key: &str, item: &Value) -> Option<String> {
    item.get(key).map(|v| format!("k:{}", json!({ key: v })))
}

fn collect_value(field: &str, v: &Value, out: &mut Fields) {
    match v {
        Value::Object(m) => collect_map(m, out),
        Value::Array(items) => match list_kind(field, items) {
            ListKind::Keyed(key) => {
                for item in items {
                    let Some(pe) = item_key(key, item) else {
                        continue;
                    };
                    let mut child = Fields::default();
                    child.0.insert(".".into(), Fields::default());
                    if let Value::Object(m) = item {
                        collect_map(m, &mut child);
                    }
                    out.0.insert(pe, child);
                }
            }
            ListKind::Set => {
                for item in items {
                    out.0.insert(format!("v:{item}"), Fields::default());
                }
            }
            ListKind::Atomic => {}
        },
        _ => {}
    }
}

/// The value at `path` inside `obj`, if present.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = step(cur, pe)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, pe: &str) -> Option<&'a Value> {
    if pe == "." {
        return Some(cur);
    }
    if let Some(field) = pe.strip_prefix("f:") {
        return cur.get(field);
    }
    cur.as_array()?.iter().find(|i| item_matches(i, pe))
}

/// Removes what `path` names from `obj` (a field, or a list item when the
/// path ends in `.`, `k:` or `v:`).
fn remove_at(obj: &mut Value, path: &[String]) {
    let path: &[String] = match path.last().map(String::as_str) {
        Some(".") => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for pe in parent_path {
        cur = match step_mut(cur, pe) {
            Some(v) => v,
            None => return,
        };
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(field);
        }
    } else if let Some(items) = cur.as_array_mut()
        && let Some(pos) = items.iter().position(|i| item_matches(i, last))
    {
        items.remove(pos);
    }
}

/// Whether list item `item` is the one path element `pe` (`k:`/`v:`) names.
fn item_matches(item: &Value, pe: &str) -> bool {
    if let Some(key) = pe.strip_prefix("k:") {
        return serde_json::from_str::<Map<String, Value>>(key)
            .is_ok_and(|key| key.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(value) = pe.strip_prefix("v:") {
        return serde_json::from_str::<Value>(value).is_ok_and(|v| *item == v);
    }
    false
}

fn step_mut<'a>(cur: &'a mut Value, pe: &str) -> Option<&'a mut Value> {
    if pe == "." {
        return Some(cur);
    }
    if let Some(field) = pe.strip_prefix("f:") {
        return cur.get_mut(field);
    }
    cur.as_array_mut()?.iter_mut().find(|i| item_matches(i, pe))
}

/// Merges an applied configuration into `live`: objects field by field,
/// keyed lists item by item, sets as unions, everything else replaced.
fn merge(live: &mut Value, config: &Value, field: &str) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                if cv.is_null() {
                    l.remove(k);
                    continue;
                }
                match l.get_mut(k) {
                    Some(lv) => merge(lv, cv, k),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => match list_kind(field, c) {
            ListKind::Keyed(key) if l.iter().all(|i| i.get(key).is_some()) => {
                for citem in c {
                    match l.iter_mut().find(|i| i.get(key) == citem.get(key)) {
                        Some(litem) => merge(litem, citem, ""),
                        None => l.push(citem.clone()),
                    }
                }
            }
            ListKind::Set => {
                for citem in c {
                    if !l.contains(citem) {
                        l.push(citem.clone());
                    }
                }
            }
            _ => *l = c.clone(),
        },
        (live, config) => *live = config.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    pub manager: String,
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default = "fields_v1")]
    pub fields_type: String,
    #[serde(default, rename = "fieldsV1")]
    pub fields: Fields,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

fn fields_v1() -> String {
    "FieldsV1".into()
}

/// Who is writing, and how.
#[derive(Debug, Clone)]
pub struct Manager<'a> {
    pub name: &'a str,
    pub api_version: &'a str,
    /// `status` for the status subresource, else empty.
    pub subresource: &'a str,
    pub now: &'a str,
}

/// The `managedFields` of an object (malformed entries are dropped, as
/// Kubernetes resets unreadable field sets).
pub fn managed_fields(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| serde_json::from_value(e.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_managed_fields(obj: &mut Value, entries: &[ManagedFieldsEntry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            serde_json::to_value(entries).unwrap_or(Value::Null),
        );
    }
}

fn same_slot(e: &ManagedFieldsEntry, m: &Manager<'_>, operation: &str) -> bool {
    e.manager == m.name && e.operation == operation && e.subresource == m.subresource
}

/// Records an ordinary write (create, update, non-apply patch): `manager`
/// takes the fields whose value it changed or added; fields that are gone
/// leave every set.
pub fn track_update(
    old: Option<&Value>,
    new: &Value,
    mut entries: Vec<ManagedFieldsEntry>,
    m: &Manager<'_>,
    ignore_status: bool,
) -> Vec<ManagedFieldsEntry> {
    let new_fields = fields_of(new, ignore_status);
    let mut changed = Fields::default();
    changed_leaves(&new_fields, old, Some(new), &mut Vec::new(), &mut changed);
    for e in entries.iter_mut() {
        let others = !same_slot(e, m, "Update");
        prune_stale(&mut e.fields, Some(new), Some(&changed), others);
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| same_slot(e, m, "Update")) {
            Some(e) => {
                for p in changed.leaves() {
                    e.fields.insert(&p);
                }
                e.time = Some(m.now.to_string());
                e.api_version = m.api_version.to_string();
            }
            None => entries.push(ManagedFieldsEntry {
                manager: m.name.to_string(),
                operation: "Update".into(),
                api_version: m.api_version.to_string(),
                time: Some(m.now.to_string()),
                fields_type: fields_v1(),
                fields: changed,
                subresource: m.subresource.to_string(),
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    entries
}

/// Adds to `out` every leaf of `fields` whose value differs between `old`
/// and `new`. Both objects are walked along the field tree together, one
/// step per node, and equal subtrees are not descended into.
fn changed_leaves(
    fields: &Fields,
    old: Option<&Value>,
    new: Option<&Value>,
    prefix: &mut Path,
    out: &mut Fields,
) {
    for (pe, child) in &fields.0 {
        let before = old.and_then(|v| step(v, pe));
        let after = new.and_then(|v| step(v, pe));
        if before == after {
            continue;
        }
        prefix.push(pe.clone());
        if child.is_empty() {
            out.insert(prefix);
        } else {
            changed_leaves(child, before, after, prefix, out);
        }
        prefix.pop();
    }
}

/// Drops from `fields` the leaves that `new` no longer has and, when
/// `drop_changed`, the leaves in `changed` (another manager changed
/// them); branches left empty go too.
fn prune_stale(
    fields: &mut Fields,
    new: Option<&Value>,
    changed: Option<&Fields>,
    drop_changed: bool,
) {
    fields.0.retain(|pe, child| {
        let value = new.and_then(|v| step(v, pe));
        let changed = changed.and_then(|c| c.0.get(pe));
        if child.is_empty() {
            value.is_some() && !(drop_changed && changed.is_some())
        } else {
            prune_stale(child, value, changed, drop_changed);
            !child.is_empty()
        }
    });
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The field as Kubernetes prints it (`.spec.replicas`).
    pub field: String,
}

/// Applies `config` for manager `m` to `live` (`None`: the object does not
/// exist yet). Returns the object to store with its managed fields, or the
/// conflicts when not forced.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    m: &Manager<'_>,
    force: bool,
    ignore_status: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = live.map(managed_fields).unwrap_or_default();
    let applied = fields_of(config, ignore_status);
    let empty = Value::Object(Map::new());
    let live_obj = live.unwrap_or(&empty);

    // Conflicts: fields another manager owns that this apply would change.
    let mut conflicts = Vec::new();
    for leaf in applied.leaves() {
        if leaf.last().map(String::as_str) == Some(".") {
            continue;
        }
        if value_at(config, &leaf) == value_at(live_obj, &leaf) {
            continue;
        }
        for e in entries.iter_mut() {
            if same_slot(e, m, "Apply") || !e.fields.contains(&leaf) {
                continue;
            }
            if force {
                e.fields.remove(&leaf);
            } else {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: render_path(&leaf),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // Fields this manager applied before and no longer does, and nobody
    // else owns, are removed.
    let previous = entries
        .iter()
        .find(|e| same_slot(e, m, "Apply"))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut merged = live_obj.clone();
    let owned_by_others = |path: &[String]| {
        entries
            .iter()
            .any(|e| !same_slot(e, m, "Apply") && e.fields.contains(path))
    };
    let mut emptied: Vec<Path> = Vec::new();
    for leaf in previous.leaves() {
        if applied.contains(&leaf) || owned_by_others(&leaf) {
            continue;
        }
        remove_at(&mut merged, &leaf);
        for end in 1..leaf.len() {
            emptied.push(leaf[..end].to_vec());
        }
    }
    // Containers left empty by the removals, that nobody else set, go too
    // (deepest first).
    emptied.sort_by_key(|p| std::cmp::Reverse(p.len()));
    emptied.dedup();
    for path in emptied {
        let empty = match value_at(&merged, &path) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        };
        if empty
            && path.last().is_some_and(|pe| pe.starts_with("f:"))
            && !applied.contains(&path)
            && !owned_by_others(&path)
        {
            remove_at(&mut merged, &path);
        }
    }
    merge(&mut merged, config, "");

    entries.retain(|e| !same_slot(e, m, "Apply"));
    entries.push(ManagedFieldsEntry {
        manager: m.name.to_string(),
        operation: "Apply".into(),
        api_version: m.api_version.to_string(),
        time: Some(m.now.to_string()),
        fields_type: fields_v1(),
        fields: applied,
        subresource: m.subresource.to_string(),
    });
    entries.retain(|e| !e.fields.is_empty());
    set_managed_fields(&mut merged, &entries);
    Ok(merged)
}

/// `.spec.containers[name="web"].image`, as Kubernetes prints field paths.
pub fn render_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgr(name: &str) -> Manager<'_> {
        Manager {
            name,
            api_version: "apps/v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "web", "image": image}]}}
            }
        })
    }

    #[test]
    fn field_sets_use_fieldsv1_keys_for_maps_keyed_lists_and_sets() {
        let obj = json!({
            "metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f1"]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "args": ["x"]}
        });
        let fields = fields_of(&obj, false);
        let v = serde_json::to_value(&fields).unwrap();
        assert_eq!(
            v,
            json!({
                "f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"f1\"": {}}},
                "f:spec": {
                    "f:args": {},
                    "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}
                }
            })
        );
    }

    #[test]
    fn first_apply_creates_and_records_an_apply_entry() {
        let obj = apply(None, &deployment(2, "a"), &mgr("kubectl"), false, true).unwrap();
        let entries = managed_fields(&obj);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].operation, "Apply");
        assert!(
            entries[0]
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()])
        );
    }

    #[test]
    fn a_field_changed_by_another_manager_conflicts_unless_forced() {
        let live = apply(None, &deployment(2, "a"), &mgr("kubectl"), false, true).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = track_update(
            Some(&live),
            &scaled,
            managed_fields(&live),
            &mgr("hpa"),
            true,
        );
        set_managed_fields(&mut scaled, &entries);

        // Re-applying replicas 2 conflicts with hpa's ownership.
        let err = apply(
            Some(&scaled),
            &deployment(2, "b"),
            &mgr("kubectl"),
            false,
            true,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "hpa".into(),
                field: ".spec.replicas".into()
            }]
        );
        // Applying the same value shares ownership; no conflict.
        let shared = apply(
            Some(&scaled),
            &deployment(5, "b"),
            &mgr("kubectl"),
            false,
            true,
        );
        assert!(shared.is_ok());
        // Forced: kubectl takes it over.
        let forced = apply(
            Some(&scaled),
            &deployment(2, "b"),
            &mgr("kubectl"),
            true,
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let hpa = managed_fields(&forced)
            .into_iter()
            .find(|e| e.manager == "hpa");
        assert!(hpa.is_none(), "hpa kept {hpa:?}");
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed_unless_someone_else_owns_them() {
        let mut cfg = deployment(2, "a");
        cfg["metadata"]["labels"]["tier"] = json!("front");
        let live = apply(None, &cfg, &mgr("kubectl"), false, true).unwrap();
        let next = apply(
            Some(&live),
            &deployment(2, "a"),
            &mgr("kubectl"),
            false,
            true,
        )
        .unwrap();
        assert_eq!(next["metadata"]["labels"], json!({"app": "web"}));

        // A label another manager also set survives.
        let mut labelled = live.clone();
        labelled["metadata"]["labels"]["team"] = json!("x");
        let entries = track_update(
            Some(&live),
            &labelled,
            managed_fields(&live),
            &mgr("kubectl-label"),
            true,
        );
        set_managed_fields(&mut labelled, &entries);
        let next = apply(
            Some(&labelled),
            &deployment(2, "a"),
            &mgr("kubectl"),
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            next["metadata"]["labels"],
            json!({"app": "web", "team": "x"})
        );
    }

    #[test]
    fn keyed_list_items_merge_by_key_and_removed_items_go() {
        let mut two = deployment(1, "a");
        two["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "web", "image": "a"}, {"name": "side", "image": "s"}]);
        let live = apply(None, &two, &mgr("kubectl"), false, true).unwrap();
        let next = apply(
            Some(&live),
            &deployment(1, "b"),
            &mgr("kubectl"),
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            next["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "b"}])
        );
    }

    #[test]
    fn updates_take_ownership_of_changed_fields_only() {
        let old = deployment(1, "a");
        let entries = track_update(None, &old, vec![], &mgr("kubectl-create"), true);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        let entries = track_update(Some(&old), &new, entries, &mgr("kubectl-scale"), true);
        let scale = entries
            .iter()
            .find(|e| e.manager == "kubectl-scale")
            .unwrap();
        assert_eq!(
            scale.fields.leaves(),
            vec![vec!["f:spec".to_string(), "f:replicas".to_string()]]
        );
        let create = entries
            .iter()
            .find(|e| e.manager == "kubectl-create")
            .unwrap();
        assert!(
            !create
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()])
        );
    }

    #[test]
    fn paths_render_like_kubernetes() {
        let path: Path = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(render_path(&path), ".spec.containers[name=\"web\"].image");
    }
}
