//! Pure logic over Kubernetes API objects, shared by the API server and
//! its clients: no IO, no store, no network.
//!
//! - [`table`]: the server-side `meta.k8s.io/v1` Table rows that
//!   `kubectl get` prints, with the same columns Kubernetes' printers have.
//! - [`duration`]: Kubernetes' human-readable ages (`5m30s`, `3d4h`).
//!
//! Objects are handled as `serde_json::Value` so the same code serves every
//! kind the API server stores generically.

pub mod duration;
pub mod table;
