//! End to end with the Python `kubernetes` client (installed by
//! `scripts/install-deps.sh` in `/opt/skiff-test/venv`): the script
//! `tests/python/client_flows.py` runs CRUD on ConfigMaps and a Deployment, a
//! watch from a resourceVersion, a 409 conflict and a 404, against a server
//! on each backend; creates objects the way the generated models send them
//! by default (no `kind`, no `apiVersion`); and reads the server's version.

mod support;

use anyhow::{Context, ensure};
use support::{Backend, Options, TestServer, clients};

/// Runs the script's `flows` against a fresh server on `backend`.
async fn run_client_flows(backend: Backend, flows: &[&str]) -> anyhow::Result<()> {
    let python = clients::python()?;
    let server = TestServer::start_with(Options {
        backend,
        ..Default::default()
    })
    .await?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_flows.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&server.kubeconfig)
            .arg("flows")
            .args(flows)
            .env("HOME", server.dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the Python client flows timed out")?
    .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("all flows passed"),
        "{} {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        python.display(),
        script.display(),
        out.status
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_crud_watch_conflict_and_not_found_on_the_embedded_store()
-> anyhow::Result<()> {
    run_client_flows(Backend::Embedded, &["objects"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_crud_watch_conflict_and_not_found_on_etcd() -> anyhow::Result<()> {
    run_client_flows(Backend::Etcd, &["objects"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_the_server_version_at_version_with_a_trailing_slash()
-> anyhow::Result<()> {
    run_client_flows(Backend::Embedded, &["version"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_objects_whose_body_omits_kind_and_api_version() -> anyhow::Result<()>
{
    run_client_flows(Backend::Embedded, &["kindless"]).await
}
