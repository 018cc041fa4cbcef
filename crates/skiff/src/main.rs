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
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::prepare_process(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(cli))
}
