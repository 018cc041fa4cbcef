//! `skiff bench api` at tiny sizes, so that the benchmark keeps working: it
//! runs end to end and reports every figure. No timing is asserted.

use skiff_bench::api::{ApiBenchConfig, Datastore, ServerMode, run};

fn tiny(datastore: Datastore) -> ApiBenchConfig {
    ApiBenchConfig {
        clients: 3,
        creates: 20,
        gets: 40,
        list_objects: 25,
        lists: 2,
        watchers: 10,
        watch_writes: 3,
        server: ServerMode::InProcess,
        datastore,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bench_runs_every_phase_at_tiny_sizes() -> anyhow::Result<()> {
    let figures = run(tiny(Datastore::Embedded)).await?;
    let counts: Vec<(&str, usize)> = figures
        .ops
        .iter()
        .map(|o| (o.name.as_str(), o.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("create ConfigMap", 20),
            ("get ConfigMap", 40),
            ("list (consistent, store) of 25", 2),
            ("list (rv=0, watch cache) of 25", 2),
        ]
    );
    assert_eq!(figures.listed, 25);
    assert_eq!(figures.fanout_all.count, 3, "one figure per timed write");
    assert_eq!(figures.fanout_each.count, 30, "every watcher, every write");
    assert!(
        figures.memory.at_rest_kib > 0 && figures.memory.peak_kib >= figures.memory.at_rest_kib
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bench_runs_on_an_etcd_it_starts() -> anyhow::Result<()> {
    let figures = run(tiny(Datastore::StartEtcd)).await?;
    assert_eq!(figures.backend, "etcd");
    assert_eq!(figures.fanout_each.count, 30);
    Ok(())
}
