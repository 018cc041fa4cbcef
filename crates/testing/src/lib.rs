//! Fixtures shared by skiff's tests and benchmarks: real etcd processes on
//! free loopback ports ([`EtcdProcess`], [`EtcdCluster`]), TLS material for
//! them ([`TestPki`]), and [`free_port`].
//!
//! Everything here starts real programs and owns them: a fixture kills and
//! reaps its processes when dropped, and keeps their files in a temp dir that
//! goes with it. Nothing here is meant for production code paths.

mod etcd;
mod pki;
mod ports;

pub use etcd::{EtcdCluster, EtcdOptions, EtcdProcess, ServerTls};
pub use pki::TestPki;
pub use ports::free_port;
