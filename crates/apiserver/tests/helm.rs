//! End to end with helm v4 (installed by `scripts/install-deps.sh` under
//! `/opt/skiff-test/bin`): a chart written by the test is installed,
//! listed, upgraded, rolled back and uninstalled. Helm keeps each release
//! revision as a Secret, so this drives Secrets with labels and selectors
//! too.

mod support;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use support::{TestServer, clients};

const CHART_YAML: &str = "\
apiVersion: v2
name: greeter
description: A ConfigMap, a Deployment and a Service for skiff's helm test
type: application
version: 0.1.0
appVersion: \"1.0\"
";

const VALUES_YAML: &str = "\
greeting: hello
replicas: 1
image: nginx:1.27
port: 80
";

const CONFIGMAP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
  greeting: {{ .Values.greeting | quote }}
";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
      - name: web
        image: {{ .Values.image }}
        ports:
        - containerPort: {{ .Values.port }}
        envFrom:
        - configMapRef:
            name: {{ .Release.Name }}-config
";

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-svc
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
  - name: http
    port: {{ .Values.port }}
    targetPort: {{ .Values.port }}
";

/// Writes the chart into `dir` and returns its path.
fn write_chart(dir: &Path) -> anyhow::Result<PathBuf> {
    let chart = dir.join("greeter");
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(chart.join("Chart.yaml"), CHART_YAML)?;
    std::fs::write(chart.join("values.yaml"), VALUES_YAML)?;
    std::fs::write(chart.join("templates/configmap.yaml"), CONFIGMAP)?;
    std::fs::write(chart.join("templates/deployment.yaml"), DEPLOYMENT)?;
    std::fs::write(chart.join("templates/service.yaml"), SERVICE)?;
    Ok(chart)
}

/// Runs helm against `server` and fails unless it succeeds; returns stdout.
async fn helm(server: &TestServer, args: &[&str]) -> anyhow::Result<String> {
    let bin = clients::helm()?;
    let home = server.dir.path().join("helm-home");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(&bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("helm {args:?} timed out"))?
    .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "helm {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The release's revision Secrets, as `(revision, status)` by revision.
async fn release_secrets(server: &TestServer) -> anyhow::Result<Vec<(String, String)>> {
    let list = server
        .json(&["get", "secrets", "-l", "owner=helm,name=greet"])
        .await?;
    let mut revisions: Vec<(String, String)> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|s| {
            ensure!(s["type"] == "helm.sh/release.v1", "{s}");
            let labels = &s["metadata"]["labels"];
            Ok((
                labels["version"].as_str().unwrap_or_default().to_string(),
                labels["status"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    revisions.sort_by_key(|(v, _)| v.parse::<u32>().unwrap_or(0));
    Ok(revisions)
}

async fn greeting_and_replicas(server: &TestServer) -> anyhow::Result<(Value, Value)> {
    let cm = server.json(&["get", "configmap", "greet-config"]).await?;
    let dep = server.json(&["get", "deployment", "greet-web"]).await?;
    Ok((
        cm["data"]["greeting"].clone(),
        dep["spec"]["replicas"].clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_lists_upgrades_rolls_back_and_uninstalls_a_chart() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let version = helm(&server, &["version", "--short"]).await?;
    ensure!(version.starts_with("v4."), "not helm v4: {version}");
    let chart = write_chart(server.dir.path())?;
    let chart = chart.to_str().context("utf-8 path")?;

    let out = helm(
        &server,
        &["install", "greet", chart, "--namespace", "default"],
    )
    .await?;
    ensure!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 1"),
        "{out}"
    );
    ensure!(
        greeting_and_replicas(&server).await? == ("hello".into(), 1.into()),
        "installed values"
    );
    let svc = server.json(&["get", "service", "greet-svc"]).await?;
    ensure!(
        svc["spec"]["ports"][0]["port"] == 80
            && svc["spec"]["selector"]["app.kubernetes.io/instance"] == "greet",
        "{svc}"
    );
    ensure!(
        release_secrets(&server).await? == [("1".to_string(), "deployed".to_string())],
        "one release Secret"
    );

    let list: Value = serde_json::from_str(&helm(&server, &["list", "-o", "json"]).await?)?;
    ensure!(
        list.as_array().map(Vec::len) == Some(1)
            && list[0]["name"] == "greet"
            && list[0]["revision"] == "1"
            && list[0]["status"] == "deployed"
            && list[0]["chart"] == "greeter-0.1.0",
        "{list}"
    );

    let out = helm(
        &server,
        &[
            "upgrade",
            "greet",
            chart,
            "--set",
            "greeting=bonjour",
            "--set",
            "replicas=3",
        ],
    )
    .await?;
    ensure!(out.contains("REVISION: 2"), "{out}");
    ensure!(
        greeting_and_replicas(&server).await? == ("bonjour".into(), 3.into()),
        "upgraded values"
    );
    ensure!(
        release_secrets(&server).await?
            == [
                ("1".to_string(), "superseded".to_string()),
                ("2".to_string(), "deployed".to_string())
            ],
        "{:?}",
        release_secrets(&server).await?
    );

    let out = helm(&server, &["rollback", "greet", "1"]).await?;
    ensure!(out.contains("Rollback was a success"), "{out}");
    ensure!(
        greeting_and_replicas(&server).await? == ("hello".into(), 1.into()),
        "rolled-back values"
    );
    let history: Value =
        serde_json::from_str(&helm(&server, &["history", "greet", "-o", "json"]).await?)?;
    ensure!(
        history.as_array().map(Vec::len) == Some(3)
            && history[2]["revision"] == 3
            && history[2]["status"] == "deployed",
        "{history}"
    );

    let out = helm(&server, &["uninstall", "greet"]).await?;
    ensure!(out.contains(r#"release "greet" uninstalled"#), "{out}");
    for (kind, name) in [
        ("configmap", "greet-config"),
        ("deployment", "greet-web"),
        ("service", "greet-svc"),
    ] {
        let err = server.fails(&["get", kind, name]).await?;
        ensure!(err.contains("not found"), "{kind}/{name}: {err}");
    }
    ensure!(
        release_secrets(&server).await?.is_empty(),
        "release Secrets removed"
    );
    let list: Value = serde_json::from_str(&helm(&server, &["list", "-o", "json"]).await?)?;
    ensure!(list == serde_json::json!([]), "{list}");
    Ok(())
}
