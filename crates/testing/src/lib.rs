//! Fixtures shared by skiff's tests and benchmarks: real etcd processes on
//! free loopback ports ([`EtcdProcess`], [`EtcdCluster`]), TLS material for
//! them ([`TestPki`]), [`free_port`], the container test image
//! ([`test_image_archive`]: `skiff-testbin` in an image archive built offline),
//! and a real image registry on loopback that the test image can be pushed
//! to ([`Registry`]).
//!
//! Everything here starts real programs and owns them: a fixture kills and
//! reaps its processes when dropped, and keeps their files in a temp dir that
//! goes with it. Nothing here is meant for production code paths.

mod etcd;
mod image;
mod pki;
mod ports;
pub mod registry;

pub use etcd::{EtcdCluster, EtcdOptions, EtcdProcess, ServerTls};
pub use image::{
    ArchiveFormat, TEST_IMAGE, test_image_archive, test_image_archive_as, testbin_binary,
};
pub use pki::TestPki;
pub use ports::free_port;
pub use registry::{Registry, RegistryOptions};
