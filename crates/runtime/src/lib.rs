//! Container runtimes for the node agent.
//!
//! The node agent (`skiff-node`) drives containers only through
//! [`ContainerRuntime`], whose verbs are the Kubernetes CRI's
//! (`RuntimeService` + `ImageService`) and whose messages are the CRI's own
//! protobuf types from `k8s-cri`. Two implementations plug in behind it: the
//! built-in runtime (images unpacked on this node, containers run through
//! youki's `libcontainer`) and a CRI gRPC client for containerd or CRI-O.
//!
//! What this crate must not do: talk to the Kubernetes API. It knows pods only
//! as CRI sandboxes and containers. Pod networking beyond a sandbox's network
//! namespace and its loopback is not here either: it plugs in through
//! [`SandboxNetwork`].

pub mod cri_types {
    //! The CRI messages the trait speaks, re-exported so callers need not
    //! depend on `k8s-cri` themselves.
    pub use k8s_cri::v1::*;
}

mod api;
pub mod builtin;
pub mod cri;
pub mod images;
pub mod network;
mod portforward;
pub mod reference;

pub use api::{
    AttachRequest, AttachSession, ContainerRuntime, Error, ExecRequest, ExecSession, ImageService,
    Result, RuntimeService,
};
pub use builtin::{BuiltinConfig, BuiltinRuntime, Zygote};
pub use cri::CriClient;
pub use images::ImageStore;
pub use images::keyring::Keyring;
pub use images::pull::PullConfig;
pub use images::registries::Registries;
pub use network::{NoNetwork, SandboxNetwork};
pub use reference::Reference;
