//! Recording core/v1 Events about objects, as upstream's event recorder
//! does (without its aggregation).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// An event to record: (type, reason, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Note {
        Note {
            type_: "Normal",
            reason,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Note {
        Note {
            type_: "Warning",
            reason,
            message: message.into(),
        }
    }
}

/// Records `note` about `object` from `component`. Failing to record an
/// event is logged, never an error of the caller.
pub async fn record(client: &kube::Client, object: &ObjectReference, component: &str, note: &Note) {
    let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
    let name = object.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: object.clone(),
        reason: Some(note.reason.into()),
        message: Some(note.message.clone()),
        type_: Some(note.type_.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some(component.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(object = %name, namespace = %ns, reason = note.reason, error = %e, "recording event");
    }
}
