//! `skiff bench scale` at a tiny size (10 simulated nodes, 50 pods), so the
//! benchmark keeps working end to end: every pod is bound, runs and goes
//! away again, and every figure is filled. No timing is asserted.

use std::time::Duration;

use skiff_bench::scale::{Datastore, ScaleBenchConfig, ServerMode, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_bench_runs_every_phase_at_a_tiny_size() -> anyhow::Result<()> {
    let figures = run(ScaleBenchConfig {
        nodes: 10,
        pods: 50,
        pods_per_deployment: 10,
        deployments_per_namespace: 3,
        deployments_per_second: 20.0,
        phase_timeout: Duration::from_secs(120),
        server: ServerMode::InProcess,
        datastore: Datastore::Embedded,
        ..Default::default()
    })
    .await?;
    assert_eq!(figures.failure, None);
    assert!(figures.completed);
    assert_eq!(figures.deployments, 5);
    for (stage, t) in [
        ("created", figures.created),
        ("bound", figures.bound),
        ("running", figures.running),
        ("gone", figures.deletion),
    ] {
        assert_eq!(t.pods, 50, "{stage}");
        assert!(t.overall > 0.0, "{stage}");
    }
    assert_eq!(figures.startup_latency.count, 50);
    let verbs: Vec<&str> = figures.api_calls.keys().map(String::as_str).collect();
    assert_eq!(
        verbs,
        [
            "create deployment",
            "create namespace",
            "delete deployment",
            "delete namespace",
            "patch deployment scale"
        ]
    );
    assert!(figures.server.peak_rss_kib > 0 && figures.server.cpu_seconds > 0.0);
    assert!(figures.store_bytes_all_running > 0);
    assert_eq!(figures.sim.nodes_registered, 10);
    assert!(figures.sim.pods_started >= 50);
    Ok(())
}
