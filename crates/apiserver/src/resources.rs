//! The table of served resources. Everything generic (routing, discovery,
//! storage keys, validation of names) is driven from [`RESOURCES`]; adding a
//! kind is adding a row.

use std::time::Duration;

/// How a kind's `metadata.name` is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces, nodes are subdomains in Kubernetes).
    Label,
    /// RFC 1035 label (services).
    Label1035,
    /// Any name that is a valid path segment (RBAC kinds, e.g. `system:admin`).
    PathSegment,
}

/// A served subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `<resource>/status`: get, update and patch of `.status` only.
    Status,
    /// `<resource>/scale`: an `autoscaling/v1` Scale view of
    /// `spec.replicas`.
    Scale,
    /// `pods/binding`: create a `Binding` to assign the pod to a node.
    Binding,
    /// `pods/eviction`: create a `policy/v1` `Eviction` to delete the pod
    /// within its disruption budget.
    Eviction,
    /// `namespaces/finalize`: update of `spec.finalizers` only.
    Finalize,
    /// `pods/log`: the container's log, from the node agent.
    Log,
    /// `pods/exec`: a command in a container, streamed through the node
    /// agent.
    Exec,
    /// `pods/attach`: a running container's stdio, streamed through the
    /// node agent.
    Attach,
    /// `pods/portforward`: TCP connections to the pod's ports, tunnelled
    /// through the node agent.
    PortForward,
    /// `serviceaccounts/token`: create a TokenRequest.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
            Subresource::Token => "token",
        }
    }

    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Binding | Subresource::Eviction => &["create"],
            Subresource::Finalize => &["update"],
            Subresource::Log => &["get"],
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => {
                &["create", "get"]
            }
            Subresource::Token => &["create"],
        }
    }

    /// The (group, version, kind) the subresource answers with.
    pub fn response_kind(self, def: &ResourceDef) -> (&'static str, &'static str, &'static str) {
        match self {
            Subresource::Status => (def.group, def.version, def.kind),
            Subresource::Scale => ("autoscaling", "v1", "Scale"),
            Subresource::Binding => ("", "v1", "Binding"),
            Subresource::Eviction => ("policy", "v1", "Eviction"),
            Subresource::Finalize => (def.group, def.version, def.kind),
            Subresource::Log => ("", "v1", "Pod"),
            Subresource::Exec => ("", "v1", "PodExecOptions"),
            Subresource::Attach => ("", "v1", "PodAttachOptions"),
            Subresource::PortForward => ("", "v1", "PodPortForwardOptions"),
            Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        }
    }

    pub fn parse(s: &str) -> Option<Subresource> {
        match s {
            "status" => Some(Subresource::Status),
            "scale" => Some(Subresource::Scale),
            "binding" => Some(Subresource::Binding),
            "eviction" => Some(Subresource::Eviction),
            "finalize" => Some(Subresource::Finalize),
            "log" => Some(Subresource::Log),
            "exec" => Some(Subresource::Exec),
            "attach" => Some(Subresource::Attach),
            "portforward" => Some(Subresource::PortForward),
            "token" => Some(Subresource::Token),
            _ => None,
        }
    }
}

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; empty for the core (`/api/v1`) group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub subresources: &'static [Subresource],
    pub name_rule: NameRule,
    /// Objects expire this long after their last write (events).
    pub ttl: Option<Duration>,
}

/// The verbs every resource serves.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The group as it appears in storage keys (`core` for the empty group).
    pub fn storage_group(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    pub fn has_subresource(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The storage key prefix of this resource, optionally of one namespace;
    /// ends with `/`.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("/registry/{}/{}/{ns}/", self.storage_group(), self.plural)
            }
            _ => format!("/registry/{}/{}/", self.storage_group(), self.plural),
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }
}

const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
const NAMESPACE_SUBRESOURCES: &[Subresource] = &[Subresource::Status, Subresource::Finalize];
const POD_SUBRESOURCES: &[Subresource] = &[
    Subresource::Status,
    Subresource::Binding,
    Subresource::Eviction,
    Subresource::Log,
    Subresource::Exec,
    Subresource::Attach,
    Subresource::PortForward,
];
const NONE: &[Subresource] = &[];
const ALL: &[&str] = &["all"];

#[allow(clippy::too_many_arguments)]
const fn def(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    namespaced: bool,
    subresources: &'static [Subresource],
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        categories,
        namespaced,
        subresources,
        name_rule: NameRule::Subdomain,
        ttl: None,
    }
}

const fn with_name_rule(mut d: ResourceDef, rule: NameRule) -> ResourceDef {
    d.name_rule = rule;
    d
}

const fn with_ttl(mut d: ResourceDef, ttl: Duration) -> ResourceDef {
    d.ttl = Some(ttl);
    d
}

/// Kubernetes keeps events for an hour (`--event-ttl`).
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// Every served resource. Groups appear in the order discovery lists them.
pub static RESOURCES: &[ResourceDef] = &[
    // core/v1
    def(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        &[],
        true,
        NONE,
    ),
    def(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        &["ep"],
        &[],
        true,
        NONE,
    ),
    with_ttl(
        def("", "Event", "events", "event", &["ev"], &[], true, NONE),
        EVENT_TTL,
    ),
    def(
        "",
        "LimitRange",
        "limitranges",
        "limitrange",
        &["limits"],
        &[],
        true,
        NONE,
    ),
    with_name_rule(
        def(
            "",
            "Namespace",
            "namespaces",
            "namespace",
            &["ns"],
            &[],
            false,
            NAMESPACE_SUBRESOURCES,
        ),
        NameRule::Label,
    ),
    def("", "Node", "nodes", "node", &["no"], &[], false, STATUS),
    def(
        "",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        &["pvc"],
        &[],
        true,
        STATUS,
    ),
    def(
        "",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        &["pv"],
        &[],
        false,
        STATUS,
    ),
    def(
        "",
        "Pod",
        "pods",
        "pod",
        &["po"],
        ALL,
        true,
        POD_SUBRESOURCES,
    ),
    def(
        "",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        &["rc"],
        ALL,
        true,
        STATUS_SCALE,
    ),
    def(
        "",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        &["quota"],
        &[],
        true,
        STATUS,
    ),
    def("", "Secret", "secrets", "secret", &[], &[], true, NONE),
    def(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        &[],
        true,
        &[Subresource::Token],
    ),
    with_name_rule(
        def(
            "",
            "Service",
            "services",
            "service",
            &["svc"],
            ALL,
            true,
            STATUS,
        ),
        NameRule::Label1035,
    ),
    // apps/v1
    def(
        "apps",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        &[],
        &[],
        true,
        NONE,
    ),
    def(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        ALL,
        true,
        STATUS,
    ),
    def(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        ALL,
        true,
        STATUS_SCALE,
    ),
    def(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        ALL,
        true,
        STATUS_SCALE,
    ),
    def(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        &["sts"],
        ALL,
        true,
        STATUS_SCALE,
    ),
    // batch/v1
    def(
        "batch",
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        ALL,
        true,
        STATUS,
    ),
    def("batch", "Job", "jobs", "job", &[], ALL, true, STATUS),
    // coordination.k8s.io/v1
    def(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        &[],
        &[],
        true,
        NONE,
    ),
    // discovery.k8s.io/v1
    def(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        &[],
        &[],
        true,
        NONE,
    ),
    // events.k8s.io/v1
    with_ttl(
        def(
            "events.k8s.io",
            "Event",
            "events",
            "event",
            &["ev"],
            &[],
            true,
            NONE,
        ),
        EVENT_TTL,
    ),
    // networking.k8s.io/v1
    def(
        "networking.k8s.io",
        "Ingress",
        "ingresses",
        "ingress",
        &["ing"],
        &[],
        true,
        STATUS,
    ),
    def(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        &["netpol"],
        &[],
        true,
        NONE,
    ),
    // policy/v1
    def(
        "policy",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        &["pdb"],
        &[],
        true,
        STATUS,
    ),
    // rbac.authorization.k8s.io/v1
    with_name_rule(
        def(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "clusterrolebindings",
            "clusterrolebinding",
            &[],
            &[],
            false,
            NONE,
        ),
        NameRule::PathSegment,
    ),
    with_name_rule(
        def(
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "clusterroles",
            "clusterrole",
            &[],
            &[],
            false,
            NONE,
        ),
        NameRule::PathSegment,
    ),
    with_name_rule(
        def(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            "rolebindings",
            "rolebinding",
            &[],
            &[],
            true,
            NONE,
        ),
        NameRule::PathSegment,
    ),
    with_name_rule(
        def(
            "rbac.authorization.k8s.io",
            "Role",
            "roles",
            "role",
            &[],
            &[],
            true,
            NONE,
        ),
        NameRule::PathSegment,
    ),
    // scheduling.k8s.io/v1
    def(
        "scheduling.k8s.io",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        &["pc"],
        &[],
        false,
        NONE,
    ),
    // storage.k8s.io/v1
    def(
        "storage.k8s.io",
        "StorageClass",
        "storageclasses",
        "storageclass",
        &["sc"],
        &[],
        false,
        NONE,
    ),
];

/// The resource `plural` of `group`/`version`, if served.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// The served API groups (excluding core) in discovery order, each with its
/// versions.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for d in RESOURCES.iter().filter(|d| !d.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == d.group) {
            Some((_, versions)) => {
                if !versions.contains(&d.version) {
                    versions.push(d.version);
                }
            }
            None => out.push((d.group, vec![d.version])),
        }
    }
    out
}

/// The served resources of one group version.
pub fn in_group_version(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceDef> {
    let group = group.to_string();
    let version = version.to_string();
    RESOURCES
        .iter()
        .filter(move |d| d.group == group && d.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_unique_per_group_version() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.group == b.group && a.version == b.version && a.plural == b.plural),
                    "{}/{} twice",
                    a.group,
                    a.plural
                );
            }
        }
    }

    #[test]
    fn storage_keys_follow_registry_layout() {
        let cases = [
            (
                find("", "v1", "pods"),
                Some("default"),
                "x",
                "/registry/core/pods/default/x",
            ),
            (
                find("", "v1", "nodes"),
                None,
                "n1",
                "/registry/core/nodes/n1",
            ),
            (
                find("apps", "v1", "deployments"),
                Some("ns"),
                "d",
                "/registry/apps/deployments/ns/d",
            ),
            (
                find("", "v1", "namespaces"),
                Some("ignored"),
                "kube-system",
                "/registry/core/namespaces/kube-system",
            ),
        ];
        for (def, ns, name, want) in cases {
            let def = def.expect("resource in table");
            assert_eq!(def.key(ns, name), want);
        }
    }
}
