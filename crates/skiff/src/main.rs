//! The `skiff` binary: flag parsing and wiring only. Behaviour lives in the
//! component crates.

mod agent;
mod cli;
mod dns;

use anyhow::Result;
use clap::Parser;

/// mimalloc instead of glibc's malloc: the control plane allocates and
/// frees small objects on every thread all the time, where glibc spent a
/// quarter of the server's CPU and kept freed memory in per-thread arenas
/// (see docs/benchmarks.md, scale).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // No transparent huge pages: mimalloc asks for them on its arenas, and
    // each thread's heap and each forked container monitor then touches
    // (and the kernel zeroes) whole 2 MiB pages for a few KiB of data —
    // an agent with 100 pods held ~600 MiB and every monitor ~13 MiB
    // (docs/benchmarks.md). Inherited by forks, so monitors stay small.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("skiff: could not turn off transparent huge pages: {e}");
    }
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(cli))
}
