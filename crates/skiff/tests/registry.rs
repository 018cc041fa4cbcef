//! End to end, as root: pods whose images come from real registries.
//! Two Debian `docker-registry` processes (one open, one behind htpasswd
//! basic auth) run on 127.0.0.1 inside the network namespace this test
//! creates for `skiff server` and its local agent (no route leaves it); the
//! test image is pushed to both with the fixture's own OCI distribution
//! client. Pods with `imagePullPolicy: Always` pull from them over plain
//! HTTP (loopback registries are insecure by default), the private one
//! with a `kubernetes.io/dockerconfigjson` pull secret made by `kubectl
//! create secret docker-registry`; pulls that cannot succeed leave the
//! container waiting in ErrImagePull / ImagePullBackOff (InvalidImageName
//! for a malformed name) with the reason in the pod's events.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Cluster, Netns, path_str};
use skiff_testing::{Registry, RegistryOptions};

const REPO: &str = "skiff/testbin";

fn pod(name: &str, image: &str, pull_secret: Option<&str>) -> String {
    let secrets = pull_secret
        .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
{secrets}  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    args: ["pause"]
"#
    )
}

/// Waits until the pod's container waits for one of `reasons`; returns
/// the pod's events' messages once one of them contains `event`.
fn wait_for_pull_failure(
    cluster: &Cluster,
    pod: &str,
    reasons: &[&str],
    event: &str,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        let status: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["get", "pod", pod, "-o", "json"])?)?;
        let waiting = &status["status"]["containerStatuses"][0]["state"]["waiting"];
        let reason = waiting["reason"].as_str().unwrap_or_default();
        let events: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["get", "events", "-o", "json"])?)?;
        let messages: Vec<String> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == pod)
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect();
        last = format!("waiting {waiting}; events {messages:?}");
        if reasons.contains(&reason) && messages.iter().any(|m| m.contains(event)) {
            return Ok(messages.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "pod {pod} never waited in {reasons:?} with an event containing {event:?}; last: {last}\nserver log tail:\n{}",
        cluster.log_tail()
    )
}

#[test]
fn pods_pull_from_loopback_registries_with_their_pull_secrets_and_report_failed_pulls() -> Result<()>
{
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test runs containers and network namespaces: run it as root"
    );
    let netns = Netns::create("registry")?;
    let netns_path = PathBuf::from(format!("/var/run/netns/{}", netns.name));
    let open = Registry::start(RegistryOptions {
        netns: Some(netns_path.clone()),
        ..Default::default()
    })?;
    let private = Registry::start(RegistryOptions {
        basic_auth: Some(("alice".into(), "s3cret".into())),
        netns: Some(netns_path),
    })?;
    open.push_test_image(REPO, "1")?;
    private.push_test_image(REPO, "1")?;
    let cluster = Cluster::start_in(netns, &[])?;

    cluster.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", private.host()),
        "--docker-username=alice",
        "--docker-password=s3cret",
    ])?;
    let public_image = format!("{}/{REPO}:1", open.host());
    let private_image = format!("{}/{REPO}:1", private.host());
    let pods = [
        pod("public", &public_image, None),
        pod("private", &private_image, Some("regcred")),
        pod("no-secret", &private_image, None),
        pod("missing", &format!("{}/{REPO}:nope", open.host()), None),
        pod("gone-secret", &private_image, Some("absent")),
        pod("bad-name", &format!("{}/Skiff/Upper:1", open.host()), None),
    ];
    let file = cluster.write("pods.yaml", &pods.join("---\n"))?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;

    cluster.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/public",
        "pod/private",
        "--timeout=120s",
    ])?;
    for name in ["public", "private"] {
        let pod: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["get", "pod", name, "-o", "json"])?)?;
        let cs = &pod["status"]["containerStatuses"][0];
        ensure!(pod["status"]["phase"] == "Running", "{pod}");
        let image_id = cs["imageID"].as_str().context("imageID")?;
        ensure!(image_id.contains("sha256:"), "{cs}");
    }

    let pulls = [
        ("no-secret", "requires credentials"),
        ("missing", "not found"),
        // The kubelet's warning, and then an anonymous pull that fails.
        (
            "gone-secret",
            "Unable to retrieve some image pull secrets (absent)",
        ),
    ];
    for (name, why) in pulls {
        let events =
            wait_for_pull_failure(&cluster, name, &["ErrImagePull", "ImagePullBackOff"], why)?;
        ensure!(events.contains("Failed to pull image"), "{name}: {events}");
    }
    let events = wait_for_pull_failure(
        &cluster,
        "gone-secret",
        &["ErrImagePull", "ImagePullBackOff"],
        "requires credentials",
    )?;
    ensure!(events.contains("Failed to pull image"), "{events}");
    // A name no registry could serve is not pulled at all.
    let events = wait_for_pull_failure(
        &cluster,
        "bad-name",
        &["InvalidImageName"],
        "Failed to apply default image tag",
    )?;
    ensure!(!events.contains("Pulling image"), "{events}");
    Ok(())
}
