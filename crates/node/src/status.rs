//! The pod's status as a pure function of its spec, what the runtime
//! reports about its sandbox and containers, the probes' results and the
//! reasons the agent is holding containers back (image pulls, back-off,
//! bad config). Mirrors the kubelet's `generateAPIPodStatus` and `getPhase`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::resources::qos_class;

/// What the runtime says a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One container instance as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub state: RunState,
    /// Nanoseconds since the epoch; 0 when not yet.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    pub restart_count: i32,
}

impl ContainerObservation {
    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    pub fn exited(&self) -> bool {
        self.state == RunState::Exited
    }

    pub fn succeeded(&self) -> bool {
        self.state == RunState::Exited && self.exit_code == 0
    }
}

/// Why a container is not running although the pod wants it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The probes' verdict on the current instance of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeView {
    /// Readiness (true when it has no readiness probe).
    pub ready: bool,
    /// Startup succeeded (true when it has no startup probe).
    pub started: bool,
}

/// Everything [`pod_status`] looks at.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub host_ips: &'a [String],
    /// The sandbox's IPs (primary first); empty without a sandbox.
    pub pod_ips: &'a [String],
    pub sandbox_ready: bool,
    /// Every instance of every container of the pod, newest first, by name.
    pub containers: &'a BTreeMap<String, Vec<ContainerObservation>>,
    /// By container name, for the current instance.
    pub probes: &'a BTreeMap<String, ProbeView>,
    /// By container name.
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// The scheme of container IDs (`containerd`, `skiff`, …).
    pub runtime_scheme: &'a str,
    pub now: Timestamp,
}

fn time_from_nanos(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    Timestamp::from_nanosecond(ns as i128).ok().map(Time)
}

fn terminated(o: &ContainerObservation, scheme: &str) -> ContainerStateTerminated {
    let reason = if !o.reason.is_empty() {
        o.reason.clone()
    } else if o.exit_code == 0 {
        "Completed".to_string()
    } else {
        "Error".to_string()
    };
    ContainerStateTerminated {
        exit_code: o.exit_code,
        reason: Some(reason),
        message: (!o.message.is_empty()).then(|| o.message.clone()),
        started_at: time_from_nanos(o.started_at),
        finished_at: time_from_nanos(o.finished_at),
        container_id: Some(format!("{scheme}://{}", o.id)),
        signal: None,
    }
}

fn state_of(o: &ContainerObservation, scheme: &str) -> ContainerState {
    match o.state {
        RunState::Running => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time_from_nanos(o.started_at),
            }),
            ..Default::default()
        },
        RunState::Exited => ContainerState {
            terminated: Some(terminated(o, scheme)),
            ..Default::default()
        },
        RunState::Created => waiting_state(&Waiting::new("ContainerCreating", "")),
        RunState::Unknown => waiting_state(&Waiting::new(
            "ContainerStatusUnknown",
            "The container could not be located when the pod was observed",
        )),
    }
}

fn waiting_state(w: &Waiting) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.clone()),
            message: (!w.message.is_empty()).then(|| w.message.clone()),
        }),
        ..Default::default()
    }
}

/// The status of one container (`convertToAPIContainerStatuses`).
fn container_status(
    spec: &Container,
    instances: &[ContainerObservation],
    probe: ProbeView,
    waiting: Option<&Waiting>,
    default_waiting: &Waiting,
    scheme: &str,
    is_init: bool,
) -> ContainerStatus {
    let latest = instances.first();
    let previous = instances.get(1);
    let mut status = ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: latest.map(|o| o.restart_count).unwrap_or(0),
        started: Some(false),
        ..Default::default()
    };
    let Some(latest) = latest else {
        status.state = Some(waiting_state(waiting.unwrap_or(default_waiting)));
        return status;
    };
    status.image_id = latest.image_ref.clone();
    status.container_id = Some(format!("{scheme}://{}", latest.id));
    let prev_terminated = previous.filter(|p| p.exited()).map(|p| ContainerState {
        terminated: Some(terminated(p, scheme)),
        ..Default::default()
    });
    match (latest.state, waiting) {
        // Exited and held back (back-off, image pull): waiting now, the exit
        // as the last state.
        (RunState::Exited, Some(w)) => {
            status.state = Some(waiting_state(w));
            status.last_state = Some(state_of(latest, scheme));
        }
        (RunState::Running, _) => {
            status.state = Some(state_of(latest, scheme));
            status.last_state = prev_terminated;
            status.started = Some(probe.started);
            status.ready = probe.started && probe.ready;
        }
        (RunState::Created, Some(w)) => {
            status.state = Some(waiting_state(w));
            status.last_state = prev_terminated;
        }
        _ => {
            status.state = Some(state_of(latest, scheme));
            status.last_state = prev_terminated;
        }
    }
    if is_init {
        status.started = Some(latest.is_running());
        status.ready = latest.succeeded() && waiting.is_none();
    }
    if status.last_state.is_none() {
        status.last_state = Some(ContainerState::default());
    }
    status
}

fn condition(
    old: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or(Some(Time(now)));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The conditions this module owns; others (DisruptionTarget, readiness
/// gates' conditions, …) are kept as they are.
const OWN_CONDITIONS: &[&str] = &[
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// The pod's phase (`getPhase`), given the container statuses computed
/// here.
fn phase(
    pod: &Pod,
    init: &[ContainerStatus],
    regular: &[ContainerStatus],
    init_failed_for_good: bool,
) -> &'static str {
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    // A terminal phase is never left.
    if old == "Succeeded" {
        return "Succeeded";
    }
    if old == "Failed" {
        return "Failed";
    }
    let policy = restart_policy(pod);
    if init_failed_for_good {
        return "Failed";
    }
    let initialized = init.iter().all(|s| s.ready);
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in regular {
        let state = s.state.as_ref();
        if state.is_some_and(|st| st.running.is_some()) {
            running += 1;
        } else if let Some(t) = state.and_then(|st| st.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some()
        {
            // Waiting to restart after having run.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if !initialized || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        // Counted only from real terminated states: a waiting container with
        // a failed last state is about to restart (OnFailure).
        let all_terminated = regular
            .iter()
            .all(|s| s.state.as_ref().is_some_and(|st| st.terminated.is_some()));
        if stopped == succeeded && all_terminated {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// `spec.restartPolicy`, defaulted to `Always`.
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a container of `pod` that exited with `exit_code` is restarted.
pub fn should_restart(pod: &Pod, exit_code: i32) -> bool {
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The pod's status, computed from scratch.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let scheme = input.runtime_scheme;
    let no_instances: Vec<ContainerObservation> = Vec::new();
    let instances = |name: &str| -> &[ContainerObservation] {
        input.containers.get(name).unwrap_or(&no_instances)
    };
    let probe_of = |name: &str| {
        input.probes.get(name).copied().unwrap_or(ProbeView {
            ready: true,
            started: true,
        })
    };

    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let pod_initializing = Waiting::new("PodInitializing", "");
    let init_statuses: Vec<ContainerStatus> = init_specs
        .iter()
        .map(|c| {
            container_status(
                c,
                instances(&c.name),
                probe_of(&c.name),
                input.waiting.get(&c.name),
                &pod_initializing,
                scheme,
                true,
            )
        })
        .collect();
    let initialized = init_statuses.iter().all(|s| s.ready);
    let init_failed_for_good = restart_policy(pod) == "Never"
        && init_statuses.iter().any(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
        });
    let creating = Waiting::new("ContainerCreating", "");
    let default_waiting = if initialized {
        &creating
    } else {
        &pod_initializing
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                c,
                instances(&c.name),
                probe_of(&c.name),
                input.waiting.get(&c.name),
                default_waiting,
                scheme,
                false,
            )
        })
        .collect();

    let phase = phase(pod, &init_statuses, &statuses, init_failed_for_good);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let now = input.now;

    let mut conditions: Vec<PodCondition> = Vec::new();
    conditions.push(
        old_conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .cloned()
            .unwrap_or_else(|| condition(&[], "PodScheduled", true, None, None, now)),
    );
    conditions.push(condition(
        &old_conditions,
        "PodReadyToStartContainers",
        input.sandbox_ready && !terminal,
        None,
        None,
        now,
    ));
    let incomplete: Vec<&str> = init_statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    conditions.push(if terminal && phase == "Succeeded" {
        condition(
            &old_conditions,
            "Initialized",
            true,
            Some("PodCompleted"),
            None,
            now,
        )
    } else if incomplete.is_empty() {
        condition(&old_conditions, "Initialized", true, None, None, now)
    } else {
        condition(
            &old_conditions,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
            now,
        )
    });
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let gates_ok = spec.readiness_gates.iter().flatten().all(|g| {
        old_conditions
            .iter()
            .any(|c| c.type_ == g.condition_type && c.status == "True")
    });
    let (ready_reason, ready_message, containers_ready) = if terminal {
        (Some("PodCompleted"), None, false)
    } else if !unready.is_empty() {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
            false,
        )
    } else {
        (None, None, true)
    };
    conditions.push(condition(
        &old_conditions,
        "ContainersReady",
        containers_ready,
        ready_reason,
        ready_message.clone(),
        now,
    ));
    conditions.push(if containers_ready && !gates_ok {
        condition(
            &old_conditions,
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some("the status of pod readiness gates is not \"True\"".to_string()),
            now,
        )
    } else {
        condition(
            &old_conditions,
            "Ready",
            containers_ready,
            ready_reason,
            ready_message,
            now,
        )
    });
    for c in &old_conditions {
        if !OWN_CONDITIONS.contains(&c.type_.as_str()) {
            conditions.push(c.clone());
        }
    }

    let pod_ips: Vec<PodIP> = input
        .pod_ips
        .iter()
        .map(|ip| PodIP { ip: ip.clone() })
        .collect();
    let host_ips: Vec<HostIP> = input
        .host_ips
        .iter()
        .map(|ip| HostIP { ip: ip.clone() })
        .collect();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_specs.is_empty()).then_some(init_statuses),
        pod_ip: input.pod_ips.first().cloned().or(old.pod_ip.clone()),
        pod_ips: if pod_ips.is_empty() {
            old.pod_ips.clone()
        } else {
            Some(pod_ips)
        },
        host_ip: input.host_ips.first().cloned(),
        host_ips: (!host_ips.is_empty()).then_some(host_ips),
        start_time: old.start_time.clone().or(Some(Time(now))),
        qos_class: Some(qos_class(pod).as_str().to_string()),
        nominated_node_name: old.nominated_node_name.clone(),
        message: old.message.clone(),
        reason: old.reason.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    const NOW_S: i64 = 1_700_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW_S).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pod(containers: &[&str], init: &[&str], policy: &str) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: Some(format!("img/{n}")),
            ..Default::default()
        };
        Pod {
            spec: Some(PodSpec {
                containers: containers.iter().map(c).collect(),
                init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
                restart_policy: Some(policy.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn obs(name: &str, state: RunState, exit: i32, restarts: i32) -> ContainerObservation {
        ContainerObservation {
            id: format!("{name}-{restarts}"),
            sandbox_id: "sb".into(),
            name: name.into(),
            state,
            created_at: NOW_S * 1_000_000_000,
            started_at: if state == RunState::Created {
                0
            } else {
                NOW_S * 1_000_000_000
            },
            finished_at: if state == RunState::Exited {
                NOW_S * 1_000_000_000 + 5
            } else {
                0
            },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: format!("img/{name}"),
            image_ref: format!("sha256:{name}"),
            restart_count: restarts,
        }
    }

    struct Case {
        name: &'static str,
        pod: Pod,
        containers: Vec<ContainerObservation>,
        waiting: Vec<(&'static str, Waiting)>,
        not_ready: Vec<&'static str>,
        want_phase: &'static str,
        want_ready: &'static str,
        want_initialized: &'static str,
        /// (container, state kind, reason)
        want_states: Vec<(&'static str, &'static str, &'static str)>,
    }

    fn state_kind(s: &ContainerStatus) -> (&'static str, String) {
        let st = s.state.clone().unwrap_or_default();
        if let Some(w) = st.waiting {
            ("waiting", w.reason.unwrap_or_default())
        } else if let Some(t) = st.terminated {
            ("terminated", t.reason.unwrap_or_default())
        } else if st.running.is_some() {
            ("running", String::new())
        } else {
            ("none", String::new())
        }
    }

    fn cond<'a>(st: &'a PodStatus, t: &str) -> &'a str {
        st.conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == t))
            .map(|c| c.status.as_str())
            .unwrap_or("missing")
    }

    #[test]
    fn pod_status_is_computed_from_runtime_observations() {
        let cases = vec![
            Case {
                name: "nothing created yet",
                pod: pod(&["a"], &[], "Always"),
                containers: vec![],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Pending",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "waiting", "ContainerCreating")],
            },
            Case {
                name: "image pull failing",
                pod: pod(&["a"], &[], "Always"),
                containers: vec![],
                waiting: vec![("a", Waiting::new("ErrImagePull", "no such image"))],
                not_ready: vec![],
                want_phase: "Pending",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "waiting", "ErrImagePull")],
            },
            Case {
                name: "all running and ready",
                pod: pod(&["a", "b"], &[], "Always"),
                containers: vec![
                    obs("a", RunState::Running, 0, 0),
                    obs("b", RunState::Running, 0, 0),
                ],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Running",
                want_ready: "True",
                want_initialized: "True",
                want_states: vec![("a", "running", ""), ("b", "running", "")],
            },
            Case {
                name: "running but readiness failing",
                pod: pod(&["a"], &[], "Always"),
                containers: vec![obs("a", RunState::Running, 0, 0)],
                waiting: vec![],
                not_ready: vec!["a"],
                want_phase: "Running",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "running", "")],
            },
            Case {
                name: "crash loop back-off keeps the pod running",
                pod: pod(&["a"], &[], "Always"),
                containers: vec![obs("a", RunState::Exited, 1, 3)],
                waiting: vec![("a", Waiting::new("CrashLoopBackOff", "back-off 40s"))],
                not_ready: vec![],
                want_phase: "Running",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "waiting", "CrashLoopBackOff")],
            },
            Case {
                name: "never restart and succeeded",
                pod: pod(&["a"], &[], "Never"),
                containers: vec![obs("a", RunState::Exited, 0, 0)],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Succeeded",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "terminated", "Completed")],
            },
            Case {
                name: "never restart and failed",
                pod: pod(&["a", "b"], &[], "Never"),
                containers: vec![
                    obs("a", RunState::Exited, 0, 0),
                    obs("b", RunState::Exited, 2, 0),
                ],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Failed",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![
                    ("a", "terminated", "Completed"),
                    ("b", "terminated", "Error"),
                ],
            },
            Case {
                name: "on failure restarts a failed container",
                pod: pod(&["a"], &[], "OnFailure"),
                containers: vec![obs("a", RunState::Exited, 2, 0)],
                waiting: vec![("a", Waiting::new("CrashLoopBackOff", ""))],
                not_ready: vec![],
                want_phase: "Running",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "waiting", "CrashLoopBackOff")],
            },
            Case {
                name: "on failure with every container succeeded",
                pod: pod(&["a"], &[], "OnFailure"),
                containers: vec![obs("a", RunState::Exited, 0, 1)],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Succeeded",
                want_ready: "False",
                want_initialized: "True",
                want_states: vec![("a", "terminated", "Completed")],
            },
            Case {
                name: "init container running",
                pod: pod(&["a"], &["i1", "i2"], "Always"),
                containers: vec![obs("i1", RunState::Running, 0, 0)],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Pending",
                want_ready: "False",
                want_initialized: "False",
                want_states: vec![
                    ("i1", "running", ""),
                    ("i2", "waiting", "PodInitializing"),
                    ("a", "waiting", "PodInitializing"),
                ],
            },
            Case {
                name: "init containers done",
                pod: pod(&["a"], &["i1"], "Always"),
                containers: vec![
                    obs("i1", RunState::Exited, 0, 0),
                    obs("a", RunState::Running, 0, 0),
                ],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Running",
                want_ready: "True",
                want_initialized: "True",
                want_states: vec![("i1", "terminated", "Completed"), ("a", "running", "")],
            },
            Case {
                name: "init container failed with restart never fails the pod",
                pod: pod(&["a"], &["i1"], "Never"),
                containers: vec![obs("i1", RunState::Exited, 1, 0)],
                waiting: vec![],
                not_ready: vec![],
                want_phase: "Failed",
                want_ready: "False",
                want_initialized: "False",
                want_states: vec![
                    ("i1", "terminated", "Error"),
                    ("a", "waiting", "PodInitializing"),
                ],
            },
        ];
        for case in cases {
            let mut containers: BTreeMap<String, Vec<ContainerObservation>> = BTreeMap::new();
            for o in case.containers {
                containers.entry(o.name.clone()).or_default().push(o);
            }
            let probes: BTreeMap<String, ProbeView> = case
                .not_ready
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        ProbeView {
                            ready: false,
                            started: true,
                        },
                    )
                })
                .collect();
            let waiting: BTreeMap<String, Waiting> = case
                .waiting
                .into_iter()
                .map(|(n, w)| (n.to_string(), w))
                .collect();
            let host = vec!["10.0.0.1".to_string()];
            let ips = vec!["10.88.0.5".to_string()];
            let st = pod_status(&StatusInput {
                pod: &case.pod,
                host_ips: &host,
                pod_ips: &ips,
                sandbox_ready: true,
                containers: &containers,
                probes: &probes,
                waiting: &waiting,
                runtime_scheme: "skiff",
                now: now(),
            });
            assert_eq!(
                st.phase.as_deref(),
                Some(case.want_phase),
                "{}: phase",
                case.name
            );
            assert_eq!(cond(&st, "Ready"), case.want_ready, "{}: Ready", case.name);
            assert_eq!(
                cond(&st, "ContainersReady"),
                case.want_ready,
                "{}: ContainersReady",
                case.name
            );
            assert_eq!(
                cond(&st, "Initialized"),
                case.want_initialized,
                "{}: Initialized",
                case.name
            );
            assert_eq!(
                cond(&st, "PodScheduled"),
                "True",
                "{}: PodScheduled",
                case.name
            );
            let all: Vec<&ContainerStatus> = st
                .init_container_statuses
                .iter()
                .flatten()
                .chain(st.container_statuses.iter().flatten())
                .collect();
            for (name, kind, reason) in case.want_states {
                let s = all.iter().find(|s| s.name == name);
                let Some(s) = s else {
                    panic!("{}: no status for {name}", case.name);
                };
                let (k, r) = state_kind(s);
                assert_eq!(
                    (k, r.as_str()),
                    (kind, reason),
                    "{}: state of {name}",
                    case.name
                );
            }
            assert_eq!(st.pod_ip.as_deref(), Some("10.88.0.5"), "{}", case.name);
            assert_eq!(st.host_ip.as_deref(), Some("10.0.0.1"), "{}", case.name);
            assert_eq!(st.qos_class.as_deref(), Some("BestEffort"), "{}", case.name);
        }
    }

    #[test]
    fn a_restarted_container_reports_its_previous_exit_as_last_state() {
        let p = pod(&["a"], &[], "Always");
        let mut containers = BTreeMap::new();
        containers.insert(
            "a".to_string(),
            vec![
                obs("a", RunState::Running, 0, 2),
                obs("a", RunState::Exited, 137, 1),
            ],
        );
        let st = pod_status(&StatusInput {
            pod: &p,
            host_ips: &[],
            pod_ips: &[],
            sandbox_ready: true,
            containers: &containers,
            probes: &BTreeMap::new(),
            waiting: &BTreeMap::new(),
            runtime_scheme: "skiff",
            now: now(),
        });
        let cs = &st.container_statuses.unwrap_or_default()[0];
        assert_eq!(cs.restart_count, 2);
        assert_eq!(cs.container_id.as_deref(), Some("skiff://a-2"));
        assert_eq!(cs.image_id, "sha256:a");
        assert!(cs.ready);
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| (t.exit_code, t.reason.clone()));
        assert_eq!(last, Some((137, Some("Error".to_string()))));
    }

    #[test]
    fn condition_transition_times_survive_unchanged_conditions() {
        let mut p = pod(&["a"], &[], "Always");
        let earlier = Timestamp::from_second(NOW_S - 100).unwrap_or(Timestamp::UNIX_EPOCH);
        p.status = Some(PodStatus {
            conditions: Some(vec![
                PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(earlier)),
                    ..Default::default()
                },
                PodCondition {
                    type_: "Initialized".into(),
                    status: "False".into(),
                    last_transition_time: Some(Time(earlier)),
                    ..Default::default()
                },
                PodCondition {
                    type_: "example.com/gate".into(),
                    status: "True".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let mut containers = BTreeMap::new();
        containers.insert("a".to_string(), vec![obs("a", RunState::Running, 0, 0)]);
        let st = pod_status(&StatusInput {
            pod: &p,
            host_ips: &[],
            pod_ips: &[],
            sandbox_ready: true,
            containers: &containers,
            probes: &BTreeMap::new(),
            waiting: &BTreeMap::new(),
            runtime_scheme: "skiff",
            now: now(),
        });
        let conds = st.conditions.unwrap_or_default();
        let time_of = |t: &str| {
            conds
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| c.last_transition_time.clone())
                .map(|t| t.0)
        };
        assert_eq!(
            time_of("Ready"),
            Some(earlier),
            "unchanged Ready keeps its time"
        );
        assert_eq!(
            time_of("Initialized"),
            Some(now()),
            "flipped Initialized gets now"
        );
        assert!(
            conds.iter().any(|c| c.type_ == "example.com/gate"),
            "foreign conditions are kept"
        );
    }

    #[test]
    fn a_terminal_phase_is_never_left() {
        let mut p = pod(&["a"], &[], "Always");
        p.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        let mut containers = BTreeMap::new();
        containers.insert("a".to_string(), vec![obs("a", RunState::Running, 0, 0)]);
        let st = pod_status(&StatusInput {
            pod: &p,
            host_ips: &[],
            pod_ips: &[],
            sandbox_ready: true,
            containers: &containers,
            probes: &BTreeMap::new(),
            waiting: &BTreeMap::new(),
            runtime_scheme: "skiff",
            now: now(),
        });
        assert_eq!(st.phase.as_deref(), Some("Failed"));
    }
}
