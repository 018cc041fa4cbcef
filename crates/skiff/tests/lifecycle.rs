//! End to end, as root, on the built-in runtime: the container lifecycle
//! as the kubelet runs it, seen through the real kubectl. A container that
//! exits is restarted with back-off (`CrashLoopBackOff`, `restartCount`,
//! `lastState`); a failing liveness probe restarts a container; a memory
//! limit ends in `OOMKilled`; and a restarted agent adopts the containers
//! it left running instead of starting them again.
//!
//! Every server runs in a network namespace of its own (see `common`).

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Cluster, path_str};
use serde_json::Value;

fn pod_json(cluster: &Cluster, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &cluster.ok(&["get", "pod", name, "-o", "json"])?,
    )?)
}

/// Polls the pod until `check` accepts it.
fn wait_pod(
    cluster: &Cluster,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(pod) = pod_json(cluster, name) {
            if check(&pod) {
                return Ok(pod);
            }
            last = pod;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "pod {name} never got {what}; last status: {}\nserver log tail:\n{}",
        last["status"],
        cluster.log_tail()
    )
}

/// The pod's events, as (reason, message).
fn events(cluster: &Cluster, pod: &str) -> Result<Vec<(String, String)>> {
    let selector = format!("involvedObject.name={pod}");
    let list: Value = serde_json::from_str(&cluster.ok(&[
        "get",
        "events",
        "--field-selector",
        &selector,
        "-o",
        "json",
    ])?)?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn apply(cluster: &Cluster, name: &str, manifest: &str) -> Result<()> {
    let file = cluster.write(&format!("{name}.yaml"), manifest)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    Ok(())
}

fn delete_and_wait(cluster: &Cluster, name: &str) -> Result<()> {
    cluster.ok(&["delete", "pod", name, "--grace-period=1", "--timeout=60s"])?;
    cluster.wait_for(
        &[
            "get",
            "pods",
            "--field-selector",
            &format!("metadata.name={name}"),
            "-o",
            "name",
        ],
        "",
        Duration::from_secs(60),
    )
}

fn restart_count(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

const CRASHING: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  restartPolicy: Always
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["exit", "3"]
"#;

#[test]
fn a_container_that_exits_is_restarted_with_back_off() -> Result<()> {
    let cluster = Cluster::start()?;
    apply(&cluster, "crash", CRASHING)?;
    // Restarts at about 0 s, +10 s, +20 s: the second restart within 90 s,
    // and the container waits in CrashLoopBackOff between them.
    let pod = wait_pod(
        &cluster,
        "crash",
        Duration::from_secs(90),
        "two restarts and CrashLoopBackOff",
        |p| {
            restart_count(p) >= 2
                && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CrashLoopBackOff"
        },
    )?;
    let cs = &pod["status"]["containerStatuses"][0];
    ensure!(
        cs["lastState"]["terminated"]["exitCode"] == 3,
        "last state should be the exit with code 3: {cs}"
    );
    ensure!(cs["ready"] == false, "{cs}");
    ensure!(pod["status"]["phase"] == "Running", "{}", pod["status"]);
    let ready = pod["status"]["conditions"]
        .as_array()
        .context("conditions")?
        .iter()
        .find(|c| c["type"] == "Ready")
        .context("Ready condition")?;
    ensure!(ready["status"] == "False", "{ready}");
    let evs = events(&cluster, "crash")?;
    ensure!(
        evs.iter()
            .any(|(r, m)| r == "BackOff" && m.contains("Back-off restarting failed container")),
        "no BackOff event: {evs:?}"
    );
    ensure!(
        evs.iter().filter(|(r, _)| r == "Started").count() >= 1,
        "{evs:?}"
    );
    // Back-off, not a tight loop: after ~30 s far fewer than 10 restarts.
    std::thread::sleep(Duration::from_secs(5));
    let pod = pod_json(&cluster, "crash")?;
    ensure!(restart_count(&pod) <= 4, "{}", pod["status"]);
    delete_and_wait(&cluster, "crash")
}

const STUBBORN: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: stubborn
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["ignore-term"]
"#;

/// Whether the pod `name` still exists, and its deletion timestamp.
fn still_there(cluster: &Cluster, name: &str) -> Result<Option<Value>> {
    let out = cluster.ok(&[
        "get",
        "pods",
        "--field-selector",
        &format!("metadata.name={name}"),
        "-o",
        "json",
    ])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .and_then(|items| items.first())
        .map(|p| p["metadata"]["deletionTimestamp"].clone()))
}

#[test]
fn a_container_that_ignores_sigterm_is_killed_after_its_grace_period() -> Result<()> {
    let cluster = Cluster::start()?;
    let wait_ignoring = |cluster: &Cluster| {
        cluster.wait_for(
            &["logs", "stubborn"],
            "ignoring SIGTERM",
            Duration::from_secs(60),
        )
    };
    // The pod's own grace period (4 s): SIGTERM changes nothing, so the
    // pod is still there, terminating, well inside it, and gone after it.
    apply(&cluster, "stubborn", STUBBORN)?;
    wait_ignoring(&cluster)?;
    let deleted = Instant::now();
    cluster.ok(&["delete", "pod", "stubborn", "--wait=false"])?;
    std::thread::sleep(Duration::from_secs(2));
    let terminating = still_there(&cluster, "stubborn")?;
    ensure!(
        terminating.as_ref().is_some_and(|ts| ts.is_string()),
        "2 s into a 4 s grace period the pod should still be terminating: {terminating:?}"
    );
    cluster.wait_for(
        &[
            "get",
            "pods",
            "--field-selector",
            "metadata.name=stubborn",
            "-o",
            "name",
        ],
        "",
        Duration::from_secs(60),
    )?;
    let took = deleted.elapsed();
    ensure!(
        took >= Duration::from_secs(4),
        "the pod went after {took:?}, before its 4 s grace period ended"
    );
    let evs = events(&cluster, "stubborn")?;
    ensure!(
        evs.iter().any(|(r, _)| r == "Killing"),
        "no Killing event: {evs:?}"
    );

    // `kubectl delete --grace-period=0 --force` overrides it: the pod object
    // goes at once and the container is killed without waiting.
    apply(&cluster, "stubborn", STUBBORN)?;
    wait_ignoring(&cluster)?;
    cluster.ok(&["delete", "pod", "stubborn", "--grace-period=0", "--force"])?;
    ensure!(
        still_there(&cluster, "stubborn")?.is_none(),
        "a forced delete should remove the pod at once"
    );
    Ok(())
}

const LIVENESS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["netexec", "--http-port", "8080"]
    livenessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
      failureThreshold: 2
"#;

#[test]
fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let cluster = Cluster::start()?;
    apply(&cluster, "live", LIVENESS)?;
    let pod = wait_pod(
        &cluster,
        "live",
        Duration::from_secs(60),
        "a restart",
        |p| restart_count(p) >= 1,
    )?;
    let cs = &pod["status"]["containerStatuses"][0];
    ensure!(
        cs["lastState"]["terminated"].is_object(),
        "the killed container should be the last state: {cs}"
    );
    let evs = events(&cluster, "live")?;
    ensure!(
        evs.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed")),
        "no Unhealthy event: {evs:?}"
    );
    ensure!(
        evs.iter()
            .any(|(r, m)| r == "Killing" && m.contains("failed liveness probe")),
        "no Killing event: {evs:?}"
    );
    delete_and_wait(&cluster, "live")
}

const HOG: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["alloc-memory", "200"]
    resources:
      limits: {memory: 32Mi}
"#;

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() -> Result<()> {
    let cluster = Cluster::start()?;
    apply(&cluster, "hog", HOG)?;
    let pod = wait_pod(
        &cluster,
        "hog",
        Duration::from_secs(60),
        "phase Failed",
        |p| p["status"]["phase"] == "Failed",
    )?;
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    ensure!(term["reason"] == "OOMKilled", "{term}");
    ensure!(term["exitCode"] == 137, "{term}");
    ensure!(
        pod["status"]["qosClass"] == "BestEffort" || pod["status"]["qosClass"] == "Burstable",
        "{}",
        pod["status"]
    );
    delete_and_wait(&cluster, "hog")
}

const STEADY: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: steady
spec:
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["netexec", "--http-port", "8080"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
"#;

#[test]
fn a_restarted_agent_adopts_the_running_containers() -> Result<()> {
    let mut cluster = Cluster::start()?;
    apply(&cluster, "steady", STEADY)?;
    let ready = |p: &Value| p["status"]["containerStatuses"][0]["ready"] == true;
    let before = wait_pod(&cluster, "steady", Duration::from_secs(60), "Ready", ready)?;
    let cs = before["status"]["containerStatuses"][0].clone();

    cluster.restart()?;
    // The restarted agent runs pods again (a second one becomes Ready),
    // and by then it has gone over the first one: found its container
    // and left it running.
    apply(
        &cluster,
        "second",
        &STEADY.replace("name: steady", "name: second"),
    )?;
    wait_pod(&cluster, "second", Duration::from_secs(60), "Ready", ready)?;
    let after = wait_pod(&cluster, "steady", Duration::from_secs(60), "Ready", ready)?;
    let cs2 = &after["status"]["containerStatuses"][0];
    ensure!(
        cs2["containerID"] == cs["containerID"],
        "a new container was started: {cs} then {cs2}"
    );
    ensure!(
        cs2["state"]["running"]["startedAt"] == cs["state"]["running"]["startedAt"],
        "{cs} then {cs2}"
    );
    ensure!(cs2["restartCount"] == 0, "{cs2}");
    ensure!(
        after["status"]["podIP"] == before["status"]["podIP"],
        "{} then {}",
        before["status"],
        after["status"]
    );
    // Still the same process, still serving, still reachable through exec.
    let target = format!(
        "{}:8080",
        after["status"]["podIP"].as_str().context("podIP")?
    );
    cluster.ok(&["exec", "steady", "--", "/testbin", "connect", &target])?;
    let evs = events(&cluster, "steady")?;
    ensure!(
        evs.iter().filter(|(r, _)| r == "Started").count() == 1,
        "the container was started more than once: {evs:?}"
    );
    delete_and_wait(&cluster, "second")?;
    delete_and_wait(&cluster, "steady")
}

const CONFIGURED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-from-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata:
  name: configured
  labels: {tier: demo}
spec:
  containers:
  - name: c
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["pause"]
    env:
    - {name: PLAIN, value: plain-value}
    - name: FROM_CM
      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}
    - name: FROM_SECRET
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: MY_POD
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: MEM_LIMIT
      valueFrom: {resourceFieldRef: {resource: limits.memory}}
    resources:
      limits: {memory: 64Mi}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: cm, mountPath: /etc/cm}
    - {name: sec, mountPath: /etc/sec}
    - {name: info, mountPath: /etc/info}
    - {name: proj, mountPath: /etc/proj}
  volumes:
  - name: scratch
    emptyDir: {medium: Memory}
  - name: cm
    configMap: {name: settings}
  - name: sec
    secret: {secretName: creds}
  - name: info
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
  - name: proj
    projected:
      sources:
      - configMap: {name: settings, items: [{key: greeting, path: g}]}
      - secret: {name: creds, items: [{key: password, path: p}]}
"#;

#[test]
fn env_and_volumes_are_visible_inside_the_container() -> Result<()> {
    let cluster = Cluster::start()?;
    apply(&cluster, "configured", CONFIGURED)?;
    wait_pod(
        &cluster,
        "configured",
        Duration::from_secs(60),
        "Running",
        |p| p["status"]["containerStatuses"][0]["state"]["running"].is_object(),
    )?;
    let inside = |args: &[&str]| -> Result<String> {
        let mut all = vec!["exec", "configured", "--", "/testbin"];
        all.extend_from_slice(args);
        Ok(cluster.ok(&all)?.trim().to_string())
    };
    for (var, want) in [
        ("PLAIN", "plain-value"),
        ("FROM_CM", "hello-from-configmap"),
        ("FROM_SECRET", "s3cret"),
        ("MY_POD", "configured"),
        ("MEM_LIMIT", "67108864"),
    ] {
        let got = inside(&["env", var])?;
        ensure!(got == want, "{var}={got:?}, want {want:?}");
    }
    for (file, want) in [
        ("/etc/cm/greeting", "hello-from-configmap"),
        ("/etc/sec/password", "s3cret"),
        ("/etc/info/labels", "tier=\"demo\""),
        ("/etc/proj/g", "hello-from-configmap"),
        ("/etc/proj/p", "s3cret"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
            "default",
        ),
    ] {
        let got = inside(&["cat", file])?;
        ensure!(got == want, "{file}: {got:?}, want {want:?}");
    }
    // The memory-backed emptyDir is writable (a file copied in with tar).
    let local = cluster.write("note.txt", "scratch works\n")?;
    cluster.ok(&["cp", path_str(&local)?, "configured:/scratch/note.txt"])?;
    ensure!(inside(&["cat", "/scratch/note.txt"])? == "scratch works");
    delete_and_wait(&cluster, "configured")?;
    cluster.ok(&["delete", "configmap", "settings"])?;
    cluster.ok(&["delete", "secret", "creds"])?;
    Ok(())
}
