//! End to end with kubectl v1.35 (installed by `scripts/install-deps.sh`
//! under `/opt/skiff-test/bin`): the core flows of the v1.32 tests in
//! `kubectl.rs`, so that a newer client's requests are covered too.

mod support;

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, ensure};
use support::{MANIFEST, Options, TestServer, clients, read_lines};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A server driven by kubectl v1.35.
async fn server() -> anyhow::Result<TestServer> {
    TestServer::start_with(Options {
        kubectl: clients::kubectl_1_35()?,
        ..Default::default()
    })
    .await
}

/// A server with the `demo` namespace and [`MANIFEST`] applied; returns the
/// manifest's path too.
async fn server_with_app() -> anyhow::Result<(TestServer, String)> {
    let server = server().await?;
    server.ok(&["create", "namespace", "demo"]).await?;
    let file = server.write("app.yaml", MANIFEST)?;
    let file = file.to_str().context("utf-8 path")?.to_string();
    let out = server.ok(&["apply", "-f", &file]).await?;
    ensure!(out.contains("configmap/app-config created"), "{out}");
    ensure!(out.contains("deployment.apps/web created"), "{out}");
    Ok((server, file))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_is_the_version_under_test() -> anyhow::Result<()> {
    let server = server().await?;
    let out = server.ok(&["version", "-o", "json"]).await?;
    let version: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        version["clientVersion"]["minor"] == "35",
        "not kubectl 1.35: {version}"
    );
    ensure!(
        version["serverVersion"]["gitVersion"].is_string(),
        "{version}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_api_resources_and_explain_read_discovery_and_openapi() -> anyhow::Result<()> {
    let server = server().await?;
    let out = server.ok(&["api-resources", "-o", "wide"]).await?;
    for resource in skiff_apiserver::resources::RESOURCES {
        ensure!(
            out.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.first() == Some(&resource.plural)
                    && cols.contains(&resource.api_version().as_str())
                    && cols.contains(&resource.kind)
            }),
            "{} {} missing in:\n{out}",
            resource.api_version(),
            resource.plural
        );
    }
    let out = server.ok(&["get", "ns", "-o", "name"]).await?;
    ensure!(out.contains("namespace/kube-system"), "{out}");

    let out = server.ok(&["explain", "pod.spec.containers"]).await?;
    ensure!(out.contains("KIND:       Pod"), "{out}");
    ensure!(out.contains("FIELD: containers <[]Container>"), "{out}");
    let out = server
        .ok(&["explain", "deployment.spec", "--recursive"])
        .await?;
    ensure!(
        out.contains("GROUP:      apps") && out.contains("FIELD: spec <DeploymentSpec>"),
        "{out}"
    );
    let err = server.fails(&["explain", "pod.spec.nosuchfield"]).await?;
    ensure!(err.contains("nosuchfield"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_apply_then_get_as_json_yaml_wide_and_describe() -> anyhow::Result<()> {
    let (server, file) = server_with_app().await?;
    let cm = server
        .json(&["get", "configmap", "app-config", "-n", "demo"])
        .await?;
    ensure!(cm["data"]["greeting"] == "hello", "{cm}");
    ensure!(
        cm["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36),
        "{cm}"
    );
    ensure!(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{cm}"
    );
    let yaml = server
        .ok(&["get", "deploy", "web", "-n", "demo", "-o", "yaml"])
        .await?;
    ensure!(
        yaml.contains("kind: Deployment") && yaml.contains("image: nginx:1.27"),
        "{yaml}"
    );
    let wide = server
        .ok(&["get", "deployments", "-n", "demo", "-o", "wide"])
        .await?;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header.starts_with(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"])
            && header.contains(&"CONTAINERS")
            && header.contains(&"SELECTOR"),
        "{wide}"
    );
    let row = wide.lines().nth(1).unwrap_or_default();
    ensure!(
        row.starts_with("web")
            && row.contains("nginx:1.27,busybox:1.36")
            && row.contains("app=web"),
        "{wide}"
    );

    let out = server
        .ok(&["describe", "deployment", "web", "-n", "demo"])
        .await?;
    for want in [
        "Name:",
        "Namespace:",
        "demo",
        "Selector:",
        "app=web",
        "nginx:1.27",
        "MODE:",
    ] {
        ensure!(out.contains(want), "{want} missing in:\n{out}");
    }
    let out = server
        .ok(&["describe", "configmap", "app-config", "-n", "demo"])
        .await?;
    ensure!(out.contains("greeting") && out.contains("hello"), "{out}");

    // Re-applying unchanged is a no-op.
    let out = server.ok(&["apply", "-f", &file]).await?;
    ensure!(out.contains("configmap/app-config unchanged"), "{out}");
    ensure!(out.contains("deployment.apps/web unchanged"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_label_annotate_and_patch_of_every_type() -> anyhow::Result<()> {
    let (server, _) = server_with_app().await?;
    server
        .ok(&["label", "cm", "app-config", "-n", "demo", "tier=front"])
        .await?;
    server
        .ok(&["annotate", "cm", "app-config", "-n", "demo", "owner=team-a"])
        .await?;
    let cm = server
        .json(&["get", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(
        cm["metadata"]["labels"]["tier"] == "front" && cm["metadata"]["labels"]["app"] == "web",
        "{cm}"
    );
    ensure!(cm["metadata"]["annotations"]["owner"] == "team-a", "{cm}");
    let out = server
        .ok(&["get", "cm", "-n", "demo", "-l", "tier=front", "-o", "name"])
        .await?;
    ensure!(out.trim() == "configmap/app-config", "{out}");
    server
        .ok(&["label", "cm", "app-config", "-n", "demo", "tier-"])
        .await?;
    let cm = server
        .json(&["get", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(cm["metadata"]["labels"].get("tier").is_none(), "{cm}");

    server
        .ok(&[
            "patch",
            "cm",
            "app-config",
            "-n",
            "demo",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"extra":"1"}}"#,
        ])
        .await?;
    server
        .ok(&[
            "patch",
            "cm",
            "app-config",
            "-n",
            "demo",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/data/greeting"}]"#,
        ])
        .await?;
    let cm = server
        .json(&["get", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(cm["data"] == serde_json::json!({"extra": "1"}), "{cm}");

    server
        .ok(&[
            "patch", "deploy", "web", "-n", "demo", "--type", "strategic", "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"nginx:1.28"}]}}}}"#,
        ])
        .await?;
    let dep = server.json(&["get", "deploy", "web", "-n", "demo"]).await?;
    let containers = &dep["spec"]["template"]["spec"]["containers"];
    ensure!(containers[0]["image"] == "nginx:1.28", "{dep}");
    ensure!(
        containers[0]["env"][0]["name"] == "MODE",
        "strategic merge kept env: {dep}"
    );
    ensure!(
        containers[1]["name"] == "sidecar",
        "strategic merge kept the sidecar: {dep}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_edit_saves_what_the_editor_wrote() -> anyhow::Result<()> {
    let (server, _) = server_with_app().await?;
    // kubectl runs $EDITOR on a temp file holding the object as YAML.
    let editor = server.write(
        "editor.sh",
        "#!/bin/sh\nsed -i -e 's/greeting: hello/greeting: edited/' -e 's/replicas: 2/replicas: 4/' \"$1\"\n",
    )?;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755))?;
    let editor = editor.to_str().context("utf-8")?;
    for (kind, name) in [("configmap", "app-config"), ("deployment", "web")] {
        let out = server
            .kubectl_env(
                &server.kubeconfig,
                &[("EDITOR", editor), ("KUBE_EDITOR", editor)],
                &["edit", kind, name, "-n", "demo"],
            )
            .await?;
        ensure!(
            out.status.success(),
            "kubectl edit {kind} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout)?;
        ensure!(stdout.contains("edited"), "{stdout}");
    }
    let cm = server
        .json(&["get", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(cm["data"]["greeting"] == "edited", "{cm}");
    let dep = server.json(&["get", "deploy", "web", "-n", "demo"]).await?;
    ensure!(dep["spec"]["replicas"] == 4, "{dep}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_delete_removes_objects_and_then_reports_not_found() -> anyhow::Result<()> {
    let (server, file) = server_with_app().await?;
    let out = server
        .ok(&["delete", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(out.contains(r#"configmap "app-config" deleted"#), "{out}");
    let err = server
        .fails(&["get", "cm", "app-config", "-n", "demo"])
        .await?;
    ensure!(
        err.contains(r#"Error from server (NotFound): configmaps "app-config" not found"#),
        "{err}"
    );
    let out = server
        .ok(&["delete", "-f", &file, "--ignore-not-found"])
        .await?;
    ensure!(out.contains(r#"deployment.apps "web" deleted"#), "{out}");
    let err = server
        .fails(&["get", "deploy", "web", "-n", "demo"])
        .await?;
    ensure!(err.contains(r#"deployments.apps "web" not found"#), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_get_watch_sees_additions_changes_and_deletions() -> anyhow::Result<()> {
    let server = server().await?;
    server.ok(&["create", "configmap", "before"]).await?;
    let mut child = server.spawn_kubectl(&["get", "configmaps", "-w", "--output-watch-events"])?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let initial = read_lines(&mut lines, 2).await?;
    ensure!(
        initial[0].starts_with("EVENT") && initial[0].contains("NAME"),
        "{initial:?}"
    );
    ensure!(
        initial[1].starts_with("ADDED") && initial[1].contains("before"),
        "{initial:?}"
    );
    server.ok(&["create", "configmap", "during"]).await?;
    server
        .ok(&["label", "configmap", "during", "changed=yes"])
        .await?;
    server.ok(&["delete", "configmap", "before"]).await?;
    let seen = read_lines(&mut lines, 3).await?;
    ensure!(
        seen[0].starts_with("ADDED") && seen[0].contains("during"),
        "{seen:?}"
    );
    ensure!(
        seen[1].starts_with("MODIFIED") && seen[1].contains("during"),
        "{seen:?}"
    );
    ensure!(
        seen[2].starts_with("DELETED") && seen[2].contains("before"),
        "{seen:?}"
    );
    child.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_server_side_apply_owns_fields_and_reports_conflicts() -> anyhow::Result<()> {
    let server = server().await?;
    server.ok(&["create", "namespace", "demo"]).await?;
    let file = server.write("app.yaml", MANIFEST)?;
    let file = file.to_str().context("utf-8 path")?;
    let out = server.ok(&["apply", "--server-side", "-f", file]).await?;
    ensure!(
        out.contains("configmap/app-config serverside-applied")
            && out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let dep = server
        .json(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "--show-managed-fields",
        ])
        .await?;
    ensure!(
        dep["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|m| m
                .iter()
                .any(|e| e["manager"] == "kubectl" && e["operation"] == "Apply")),
        "{dep}"
    );
    server
        .ok(&["scale", "deployment/web", "-n", "demo", "--replicas=5"])
        .await?;
    let err = server
        .fails(&["apply", "--server-side", "-f", file])
        .await?;
    ensure!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    let out = server
        .ok(&["apply", "--server-side", "--force-conflicts", "-f", file])
        .await?;
    ensure!(out.contains("serverside-applied"), "{out}");
    let dep = server.json(&["get", "deploy", "web", "-n", "demo"]).await?;
    ensure!(dep["spec"]["replicas"] == 2, "{dep}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_server_dry_run_answers_without_storing() -> anyhow::Result<()> {
    let server = server().await?;
    server.ok(&["create", "namespace", "demo"]).await?;
    let file = server.write("app.yaml", MANIFEST)?;
    let file = file.to_str().context("utf-8 path")?;
    let out = server
        .ok(&["apply", "--dry-run=server", "-f", file])
        .await?;
    ensure!(
        out.contains("configmap/app-config created (server dry run)"),
        "{out}"
    );
    let err = server
        .fails(&["get", "configmap", "app-config", "-n", "demo"])
        .await?;
    ensure!(err.contains("not found"), "{err}");
    server.ok(&["apply", "-f", file]).await?;
    let out = server
        .ok(&[
            "delete",
            "configmap",
            "app-config",
            "-n",
            "demo",
            "--dry-run=server",
        ])
        .await?;
    // 1.35 words it `configmap "app-config" deleted from demo namespace (server dry run)`.
    ensure!(
        out.contains(r#"configmap "app-config" deleted"#) && out.contains("(server dry run)"),
        "{out}"
    );
    server
        .ok(&["get", "configmap", "app-config", "-n", "demo"])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_chunked_list_pages_through_every_object() -> anyhow::Result<()> {
    let server = server().await?;
    for i in 0..5 {
        server
            .ok(&["create", "configmap", &format!("cm-{i}")])
            .await?;
    }
    let out = server
        .kubectl(&["get", "cm", "--chunk-size=2", "-o", "name", "-v=6"])
        .await?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.success(), "{stderr}");
    let names: Vec<&str> = stdout.lines().collect();
    ensure!(
        names
            == [
                "configmap/cm-0",
                "configmap/cm-1",
                "configmap/cm-2",
                "configmap/cm-3",
                "configmap/cm-4"
            ],
        "{names:?}"
    );
    let pages = stderr.lines().filter(|l| l.contains("limit=2")).count();
    ensure!(pages == 3, "expected 3 pages of 2, saw {pages}:\n{stderr}");
    ensure!(stderr.contains("continue="), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_35_invalid_object_is_rejected_with_422_naming_the_field() -> anyhow::Result<()> {
    let server = server().await?;
    let bad = MANIFEST
        .replace("namespace: demo", "namespace: default")
        .replace("replicas: 2", "replicas: -1");
    let file = server.write("bad.yaml", &bad)?;
    let out = server
        .kubectl(&["apply", "-f", file.to_str().context("utf-8")?, "-v=6"])
        .await?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(!out.status.success(), "accepted: {stderr}");
    ensure!(
        stderr.lines().any(|l| l.contains(r#"verb="POST""#)
            && l.contains("/deployments?")
            && l.contains(r#"status="422 Unprocessable Entity""#)),
        "no 422 answer to the create:\n{stderr}"
    );
    // kubectl words the Invalid status's causes itself.
    ensure!(
        stderr.contains(r#"The Deployment "web" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"#),
        "{stderr}"
    );
    let err = server.fails(&["get", "deploy", "web"]).await?;
    ensure!(err.contains("not found"), "nothing stored: {err}");
    Ok(())
}
