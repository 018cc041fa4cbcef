//! Pure logic over Kubernetes API objects, shared by the API server and
//! its clients: no IO, no store, no network.
//!
//! - [`table`]: the server-side `meta.k8s.io/v1` Table rows that
//!   `kubectl get` prints, with the same columns Kubernetes' printers have.
//! - [`duration`]: Kubernetes' human-readable ages (`5m30s`, `3d4h`).
//! - [`openapi`]: OpenAPI v2/v3 documents generated from `k8s-openapi`'s
//!   schemas; [`schema`]: unknown-field detection over the same schemas;
//!   [`patch_meta`]: strategic-merge-patch list keys.
//! - [`protobuf`]: Kubernetes' protobuf request bodies decoded into JSON
//!   for every known kind, from a table generated out of `k8s-pb`
//!   (`proto_table.rs`, by `tools/gen-proto-table.py`).
//!
//! Objects are handled as `serde_json::Value` so the same code serves every
//! kind the API server stores generically.

pub mod duration;
pub mod openapi;
pub mod patch_meta;
#[rustfmt::skip]
mod proto_table;
pub mod protobuf;
pub mod schema;
pub mod table;
