//! Benchmark workloads. Each prints the figures an issue asks for; none
//! asserts a time. The `skiff bench` subcommands call these.
//!
//! Benchmarks may start real components (etcd) through `skiff-testing`;
//! they only ever talk to loopback.

pub mod api;
mod child;
pub mod connections;
pub mod scale;
pub mod startup;
pub mod stats;
pub mod store;
