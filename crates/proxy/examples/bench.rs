//! Runs the proxy benchmark: `cargo run --release -p skiff-proxy --example
//! bench -- [SERVICES[,SERVICES…]] [ENDPOINTS_PER_SERVICE]` (as root; the
//! defaults are 1000,10000 services x 10 endpoints). The same figures come
//! from `skiff bench proxy` once wired.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = match args.next() {
        Some(list) => match list.split(',').map(str::parse).collect() {
            Ok(sizes) => sizes,
            Err(e) => {
                eprintln!("services: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => vec![1000, 10_000],
    };
    let endpoints = match args.next().map(|s| s.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("endpoints per service: {e}");
            return ExitCode::FAILURE;
        }
    };
    for services in sizes {
        match skiff_proxy::bench::run(services, endpoints).await {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("proxy benchmark: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
