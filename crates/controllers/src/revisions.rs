//! ControllerRevisions, the template history of DaemonSets and
//! StatefulSets (upstream `pkg/controller/history`): one revision per
//! distinct pod template, named `<owner>-<hash>`, numbered by
//! `revision`; the number is bumped when an old template comes back
//! (a rollback), and revisions no live pod uses are trimmed beyond
//! `revisionHistoryLimit`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::deployment::{prune_empty, template_hash};

/// The label on pods (and revisions) naming the revision they come from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The template as compared between an owner and its revisions: without
/// empty fields.
fn normalized(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or(Value::Null);
    prune_empty(&mut v);
    v
}

/// What a revision stores: upstream's patch `{"spec":{"template":…}}`.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision stores, if it is readable.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// What to do with an owner's revisions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The hash of the current template (the DaemonSet pod label).
    pub hash: String,
    /// The name of the current template's revision (`<owner>-<hash>`, the
    /// StatefulSet pod label and `status.updateRevision`).
    pub name: String,
    /// A revision to create for the current template.
    pub create: Option<ControllerRevision>,
    /// An existing revision that becomes the newest again: (name, number).
    pub renumber: Option<(String, i64)>,
    /// Old revisions to delete (history limit).
    pub delete: Vec<String>,
    /// A revision of that name holds another template: bump
    /// `status.collisionCount` and look again.
    pub collision: bool,
}

/// What the revision plan reads of the owner.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub meta: &'a ObjectMeta,
    pub owner_ref: OwnerReference,
    pub template: &'a PodTemplateSpec,
    pub collision_count: Option<i32>,
    /// `revisionHistoryLimit` (default 10).
    pub history_limit: i32,
}

/// The pure decision. `revisions` are the owner's; `in_use` the revision
/// names pods (or the status) still refer to, which are never trimmed.
pub fn plan(
    owner: &Owner<'_>,
    revisions: &[ControllerRevision],
    in_use: &BTreeSet<String>,
) -> Plan {
    let hash = template_hash(owner.template, owner.collision_count);
    let name = format!("{}-{hash}", owner.meta.name.as_deref().unwrap_or_default());
    let want = normalized(owner.template);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut plan = Plan {
        hash: hash.clone(),
        name: name.clone(),
        ..Default::default()
    };
    let equal = revisions
        .iter()
        .find(|r| template_of(r).is_some_and(|t| normalized(&t) == want));
    match equal {
        Some(r) => {
            // An equal revision under another name (another collision
            // count) is still the current one.
            plan.name = r.name_any();
            plan.hash = r
                .labels()
                .get(HASH_LABEL)
                .cloned()
                .unwrap_or_else(|| hash.clone());
            if r.revision < max {
                plan.renumber = Some((r.name_any(), max + 1));
            }
        }
        None if revisions.iter().any(|r| r.name_any() == name) => {
            plan.collision = true;
            return plan;
        }
        None => {
            let mut labels = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            plan.create = Some(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: owner.meta.namespace.clone(),
                    labels: Some(labels),
                    owner_references: Some(vec![owner.owner_ref.clone()]),
                    ..Default::default()
                },
                data: Some(RawExtension(revision_data(owner.template))),
                revision: max + 1,
            });
        }
    }
    let mut old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| {
            let n = r.name_any();
            n != plan.name && !in_use.contains(&n)
        })
        .collect();
    let limit = owner.history_limit.max(0) as usize;
    if old.len() > limit {
        old.sort_by_key(|r| r.revision);
        plan.delete = old[..old.len() - limit]
            .iter()
            .map(|r| r.name_any())
            .collect();
    }
    plan
}

/// Applies a revision plan.
pub async fn apply(api: &kube::Api<ControllerRevision>, plan: &Plan) -> Result<(), crate::Error> {
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    if let Some(rev) = &plan.create {
        match api.create(&PostParams::default(), rev).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some((name, number)) = &plan.renumber {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"revision": number})),
        )
        .await?;
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "d".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn owner_meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("d".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            ..Default::default()
        }
    }

    fn revision(image: &str, number: i64) -> ControllerRevision {
        let meta = owner_meta();
        let t = template(image);
        let owner = Owner {
            meta: &meta,
            owner_ref: OwnerReference::default(),
            template: &t,
            collision_count: None,
            history_limit: 10,
        };
        let mut r = plan(&owner, &[], &BTreeSet::new()).create.unwrap();
        r.revision = number;
        r
    }

    #[test]
    fn revisions_follow_the_template() {
        let meta = owner_meta();
        struct Case {
            name: &'static str,
            image: &'static str,
            existing: Vec<ControllerRevision>,
            limit: i32,
            create: Option<i64>,
            renumber: Option<i64>,
            delete: usize,
        }
        let cases = [
            Case {
                name: "first template creates revision 1",
                image: "a",
                existing: vec![],
                limit: 10,
                create: Some(1),
                renumber: None,
                delete: 0,
            },
            Case {
                name: "unchanged template does nothing",
                image: "a",
                existing: vec![revision("a", 1)],
                limit: 10,
                create: None,
                renumber: None,
                delete: 0,
            },
            Case {
                name: "new template creates the next revision",
                image: "b",
                existing: vec![revision("a", 1)],
                limit: 10,
                create: Some(2),
                renumber: None,
                delete: 0,
            },
            Case {
                name: "rollback renumbers the old revision",
                image: "a",
                existing: vec![revision("a", 1), revision("b", 2)],
                limit: 10,
                create: None,
                renumber: Some(3),
                delete: 0,
            },
            Case {
                name: "history beyond the limit is trimmed oldest first",
                image: "c",
                existing: vec![revision("a", 1), revision("b", 2)],
                limit: 1,
                create: Some(3),
                renumber: None,
                delete: 1,
            },
        ];
        for c in cases {
            let t = template(c.image);
            let owner = Owner {
                meta: &meta,
                owner_ref: OwnerReference::default(),
                template: &t,
                collision_count: None,
                history_limit: c.limit,
            };
            let p = plan(&owner, &c.existing, &BTreeSet::new());
            assert_eq!(p.create.map(|r| r.revision), c.create, "{}: create", c.name);
            assert_eq!(p.renumber.map(|r| r.1), c.renumber, "{}: renumber", c.name);
            assert_eq!(p.delete.len(), c.delete, "{}: delete", c.name);
            assert!(p.name.starts_with("d-"), "{}", c.name);
        }
    }

    #[test]
    fn stored_templates_read_back_unchanged() {
        let r = revision("a", 1);
        assert_eq!(template_of(&r), Some(template("a")));
        assert_eq!(
            r.labels().get(HASH_LABEL).map(String::as_str),
            r.name_any().strip_prefix("d-")
        );
    }
}
