//! Events (`core/v1`) about pods and the node, sent from a background task
//! so that recording never blocks a pod worker. Repeats of the same event
//! (same object, reason, message) within ten minutes bump the existing
//! event's `count` and `lastTimestamp`, as the kubelet's recorder does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub field_path: Option<String>,
}

impl Subject {
    pub fn pod(pod: &Pod) -> Self {
        Subject {
            kind: "Pod",
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path: None,
        }
    }

    /// The pod's container `name` (`spec.containers{name}` or
    /// `spec.initContainers{name}`).
    pub fn container(pod: &Pod, name: &str) -> Self {
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == name));
        let field = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        Subject {
            field_path: Some(format!("{field}{{{name}}}")),
            ..Subject::pod(pod)
        }
    }

    pub fn node(name: &str) -> Self {
        Subject {
            kind: "Node",
            namespace: None,
            name: name.to_string(),
            uid: name.to_string(),
            field_path: None,
        }
    }
}

#[derive(Debug)]
struct Record {
    subject: Subject,
    type_: EventType,
    reason: String,
    message: String,
}

/// A cheap handle for recording events; clone freely.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Starts the sending task; events go out as `component` from `host`.
    pub fn start(client: kube::Client, host: String) -> Recorder {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(send_loop(client, host, rx));
        Recorder { tx }
    }

    /// A recorder whose events go nowhere (for pure tests).
    pub fn discard() -> Recorder {
        let (tx, _rx) = mpsc::channel(1);
        Recorder { tx }
    }

    pub fn record(
        &self,
        subject: Subject,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let record = Record {
            subject,
            type_,
            reason: reason.to_string(),
            message: message.into(),
        };
        if let Err(e) = self.tx.try_send(record) {
            tracing::debug!(error = %e, "event dropped");
        }
    }

    pub fn normal(&self, subject: Subject, reason: &str, message: impl Into<String>) {
        self.record(subject, EventType::Normal, reason, message);
    }

    pub fn warning(&self, subject: Subject, reason: &str, message: impl Into<String>) {
        self.record(subject, EventType::Warning, reason, message);
    }
}

/// How long a repeat is folded into the earlier event.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

type Key = (Subject, EventType, String, String);

async fn send_loop(client: kube::Client, host: String, mut rx: mpsc::Receiver<Record>) {
    let mut seen: HashMap<Key, (String, i32, Instant)> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let ns = r
            .subject
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let now = Timestamp::now();
        seen.retain(|_, (_, _, at)| at.elapsed() < AGGREGATE_WINDOW);
        let key: Key = (
            r.subject.clone(),
            r.type_,
            r.reason.clone(),
            r.message.clone(),
        );
        if let Some((name, count, at)) = seen.get_mut(&key) {
            let patch = serde_json::json!({
                "count": *count + 1,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    *count += 1;
                    *at = Instant::now();
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "updating event count; creating anew"),
            }
        }
        let name = format!(
            "{}.{:x}",
            r.subject.name,
            now.as_nanosecond() as u128 & 0xffff_ffff_ffff_ffff
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some(r.subject.kind.to_string()),
                namespace: r.subject.namespace.clone(),
                name: Some(r.subject.name.clone()),
                uid: Some(r.subject.uid.clone()),
                field_path: r.subject.field_path.clone(),
                ..Default::default()
            },
            reason: Some(r.reason.clone()),
            message: Some(r.message.clone()),
            type_: Some(r.type_.as_str().to_string()),
            source: Some(EventSource {
                component: Some("kubelet".to_string()),
                host: Some(host.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some("kubelet".to_string()),
            reporting_instance: Some(host.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                seen.insert(key, (name, 1, Instant::now()));
            }
            Err(e) => tracing::warn!(
                error = %e,
                reason = %r.reason,
                object = %r.subject.name,
                "recording event"
            ),
        }
    }
}
