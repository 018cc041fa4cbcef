//! The skiff scheduler: places each pending pod (empty `spec.nodeName`,
//! `schedulerName: default-scheduler`) on a node and binds it through
//! `pods/binding`, in the shape of Kubernetes' scheduling framework:
//! a queue, PreFilter/Filter/Score plugins, bind, and preemption (which
//! prefers victims whose PodDisruptionBudgets allow the disruption).
//!
//! Invariants:
//! - It is a Kubernetes API client only (`kube` watchers and requests); it
//!   must not depend on the API server or the store, and would work against
//!   a real cluster.
//! - Plugins ([`plugins`]) are pure functions of (pod, node info snapshot):
//!   no IO, no clock, no randomness (ties are broken by the caller).
//! - It must not change anything but a pod's binding, its `PodScheduled`
//!   condition and `nominatedNodeName`, the deletion of preemption victims,
//!   and Events.

pub mod cache;
pub mod framework;
pub mod plugins;
pub mod preemption;
pub use skiff_client::quantity;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod selectors;

pub use scheduler::{SchedulerConfig, run};
