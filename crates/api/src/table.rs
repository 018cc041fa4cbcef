//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get`
//! asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with
//! the columns of Kubernetes' own printers (`pkg/printers/internalversion`).
//! Columns with priority 1 are the extra ones `-o wide` shows.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::duration::human_duration;

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `date`…
    pub kind: &'static str,
    /// `name` for the NAME column, else empty.
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: i32,
}

const fn col(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority: 1,
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
};
const AGE: Column = col(
    "Age",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// What each row carries besides its cells (the `includeObject` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    /// `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: &str) -> Option<IncludeObject> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" | "" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// The columns for a resource (by API group and plural name).
pub fn columns(group: &str, plural: &str) -> Vec<Column> {
    let c = |cols: &[Column]| cols.to_vec();
    match (group, plural) {
        ("", "pods") => c(&[
            NAME,
            col(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            wide(
                "IP",
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            wide("Node", "Name of the node this pod is assigned to."),
            wide(
                "Nominated Node",
                "Name of the node that the pod is nominated to run on after preemption.",
            ),
            wide(
                "Readiness Gates",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ]),
        ("", "namespaces") => c(&[NAME, col("Status", "The status of the namespace"), AGE]),
        ("", "nodes") => c(&[
            NAME,
            col("Status", "The status of the node"),
            col("Roles", "The roles of the node"),
            AGE,
            col("Version", "Kubelet Version reported by the node."),
            wide(
                "Internal-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "External-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "OS-Image",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            wide(
                "Kernel-Version",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            wide(
                "Container-Runtime",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ]),
        ("", "services") => c(&[
            NAME,
            col("Type", "type determines how the Service is exposed."),
            col("Cluster-IP", "clusterIP is the IP address of the service."),
            col(
                "External-IP",
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            wide(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ]),
        ("", "endpoints") => c(&[
            NAME,
            col("Endpoints", "Endpoints is the list of endpoints."),
            AGE,
        ]),
        ("", "configmaps") => c(&[
            NAME,
            integer("Data", "Data contains the configuration data."),
            AGE,
        ]),
        ("", "secrets") => c(&[
            NAME,
            col("Type", "The type of the secret"),
            integer("Data", "The number of entries in the secret"),
            AGE,
        ]),
        ("", "serviceaccounts") => c(&[
            NAME,
            integer(
                "Secrets",
                "Secrets is the list of secrets allowed to be used by pods running using this ServiceAccount.",
            ),
            AGE,
        ]),
        ("", "events") | ("events.k8s.io", "events") => c(&[
            col(
                "Last Seen",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            col(
                "Reason",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", "The object that this event is about."),
            wide(
                "Subobject",
                "The subobject (e.g. a container) that this event is about.",
            ),
            wide("Source", "The component reporting this event."),
            col(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            wide(
                "First Seen",
                "The time at which the event was first recorded.",
            ),
            wide("Count", "The number of times this event has occurred."),
            wide("Name", "Name must be unique within a namespace."),
        ]),
        ("", "replicationcontrollers") => c(&[
            NAME,
            integer("Desired", "Replicas is the number of desired replicas."),
            integer("Current", "The most recently observed number of replicas."),
            integer(
                "Ready",
                "The number of ready replicas for this replication controller.",
            ),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "Selector is a label query over pods that should match the Replicas count.",
            ),
        ]),
        ("", "persistentvolumes") => c(&[
            NAME,
            col(
                "Capacity",
                "capacity is the description of the persistent volume's resources and capacity.",
            ),
            col(
                "Access Modes",
                "accessModes contains all ways the volume can be mounted.",
            ),
            col(
                "Reclaim Policy",
                "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
            ),
            col(
                "Status",
                "phase indicates if a volume is available, bound to a claim, or released by a claim.",
            ),
            col(
                "Claim",
                "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
            ),
            col(
                "StorageClass",
                "storageClassName is the name of StorageClass to which this persistent volume belongs.",
            ),
            col(
                "VolumeAttributesClass",
                "Name of VolumeAttributesClass to which this persistent volume belongs.",
            ),
            col(
                "Reason",
                "reason is a brief CamelCase string that describes any failure.",
            ),
            AGE,
            wide(
                "VolumeMode",
                "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
            ),
        ]),
        ("", "persistentvolumeclaims") => c(&[
            NAME,
            col(
                "Status",
                "phase represents the current phase of PersistentVolumeClaim.",
            ),
            col(
                "Volume",
                "volumeName is the binding reference to the PersistentVolume backing this claim.",
            ),
            col(
                "Capacity",
                "capacity represents the actual resources of the underlying volume.",
            ),
            col(
                "Access Modes",
                "accessModes contains the desired access modes the volume should have.",
            ),
            col(
                "StorageClass",
                "storageClassName is the name of the StorageClass required by the claim.",
            ),
            col(
                "VolumeAttributesClass",
                "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.",
            ),
            AGE,
            wide(
                "VolumeMode",
                "volumeMode defines what type of volume is required by the claim.",
            ),
        ]),
        ("", "resourcequotas") => c(&[
            NAME,
            AGE,
            col(
                "Request",
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            col(
                "Limit",
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ]),
        ("", "limitranges") => c(&[
            NAME,
            col(
                "Created At",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]),
        ("apps", "deployments") => c(&[
            NAME,
            col("Ready", "Number of the pod with ready state"),
            integer(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            integer(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ]),
        ("apps", "replicasets") => c(&[
            NAME,
            integer("Desired", "Replicas is the number of desired replicas."),
            integer("Current", "The most recently observed number of replicas."),
            integer(
                "Ready",
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "Selector is a label query over pods that should match the replica count.",
            ),
        ]),
        ("apps", "statefulsets") => c(&[
            NAME,
            col("Ready", "Number of the pod with ready state"),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
        ]),
        ("apps", "daemonsets") => c(&[
            NAME,
            integer(
                "Desired",
                "The total number of nodes that should be running the daemon pod.",
            ),
            integer(
                "Current",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            integer(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            integer(
                "Up-to-date",
                "The total number of nodes that are running updated daemon pod",
            ),
            integer(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            col(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "A label query over pods that are managed by the daemon set.",
            ),
        ]),
        ("apps", "controllerrevisions") => c(&[
            NAME,
            col("Controller", "Controller of the object"),
            integer(
                "Revision",
                "Revision indicates the revision of the state represented by Data.",
            ),
            AGE,
        ]),
        ("batch", "jobs") => c(&[
            NAME,
            col("Status", "Status of the job."),
            col(
                "Completions",
                "The desired number of successfully finished pods the job should be run with.",
            ),
            col("Duration", "Time required to complete the job."),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "A label query over pods that should match the pod count.",
            ),
        ]),
        ("batch", "cronjobs") => c(&[
            NAME,
            col(
                "Schedule",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            col(
                "Timezone",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            col(
                "Suspend",
                "This flag tells the controller to suspend subsequent executions.",
            ),
            integer("Active", "A list of pointers to currently running jobs."),
            col(
                "Last Schedule",
                "Information when was the last time the job was successfully scheduled.",
            ),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide(
                "Images",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "A label query over pods that should match the pod count.",
            ),
        ]),
        ("coordination.k8s.io", "leases") => c(&[
            NAME,
            col(
                "Holder",
                "HolderIdentity contains the identity of the holder of a current lease.",
            ),
            AGE,
        ]),
        ("discovery.k8s.io", "endpointslices") => c(&[
            NAME,
            col(
                "AddressType",
                "Type of address carried by this EndpointSlice",
            ),
            col("Ports", "Ports advertised by this EndpointSlice"),
            col("Endpoints", "Endpoints represented by this EndpointSlice"),
            AGE,
        ]),
        ("networking.k8s.io", "ingresses") => c(&[
            NAME,
            col(
                "Class",
                "The name of the IngressClass resource that should be used for ingress",
            ),
            col(
                "Hosts",
                "Hosts that incoming requests are matched against before the ingress rule",
            ),
            col(
                "Address",
                "Address is a list containing ingress points for the load-balancer",
            ),
            col("Ports", "Ports of TLS configurations that open"),
            AGE,
        ]),
        ("networking.k8s.io", "networkpolicies") => c(&[
            NAME,
            col(
                "Pod-Selector",
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            AGE,
        ]),
        ("policy", "poddisruptionbudgets") => c(&[
            NAME,
            col(
                "Min Available",
                "The minimum number of pods that must be available simultaneously.",
            ),
            col(
                "Max Unavailable",
                "The maximum number of pods that may be unavailable simultaneously.",
            ),
            integer(
                "Allowed Disruptions",
                "Calculated number of pods that may be disrupted at this time.",
            ),
            AGE,
        ]),
        ("rbac.authorization.k8s.io", "roles") | ("rbac.authorization.k8s.io", "clusterroles") => {
            c(&[
                NAME,
                col(
                    "Created At",
                    "CreationTimestamp is a timestamp representing the server time when this object was created.",
                ),
            ])
        }
        ("rbac.authorization.k8s.io", "rolebindings")
        | ("rbac.authorization.k8s.io", "clusterrolebindings") => c(&[
            NAME,
            col("Role", "RoleRef is the reference to the role being bound."),
            AGE,
            wide("Users", "Users in the roleBinding"),
            wide("Groups", "Groups in the roleBinding"),
            wide("ServiceAccounts", "ServiceAccounts in the roleBinding"),
        ]),
        ("scheduling.k8s.io", "priorityclasses") => c(&[
            NAME,
            integer("Value", "The value of this priority class."),
            col(
                "Global-Default",
                "globalDefault specifies whether this PriorityClass should be considered as the default priority.",
            ),
            AGE,
            col(
                "Preemption-Policy",
                "PreemptionPolicy is the Policy for preempting pods with lower priority.",
            ),
        ]),
        ("storage.k8s.io", "storageclasses") => c(&[
            NAME,
            col("Provisioner", "Indicates the type of the provisioner."),
            col("ReclaimPolicy", "Indicates the type of the reclaim policy."),
            col(
                "VolumeBindingMode",
                "Indicates the binding mode of the volume.",
            ),
            col(
                "AllowVolumeExpansion",
                "Indicates whether the storage class allow volume expand.",
            ),
            AGE,
        ]),
        _ => c(&[NAME, AGE]),
    }
}

const fn integer(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "integer",
        format: "",
        description,
        priority: 0,
    }
}

/// The cells of one object's row, in the order of [`columns`].
pub fn cells(group: &str, plural: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(text(obj, &["metadata", "name"]));
    let age = json!(age(obj, now));
    match (group, plural) {
        ("", "pods") => pod_cells(obj, now),
        ("", "namespaces") => vec![name, json!(text(obj, &["status", "phase"])), age],
        ("", "nodes") => node_cells(obj, now),
        ("", "services") => service_cells(obj, now),
        ("", "endpoints") => vec![name, json!(endpoints_summary(obj)), age],
        ("", "configmaps") => vec![
            name,
            json!(len_of(obj, "data") + len_of(obj, "binaryData")),
            age,
        ],
        ("", "secrets") => vec![
            name,
            json!(text(obj, &["type"])),
            json!(len_of(obj, "data")),
            age,
        ],
        ("", "serviceaccounts") => vec![name, json!(len_of(obj, "secrets")), age],
        ("", "events") | ("events.k8s.io", "events") => event_cells(obj, now),
        ("", "replicationcontrollers") => {
            let sel = get(obj, &["spec", "selector"])
                .map(map_selector)
                .unwrap_or_default();
            let mut v = vec![
                name,
                json!(int(obj, &["spec", "replicas"])),
                json!(int(obj, &["status", "replicas"])),
                json!(int(obj, &["status", "readyReplicas"])),
                age,
            ];
            v.extend(template_wide(obj, or_none(sel)));
            v
        }
        ("", "persistentvolumes") => {
            let claim = match get(obj, &["spec", "claimRef"]) {
                Some(c) => format!("{}/{}", text(c, &["namespace"]), text(c, &["name"])),
                None => String::new(),
            };
            vec![
                name,
                json!(text(obj, &["spec", "capacity", "storage"])),
                json!(access_modes(get(obj, &["spec", "accessModes"]))),
                json!(text(obj, &["spec", "persistentVolumeReclaimPolicy"])),
                json!(text(obj, &["status", "phase"])),
                json!(claim),
                json!(text(obj, &["spec", "storageClassName"])),
                json!(or_unset(text(obj, &["spec", "volumeAttributesClassName"]))),
                json!(text(obj, &["status", "reason"])),
                age,
                json!(or_filesystem(text(obj, &["spec", "volumeMode"]))),
            ]
        }
        ("", "persistentvolumeclaims") => vec![
            name,
            json!(text(obj, &["status", "phase"])),
            json!(text(obj, &["spec", "volumeName"])),
            json!(text(obj, &["status", "capacity", "storage"])),
            json!(access_modes(get(obj, &["status", "accessModes"]))),
            json!(text(obj, &["spec", "storageClassName"])),
            json!(or_unset(text(obj, &["spec", "volumeAttributesClassName"]))),
            age,
            json!(or_filesystem(text(obj, &["spec", "volumeMode"]))),
        ],
        ("", "resourcequotas") => {
            let (req, lim) = quota_summary(obj);
            vec![name, age, json!(req), json!(lim)]
        }
        ("", "limitranges") => vec![name, json!(text(obj, &["metadata", "creationTimestamp"]))],
        ("apps", "deployments") => {
            let mut v = vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(obj, &["status", "readyReplicas"]),
                    int(obj, &["spec", "replicas"])
                )),
                json!(int(obj, &["status", "updatedReplicas"])),
                json!(int(obj, &["status", "availableReplicas"])),
                age,
            ];
            v.extend(template_wide(
                obj,
                label_selector(get(obj, &["spec", "selector"])),
            ));
            v
        }
        ("apps", "replicasets") => {
            let mut v = vec![
                name,
                json!(int(obj, &["spec", "replicas"])),
                json!(int(obj, &["status", "replicas"])),
                json!(int(obj, &["status", "readyReplicas"])),
                age,
            ];
            v.extend(template_wide(
                obj,
                label_selector(get(obj, &["spec", "selector"])),
            ));
            v
        }
        ("apps", "statefulsets") => {
            let mut v = vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(obj, &["status", "readyReplicas"]),
                    int(obj, &["spec", "replicas"])
                )),
                age,
            ];
            let mut w = template_wide(obj, String::new());
            w.pop(); // statefulsets have no selector column
            v.extend(w);
            v
        }
        ("apps", "daemonsets") => {
            let node_selector = get(obj, &["spec", "template", "spec", "nodeSelector"])
                .map(map_selector)
                .unwrap_or_default();
            let mut v = vec![
                name,
                json!(int(obj, &["status", "desiredNumberScheduled"])),
                json!(int(obj, &["status", "currentNumberScheduled"])),
                json!(int(obj, &["status", "numberReady"])),
                json!(int(obj, &["status", "updatedNumberScheduled"])),
                json!(int(obj, &["status", "numberAvailable"])),
                json!(or_none(node_selector)),
                age,
            ];
            v.extend(template_wide(
                obj,
                label_selector(get(obj, &["spec", "selector"])),
            ));
            v
        }
        ("apps", "controllerrevisions") => {
            let controller = get(obj, &["metadata", "ownerReferences"])
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter()
                        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                })
                .map(|r| {
                    let group = text(r, &["apiVersion"])
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let kind = text(r, &["kind"]).to_lowercase();
                    let g = if text(r, &["apiVersion"]).contains('/') {
                        format!("{kind}.{group}")
                    } else {
                        kind
                    };
                    format!("{g}/{}", text(r, &["name"]))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(int(obj, &["revision"])), age]
        }
        ("batch", "jobs") => job_cells(obj, now),
        ("batch", "cronjobs") => {
            let last = get(obj, &["status", "lastScheduleTime"])
                .and_then(Value::as_str)
                .and_then(parse_time)
                .map(|t| human_duration(now - t))
                .unwrap_or_else(|| "<none>".into());
            let mut v = vec![
                name,
                json!(text(obj, &["spec", "schedule"])),
                json!(or_none(text(obj, &["spec", "timeZone"]).to_string())),
                json!(
                    get(obj, &["spec", "suspend"])
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()
                ),
                json!(len_at(obj, &["status", "active"])),
                json!(last),
                age,
            ];
            let spec = get(obj, &["spec", "jobTemplate", "spec"])
                .cloned()
                .unwrap_or(Value::Null);
            let shim = json!({"spec": spec});
            v.extend(template_wide(
                &shim,
                label_selector(get(&shim, &["spec", "selector"])),
            ));
            v
        }
        ("coordination.k8s.io", "leases") => {
            vec![name, json!(text(obj, &["spec", "holderIdentity"])), age]
        }
        ("discovery.k8s.io", "endpointslices") => endpointslice_cells(obj, now),
        ("networking.k8s.io", "ingresses") => ingress_cells(obj, now),
        ("networking.k8s.io", "networkpolicies") => vec![
            name,
            json!(or_none(label_selector(get(obj, &["spec", "podSelector"])))),
            age,
        ],
        ("policy", "poddisruptionbudgets") => vec![
            name,
            json!(or_na(int_or_string(get(obj, &["spec", "minAvailable"])))),
            json!(or_na(int_or_string(get(obj, &["spec", "maxUnavailable"])))),
            json!(int(obj, &["status", "disruptionsAllowed"])),
            age,
        ],
        ("rbac.authorization.k8s.io", "roles") | ("rbac.authorization.k8s.io", "clusterroles") => {
            vec![name, json!(text(obj, &["metadata", "creationTimestamp"]))]
        }
        ("rbac.authorization.k8s.io", "rolebindings")
        | ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            let role = format!(
                "{}/{}",
                text(obj, &["roleRef", "kind"]),
                text(obj, &["roleRef", "name"])
            );
            let subjects = get(obj, &["subjects"]).and_then(Value::as_array);
            let pick = |kind: &str| -> String {
                subjects
                    .map(|s| {
                        s.iter()
                            .filter(|s| text(s, &["kind"]) == kind)
                            .map(|s| {
                                if kind == "ServiceAccount" {
                                    format!("{}/{}", text(s, &["namespace"]), text(s, &["name"]))
                                } else {
                                    text(s, &["name"]).to_string()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(role),
                age,
                json!(pick("User")),
                json!(pick("Group")),
                json!(pick("ServiceAccount")),
            ]
        }
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name,
            json!(int(obj, &["value"])),
            json!(
                get(obj, &["globalDefault"])
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
            ),
            age,
            json!(or_default(
                text(obj, &["preemptionPolicy"]),
                "PreemptLowerPriority"
            )),
        ],
        ("storage.k8s.io", "storageclasses") => {
            let is_default = get(obj, &["metadata", "annotations"])
                .and_then(|a| {
                    a.get("storageclass.kubernetes.io/is-default-class")
                        .or_else(|| a.get("storageclass.beta.kubernetes.io/is-default-class"))
                })
                .and_then(Value::as_str)
                == Some("true");
            let shown = if is_default {
                format!("{} (default)", text(obj, &["metadata", "name"]))
            } else {
                text(obj, &["metadata", "name"]).to_string()
            };
            vec![
                json!(shown),
                json!(text(obj, &["provisioner"])),
                json!(or_default(text(obj, &["reclaimPolicy"]), "Delete")),
                json!(or_default(text(obj, &["volumeBindingMode"]), "Immediate")),
                json!(
                    get(obj, &["allowVolumeExpansion"])
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()
                ),
                age,
            ]
        }
        _ => vec![name, age],
    }
}

/// The whole Table for a list (or a single object) of one resource.
pub fn table(
    group: &str,
    plural: &str,
    objects: &[Value],
    now: i64,
    include: IncludeObject,
    list_metadata: Value,
) -> Value {
    let column_definitions: Vec<Value> = columns(group, plural)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(group, plural, obj, now)));
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => {
                    row.insert("object".into(), obj.clone());
                }
                IncludeObject::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

// ---- field helpers ----

fn get<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        cur = cur.get(*p)?;
    }
    Some(cur)
}

fn text<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    get(obj, path).and_then(Value::as_str).unwrap_or("")
}

fn int(obj: &Value, path: &[&str]) -> i64 {
    get(obj, path).and_then(Value::as_i64).unwrap_or(0)
}

fn len_of(obj: &Value, field: &str) -> usize {
    len_at(obj, &[field])
}

fn len_at(obj: &Value, path: &[&str]) -> usize {
    match get(obj, path) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s.into()
    }
}

fn or_na(s: String) -> String {
    if s.is_empty() { "N/A".into() } else { s }
}

fn or_filesystem(s: &str) -> String {
    if s.is_empty() {
        "Filesystem".into()
    } else {
        s.into()
    }
}

fn or_default(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.into()
    } else {
        s.into()
    }
}

fn int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Parses an RFC 3339 timestamp into Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn age(obj: &Value, now: i64) -> String {
    match get(obj, &["metadata", "creationTimestamp"])
        .and_then(Value::as_str)
        .and_then(parse_time)
    {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn since(v: Option<&Value>, now: i64) -> Option<String> {
    v.and_then(Value::as_str)
        .and_then(parse_time)
        .map(|t| human_duration(now - t))
}

fn map_selector(v: &Value) -> String {
    match v.as_object() {
        Some(m) => {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            pairs.sort();
            pairs.join(",")
        }
        None => String::new(),
    }
}

/// `metav1.FormatLabelSelector`.
fn label_selector(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
        let mut keys: Vec<_> = m.keys().collect();
        keys.sort();
        for k in keys {
            parts.push(format!("{k}={}", m[k].as_str().unwrap_or("")));
        }
    }
    if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = text(e, &["key"]);
            let values: Vec<&str> = get(e, &["values"])
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let part = match text(e, &["operator"]) {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                other => format!("{key} {other} ({})", values.join(",")),
            };
            parts.push(part);
        }
    }
    if parts.is_empty() {
        if v.as_object().is_some() {
            return String::new();
        }
        return "<none>".into();
    }
    parts.join(",")
}

/// The `Containers`, `Images` and `Selector` wide columns of workloads.
fn template_wide(obj: &Value, selector: String) -> Vec<Value> {
    let containers = get(obj, &["spec", "template", "spec", "containers"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, &["image"])).collect();
    vec![
        json!(names.join(",")),
        json!(images.join(",")),
        json!(or_none(selector)),
    ]
}

fn access_modes(v: Option<&Value>) -> String {
    let modes: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "",
    };
    let mut out = Vec::new();
    for m in [
        "ReadWriteOnce",
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOncePod",
    ] {
        if modes.contains(&m) {
            out.push(short(m));
        }
    }
    out.join(",")
}

// ---- per-kind printers ----

fn pod_cells(pod: &Value, now: i64) -> Vec<Value> {
    let spec_containers = get(pod, &["spec", "containers"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_specs = get(pod, &["spec", "initContainers"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, &["name"]) == name && text(c, &["restartPolicy"]) == "Always")
    };
    let mut total = spec_containers.len() as i64;
    let mut ready = 0i64;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<i64> = None;
    let mut note_restart = |cs: &Value| {
        if let Some(t) = get(cs, &["lastState", "terminated", "finishedAt"])
            .and_then(Value::as_str)
            .and_then(parse_time)
        {
            last_restart = Some(last_restart.map_or(t, |l| l.max(t)));
        }
    };
    let mut reason = text(pod, &["status", "phase"]).to_string();
    if !text(pod, &["status", "reason"]).is_empty() {
        reason = text(pod, &["status", "reason"]).to_string();
    }
    if let Some(conds) = get(pod, &["status", "conditions"]).and_then(Value::as_array)
        && conds.iter().any(|c| {
            text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated"
        })
    {
        reason = "SchedulingGated".into();
    }

    let init_statuses = get(pod, &["status", "initContainerStatuses"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for cs in &init_statuses {
        if is_sidecar(text(cs, &["name"])) {
            total += 1;
            if get(cs, &["started"]).and_then(Value::as_bool) == Some(true)
                && get(cs, &["ready"]).and_then(Value::as_bool) == Some(true)
            {
                ready += 1;
            }
        }
    }
    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
        let n = int(cs, &["restartCount"]);
        restarts += n;
        note_restart(cs);
        let sidecar = is_sidecar(text(cs, &["name"]));
        if sidecar {
            sidecar_restarts += n;
        }
        let terminated = get(cs, &["state", "terminated"]);
        let waiting_reason = text(cs, &["state", "waiting", "reason"]);
        if let Some(t) = terminated
            && int(t, &["exitCode"]) == 0
        {
            continue;
        }
        if sidecar && get(cs, &["started"]).and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = terminated {
            let r = text(t, &["reason"]);
            reason = if r.is_empty() {
                if int(t, &["signal"]) != 0 {
                    format!("Init:Signal:{}", int(t, &["signal"]))
                } else {
                    format!("Init:ExitCode:{}", int(t, &["exitCode"]))
                }
            } else {
                format!("Init:{r}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    let initialized = get(pod, &["status", "conditions"])
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| text(c, &["type"]) == "Initialized" && text(c, &["status"]) == "True")
        });
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut has_running = false;
        let statuses = get(pod, &["status", "containerStatuses"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for cs in statuses.iter().rev() {
            restarts += int(cs, &["restartCount"]);
            note_restart(cs);
            let waiting = text(cs, &["state", "waiting", "reason"]);
            let terminated = get(cs, &["state", "terminated"]);
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = text(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int(t, &["signal"]) != 0 {
                    format!("Signal:{}", int(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int(t, &["exitCode"]))
                };
            } else if get(cs, &["ready"]).and_then(Value::as_bool) == Some(true)
                && get(cs, &["state", "running"]).is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = get(pod, &["status", "conditions"])
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| text(c, &["type"]) == "Ready" && text(c, &["status"]) == "True")
                });
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let deleting = get(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    let phase = text(pod, &["status", "phase"]);
    if deleting && text(pod, &["status", "reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };
    let gates = get(pod, &["spec", "readinessGates"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = get(pod, &["status", "conditions"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_gates = gates
            .iter()
            .filter(|g| {
                conds.iter().any(|c| {
                    text(c, &["type"]) == text(g, &["conditionType"])
                        && text(c, &["status"]) == "True"
                })
            })
            .count();
        format!("{true_gates}/{}", gates.len())
    };
    vec![
        json!(text(pod, &["metadata", "name"])),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age(pod, now)),
        json!(or_none(text(pod, &["status", "podIP"]).to_string())),
        json!(or_none(text(pod, &["spec", "nodeName"]).to_string())),
        json!(or_none(
            text(pod, &["status", "nominatedNodeName"]).to_string()
        )),
        json!(gates_text),
    ]
}

fn node_cells(node: &Value, now: i64) -> Vec<Value> {
    let conds = get(node, &["status", "conditions"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status: Vec<String> = Vec::new();
    match conds.iter().find(|c| text(c, &["type"]) == "Ready") {
        Some(c) if text(c, &["status"]) == "True" => status.push("Ready".into()),
        Some(_) => status.push("NotReady".into()),
        None => status.push("Unknown".into()),
    }
    if get(node, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = get(node, &["metadata", "labels"])
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then(|| role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    let address = |kind: &str| {
        get(node, &["status", "addresses"])
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| text(a, &["type"]) == kind))
            .map(|a| text(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(text(node, &["metadata", "name"])),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age(node, now)),
        json!(text(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(text(node, &["status", "nodeInfo", "osImage"])),
        json!(text(node, &["status", "nodeInfo", "kernelVersion"])),
        json!(text(
            node,
            &["status", "nodeInfo", "containerRuntimeVersion"]
        )),
    ]
}

fn service_cells(svc: &Value, now: i64) -> Vec<Value> {
    let kind = or_default(text(svc, &["spec", "type"]), "ClusterIP");
    let cluster_ip = or_none(text(svc, &["spec", "clusterIP"]).to_string());
    let mut external: Vec<String> = get(svc, &["spec", "externalIPs"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let external_text = match kind.as_str() {
        "ExternalName" => text(svc, &["spec", "externalName"]).to_string(),
        "LoadBalancer" => {
            if let Some(ingress) =
                get(svc, &["status", "loadBalancer", "ingress"]).and_then(Value::as_array)
            {
                for i in ingress {
                    let ip = text(i, &["ip"]);
                    let host = text(i, &["hostname"]);
                    if !ip.is_empty() {
                        external.push(ip.to_string());
                    } else if !host.is_empty() {
                        external.push(host.to_string());
                    }
                }
            }
            if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            }
        }
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = get(svc, &["spec", "ports"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    let port = int(p, &["port"]);
                    let proto = or_default(text(p, &["protocol"]), "TCP");
                    match get(p, &["nodePort"]).and_then(Value::as_i64) {
                        Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let selector = get(svc, &["spec", "selector"])
        .map(map_selector)
        .unwrap_or_default();
    vec![
        json!(text(svc, &["metadata", "name"])),
        json!(kind),
        json!(cluster_ip),
        json!(external_text),
        json!(or_none(ports.join(","))),
        json!(age(svc, now)),
        json!(or_none(selector)),
    ]
}

fn endpoints_summary(ep: &Value) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut count = 0usize;
    if let Some(subsets) = get(ep, &["subsets"]).and_then(Value::as_array) {
        for s in subsets {
            let addrs: Vec<&str> = get(s, &["addresses"])
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|a| text(a, &["ip"])).collect())
                .unwrap_or_default();
            let ports: Vec<i64> = get(s, &["ports"])
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| int(p, &["port"])).collect())
                .unwrap_or_default();
            for ip in &addrs {
                if ports.is_empty() {
                    count += 1;
                    if out.len() < 3 {
                        out.push(ip.to_string());
                    }
                }
                for port in &ports {
                    count += 1;
                    if out.len() < 3 {
                        out.push(format!("{ip}:{port}"));
                    }
                }
            }
        }
    }
    if count == 0 {
        return "<none>".into();
    }
    let mut s = out.join(",");
    if count > out.len() {
        s.push_str(&format!(" + {} more...", count - out.len()));
    }
    s
}

fn endpointslice_cells(es: &Value, now: i64) -> Vec<Value> {
    let ports: Vec<String> = get(es, &["ports"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| match get(p, &["port"]).and_then(Value::as_i64) {
                    Some(n) => n.to_string(),
                    None => "<unset>".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let addrs: Vec<String> = get(es, &["endpoints"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .flat_map(|e| {
                    get(e, &["addresses"])
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let ep_text = if addrs.is_empty() {
        "<unset>".to_string()
    } else if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    vec![
        json!(text(es, &["metadata", "name"])),
        json!(text(es, &["addressType"])),
        json!(if ports.is_empty() {
            "<unset>".to_string()
        } else {
            ports.join(",")
        }),
        json!(ep_text),
        json!(age(es, now)),
    ]
}

fn ingress_cells(ing: &Value, now: i64) -> Vec<Value> {
    let hosts: Vec<&str> = get(ing, &["spec", "rules"])
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .map(|r| text(r, &["host"]))
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let addresses: Vec<String> = get(ing, &["status", "loadBalancer", "ingress"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| {
                    let ip = text(i, &["ip"]);
                    if ip.is_empty() {
                        text(i, &["hostname"]).to_string()
                    } else {
                        ip.to_string()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let tls = get(ing, &["spec", "tls"])
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    vec![
        json!(text(ing, &["metadata", "name"])),
        json!(or_none(
            text(ing, &["spec", "ingressClassName"]).to_string()
        )),
        json!(if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        }),
        json!(addresses.join(",")),
        json!(if tls { "80, 443" } else { "80" }),
        json!(age(ing, now)),
    ]
}

fn event_cells(ev: &Value, now: i64) -> Vec<Value> {
    // core/v1 and events.k8s.io/v1 name the same things differently.
    let first = since(get(ev, &["firstTimestamp"]), now)
        .or_else(|| since(get(ev, &["eventTime"]), now))
        .unwrap_or_else(|| "<unknown>".into());
    let last = since(get(ev, &["lastTimestamp"]), now)
        .or_else(|| since(get(ev, &["series", "lastObservedTime"]), now))
        .or_else(|| since(get(ev, &["deprecatedLastTimestamp"]), now))
        .or_else(|| since(get(ev, &["eventTime"]), now))
        .unwrap_or_else(|| first.clone());
    let object = get(ev, &["involvedObject"]).or_else(|| get(ev, &["regarding"]));
    let obj_text = object
        .map(|o| {
            format!(
                "{}/{}",
                text(o, &["kind"]).to_lowercase(),
                text(o, &["name"])
            )
        })
        .unwrap_or_default();
    let sub = object
        .map(|o| text(o, &["fieldPath"]).to_string())
        .unwrap_or_default();
    let source = {
        let comp = text(ev, &["source", "component"]);
        let comp = if comp.is_empty() {
            text(ev, &["reportingController"])
        } else {
            comp
        };
        let host = text(ev, &["source", "host"]);
        if host.is_empty() {
            comp.to_string()
        } else {
            format!("{comp}, {host}")
        }
    };
    let message = {
        let m = text(ev, &["message"]);
        if m.is_empty() { text(ev, &["note"]) } else { m }
    };
    let count = get(ev, &["count"])
        .and_then(Value::as_i64)
        .or_else(|| get(ev, &["series", "count"]).and_then(Value::as_i64))
        .unwrap_or(1);
    vec![
        json!(last),
        json!(text(ev, &["type"])),
        json!(text(ev, &["reason"])),
        json!(obj_text),
        json!(sub),
        json!(source),
        json!(message.trim()),
        json!(first),
        json!(count),
        json!(text(ev, &["metadata", "name"])),
    ]
}

fn job_cells(job: &Value, now: i64) -> Vec<Value> {
    let completions = match get(job, &["spec", "completions"]).and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", int(job, &["status", "succeeded"])),
        None => {
            let parallelism = get(job, &["spec", "parallelism"])
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if parallelism > 1 {
                format!("{}/1 of {parallelism}", int(job, &["status", "succeeded"]))
            } else {
                format!("{}/1", int(job, &["status", "succeeded"]))
            }
        }
    };
    let start = get(job, &["status", "startTime"])
        .and_then(Value::as_str)
        .and_then(parse_time);
    let end = get(job, &["status", "completionTime"])
        .and_then(Value::as_str)
        .and_then(parse_time);
    let duration = match (start, end) {
        (Some(s), Some(e)) => human_duration(e - s),
        (Some(s), None) => human_duration(now - s),
        _ => String::new(),
    };
    let conds = get(job, &["status", "conditions"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| text(c, &["type"]) == t && text(c, &["status"]) == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if get(job, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let mut v = vec![
        json!(text(job, &["metadata", "name"])),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(job, now)),
    ];
    v.extend(template_wide(
        job,
        label_selector(get(job, &["spec", "selector"])),
    ));
    v
}

fn quota_summary(q: &Value) -> (String, String) {
    let hard = get(q, &["status", "hard"]).and_then(Value::as_object);
    let used = get(q, &["status", "used"]).and_then(Value::as_object);
    let mut req = Vec::new();
    let mut lim = Vec::new();
    if let Some(hard) = hard {
        let mut keys: Vec<_> = hard.keys().collect();
        keys.sort();
        for k in keys {
            let u = used
                .and_then(|u| u.get(k))
                .and_then(Value::as_str)
                .unwrap_or("0");
            let h = hard[k].as_str().unwrap_or("");
            let entry = format!("{k}: {u}/{h}");
            if k.starts_with("limits.") {
                lim.push(entry);
            } else {
                req.push(entry);
            }
        }
    }
    (req.join(", "), lim.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn ts(secs_ago: i64) -> String {
        OffsetDateTime::from_unix_timestamp(NOW - secs_ago)
            .unwrap()
            .format(&Rfc3339)
            .unwrap()
    }

    fn strings(cells: &[Value]) -> Vec<String> {
        cells
            .iter()
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn every_row_has_one_cell_per_column() {
        let resources = [
            ("", "pods"),
            ("", "namespaces"),
            ("", "nodes"),
            ("", "services"),
            ("", "endpoints"),
            ("", "configmaps"),
            ("", "secrets"),
            ("", "serviceaccounts"),
            ("", "events"),
            ("", "replicationcontrollers"),
            ("", "persistentvolumes"),
            ("", "persistentvolumeclaims"),
            ("", "resourcequotas"),
            ("", "limitranges"),
            ("apps", "deployments"),
            ("apps", "replicasets"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("apps", "controllerrevisions"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
            ("coordination.k8s.io", "leases"),
            ("discovery.k8s.io", "endpointslices"),
            ("events.k8s.io", "events"),
            ("networking.k8s.io", "ingresses"),
            ("networking.k8s.io", "networkpolicies"),
            ("policy", "poddisruptionbudgets"),
            ("rbac.authorization.k8s.io", "roles"),
            ("rbac.authorization.k8s.io", "clusterroles"),
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("rbac.authorization.k8s.io", "clusterrolebindings"),
            ("scheduling.k8s.io", "priorityclasses"),
            ("storage.k8s.io", "storageclasses"),
            ("example.com", "widgets"),
        ];
        let empty = json!({"metadata": {"name": "x", "creationTimestamp": ts(5)}});
        for (group, plural) in resources {
            assert_eq!(
                cells(group, plural, &empty, NOW).len(),
                columns(group, plural).len(),
                "{group}/{plural}"
            );
        }
    }

    #[test]
    fn pod_rows_match_kubectl() {
        let running = json!({
            "metadata": {"name": "web-1", "creationTimestamp": ts(150)},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "phase": "Running", "podIP": "10.42.0.5",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "b", "ready": false, "restartCount": 2,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(30)}}}
                ]
            }
        });
        let pending = json!({
            "metadata": {"name": "p", "creationTimestamp": ts(5)},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Pending"}
        });
        let init = json!({
            "metadata": {"name": "i", "creationTimestamp": ts(5)},
            "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "setup", "restartCount": 0, "state": {"running": {}}}]}
        });
        let terminating = json!({
            "metadata": {"name": "t", "creationTimestamp": ts(5), "deletionTimestamp": ts(0)},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        let oom = json!({
            "metadata": {"name": "o", "creationTimestamp": ts(5)},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}
        });
        let cases = [
            (
                "crash looping container",
                running,
                vec![
                    "web-1",
                    "1/2",
                    "CrashLoopBackOff",
                    "2 (30s ago)",
                    "2m30s",
                    "10.42.0.5",
                    "n1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "unscheduled",
                pending,
                vec![
                    "p", "0/1", "Pending", "0", "5s", "<none>", "<none>", "<none>", "<none>",
                ],
            ),
            (
                "init running",
                init,
                vec![
                    "i", "0/1", "Init:0/1", "0", "5s", "<none>", "<none>", "<none>", "<none>",
                ],
            ),
            (
                "terminating",
                terminating,
                vec![
                    "t",
                    "1/1",
                    "Terminating",
                    "0",
                    "5s",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "oom killed",
                oom,
                vec![
                    "o",
                    "0/1",
                    "OOMKilled",
                    "0",
                    "5s",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>",
                ],
            ),
        ];
        for (name, pod, want) in cases {
            assert_eq!(strings(&cells("", "pods", &pod, NOW)), want, "{name}");
        }
    }

    #[test]
    fn workload_and_service_rows_match_kubectl() {
        let deploy = json!({
            "metadata": {"name": "web", "creationTimestamp": ts(60)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            strings(&cells("apps", "deployments", &deploy, NOW)),
            ["web", "2/3", "3", "2", "60s", "c", "nginx", "app=web"]
        );
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": ts(60)},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.12", "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
        });
        assert_eq!(
            strings(&cells("", "services", &svc, NOW)),
            [
                "web",
                "NodePort",
                "10.43.0.12",
                "<none>",
                "80:30080/TCP,53/UDP",
                "60s",
                "app=web"
            ]
        );
        let node = json!({
            "metadata": {"name": "n1", "creationTimestamp": ts(60),
                         "labels": {"node-role.kubernetes.io/control-plane": "true"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0-skiff"},
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        });
        assert_eq!(
            strings(&cells("", "nodes", &node, NOW))[..6],
            [
                "n1",
                "Ready,SchedulingDisabled",
                "control-plane",
                "60s",
                "v1.32.0-skiff",
                "10.0.0.1"
            ]
        );
    }

    #[test]
    fn table_carries_partial_metadata_by_default() {
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": ts(1), "labels": {"x": "y"}},
                         "data": {"k": "v"}});
        let t = table(
            "",
            "configmaps",
            &[obj],
            NOW,
            IncludeObject::default(),
            json!({"resourceVersion": "5"}),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["rows"][0]["cells"], json!(["a", 1, "1s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["x"], "y");
        assert_eq!(t["metadata"]["resourceVersion"], "5");
    }
}
