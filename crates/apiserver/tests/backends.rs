//! The API behaviour that depends on the store, run through kubectl on both
//! backends: the embedded store and a real etcd. Each behaviour is one
//! function; `on_every_backend!` makes one test per backend of it, named
//! `<backend>::<behaviour>`.

mod support;

use anyhow::{Context, ensure};
use serde_json::Value;
use support::{Backend, Options, TestServer, read_lines};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn start(backend: Backend) -> anyhow::Result<TestServer> {
    TestServer::start_with(Options {
        backend,
        ..Default::default()
    })
    .await
}

macro_rules! on_every_backend {
    ($($behaviour:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() -> anyhow::Result<()> {
                    super::$behaviour(super::start(super::Backend::Embedded).await?).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() -> anyhow::Result<()> {
                    super::$behaviour(super::start(super::Backend::Etcd).await?).await
                }
            )*
        }
    };
}

on_every_backend!(
    create_get_replace_and_delete_round_trip,
    watch_resumes_after_a_resource_version_with_every_later_change,
    chunked_lists_page_through_one_consistent_snapshot,
    stale_resource_version_is_a_conflict_and_stores_nothing,
    compacted_resource_versions_answer_410_gone,
);

fn rv(obj: &Value) -> anyhow::Result<String> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no resourceVersion in {obj}"))
}

async fn raw(server: &TestServer, path: &str) -> anyhow::Result<Value> {
    let out = server.ok(&["get", "--raw", path]).await?;
    serde_json::from_str(&out).with_context(|| format!("parsing {path}: {out}"))
}

async fn create_get_replace_and_delete_round_trip(server: TestServer) -> anyhow::Result<()> {
    server.ok(&["create", "namespace", "demo"]).await?;
    let out = server
        .ok(&[
            "create",
            "configmap",
            "c",
            "-n",
            "demo",
            "--from-literal=k=1",
        ])
        .await?;
    ensure!(out.contains("configmap/c created"), "{out}");
    let cm = server.json(&["get", "cm", "c", "-n", "demo"]).await?;
    ensure!(cm["data"]["k"] == "1", "{cm}");
    let created = rv(&cm)?;

    let replaced = serde_json::to_string(&{
        let mut cm = cm.clone();
        cm["data"]["k"] = "2".into();
        cm
    })?;
    let file = server.write("c.json", &replaced)?;
    let out = server
        .ok(&["replace", "-f", file.to_str().context("utf-8")?])
        .await?;
    ensure!(out.contains("configmap/c replaced"), "{out}");
    let cm = server.json(&["get", "cm", "c", "-n", "demo"]).await?;
    ensure!(cm["data"]["k"] == "2", "{cm}");
    ensure!(
        rv(&cm)?.parse::<i64>()? > created.parse::<i64>()?,
        "resourceVersion grows: {created} then {cm}"
    );

    let list = server.json(&["get", "cm", "-A"]).await?;
    ensure!(list["items"].as_array().map(Vec::len) == Some(1), "{list}");
    let out = server.ok(&["delete", "cm", "c", "-n", "demo"]).await?;
    ensure!(out.contains(r#"configmap "c" deleted"#), "{out}");
    let err = server.fails(&["get", "cm", "c", "-n", "demo"]).await?;
    ensure!(err.contains(r#"configmaps "c" not found"#), "{err}");
    Ok(())
}

async fn watch_resumes_after_a_resource_version_with_every_later_change(
    server: TestServer,
) -> anyhow::Result<()> {
    server
        .ok(&["create", "configmap", "a", "--from-literal=k=1"])
        .await?;
    let from = rv(&server.json(&["get", "cm", "a"]).await?)?;
    // Changes made while nobody watches.
    server.ok(&["label", "configmap", "a", "step=two"]).await?;
    server.ok(&["create", "configmap", "b"]).await?;
    server.ok(&["delete", "configmap", "a"]).await?;

    let path = format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={from}");
    let mut child = server.spawn_kubectl(&["get", "--raw", &path])?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let events = read_lines(&mut lines, 3).await?;
    let events: Vec<Value> = events
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("event {l}")))
        .collect::<anyhow::Result<_>>()?;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        seen == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")],
        "{events:?}"
    );
    ensure!(
        events[0]["object"]["metadata"]["labels"]["step"] == "two",
        "{events:?}"
    );
    // And it goes on with live changes.
    server.ok(&["create", "configmap", "c"]).await?;
    let live = read_lines(&mut lines, 1).await?;
    let live: Value = serde_json::from_str(&live[0])?;
    ensure!(
        live["type"] == "ADDED" && live["object"]["metadata"]["name"] == "c",
        "{live}"
    );
    child.kill().await?;
    Ok(())
}

async fn chunked_lists_page_through_one_consistent_snapshot(
    server: TestServer,
) -> anyhow::Result<()> {
    for i in 0..5 {
        server
            .ok(&["create", "configmap", &format!("cm-{i}")])
            .await?;
    }
    let first = raw(&server, "/api/v1/namespaces/default/configmaps?limit=2").await?;
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    ensure!(names(&first) == ["cm-0", "cm-1"], "{first}");
    let token = first["metadata"]["continue"]
        .as_str()
        .context("continue token")?
        .to_string();
    // A change after the first page is not seen by the later pages.
    server.ok(&["create", "configmap", "cm-9"]).await?;
    server.ok(&["delete", "configmap", "cm-3"]).await?;
    let second = raw(
        &server,
        &format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"),
    )
    .await?;
    ensure!(names(&second) == ["cm-2", "cm-3"], "{second}");
    ensure!(
        second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"],
        "pages share the first page's revision: {first} {second}"
    );

    // kubectl's own paging sees the current objects.
    let out = server
        .kubectl(&["get", "cm", "--chunk-size=2", "-o", "name", "-v=6"])
        .await?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.success(), "{stderr}");
    ensure!(
        stdout.lines().collect::<Vec<_>>()
            == [
                "configmap/cm-0",
                "configmap/cm-1",
                "configmap/cm-2",
                "configmap/cm-4",
                "configmap/cm-9"
            ],
        "{stdout}"
    );
    let pages = stderr.lines().filter(|l| l.contains("limit=2")).count();
    ensure!(pages == 3, "expected 3 pages of 2, saw {pages}:\n{stderr}");
    Ok(())
}

async fn stale_resource_version_is_a_conflict_and_stores_nothing(
    server: TestServer,
) -> anyhow::Result<()> {
    server
        .ok(&["create", "configmap", "c", "--from-literal=k=1"])
        .await?;
    let stale = server.ok(&["get", "cm", "c", "-o", "json"]).await?;
    server
        .ok(&[
            "patch",
            "cm",
            "c",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"k":"2"}}"#,
        ])
        .await?;
    let stale = stale.replace(r#""k": "1""#, r#""k": "3""#);
    let file = server.write("stale.json", &stale)?;
    let file = file.to_str().context("utf-8")?;
    let err = server.fails(&["replace", "-f", file]).await?;
    ensure!(
        err.contains(r#"Operation cannot be fulfilled on configmaps "c": the object has been modified; please apply your changes to the latest version and try again"#),
        "{err}"
    );
    // A delete with a stale resourceVersion precondition conflicts too.
    let stale_rv: Value = serde_json::from_str(&stale)?;
    let options = format!(
        r#"{{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{{"resourceVersion":"{}"}}}}"#,
        rv(&stale_rv)?
    );
    let options = server.write("delete.json", &options)?;
    let err = server
        .fails(&[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps/c",
            "-f",
            options.to_str().context("utf-8")?,
        ])
        .await?;
    ensure!(
        err.contains("Conflict") || err.contains("conflict"),
        "{err}"
    );
    let cm = server.json(&["get", "cm", "c"]).await?;
    ensure!(
        cm["data"]["k"] == "2",
        "rejected writes stored nothing: {cm}"
    );
    Ok(())
}

async fn compacted_resource_versions_answer_410_gone(server: TestServer) -> anyhow::Result<()> {
    for i in 0..3 {
        server
            .ok(&["create", "configmap", &format!("cm-{i}")])
            .await?;
    }
    let old = rv(&server.json(&["get", "cm", "cm-0"]).await?)?;
    let first = raw(&server, "/api/v1/namespaces/default/configmaps?limit=1").await?;
    let token = first["metadata"]["continue"]
        .as_str()
        .context("continue token")?
        .to_string();
    server
        .ok(&["label", "configmap", "cm-0", "changed=yes"])
        .await?;
    let store = server.store()?;
    store.compact(store.current_revision().await?).await?;

    // A list at an exact compacted revision.
    let err = server
        .fails(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/configmaps?resourceVersion={old}&resourceVersionMatch=Exact"
            ),
        ])
        .await?;
    ensure!(
        err.contains("Error from server (Expired)") && err.contains("too old resource version"),
        "{err}"
    );
    // A continue token from before the compaction.
    let err = server
        .fails(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}"),
        ])
        .await?;
    ensure!(
        err.contains("Error from server (Expired)")
            && err.contains("The provided continue parameter is too old"),
        "{err}"
    );
    // A watch from a compacted revision older than the watch cache (which,
    // as in Kubernetes, serves the revisions it holds even once the store
    // compacted them): one ERROR event holding a 410 Status, then the end.
    let path = "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1";
    let mut child = server.spawn_kubectl(&["get", "--raw", path])?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = read_lines(&mut lines, 1).await?;
    let event: Value = serde_json::from_str(&first[0]).with_context(|| format!("{first:?}"))?;
    ensure!(
        event["type"] == "ERROR"
            && event["object"]["kind"] == "Status"
            && event["object"]["code"] == 410
            && event["object"]["reason"] == "Expired",
        "{event}"
    );
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line()).await;
    ensure!(
        matches!(end, Ok(Ok(None))),
        "the watch stays open after its 410 ERROR event: {end:?}"
    );
    // What a client then does: list again and watch from there.
    let fresh = raw(&server, "/api/v1/namespaces/default/configmaps").await?;
    ensure!(
        fresh["items"].as_array().map(Vec::len) == Some(3),
        "{fresh}"
    );
    Ok(())
}
