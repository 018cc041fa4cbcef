//! End to end, as root: service networking and the cluster DNS, with
//! `skiff server` in a network namespace of the test's own (see
//! `common`), driven by the real kubectl. A NodePort answers on the node
//! address from the host and stops answering once its service is deleted;
//! pods resolve cluster names (search path, ClusterIP, headless) through
//! their resolv.conf; `sessionAffinity: ClientIP` pins a client to one
//! endpoint while without it requests spread over both; a pod that turns
//! unready leaves its service's rotation within 2 s, and comes back. A
//! `type: LoadBalancer` service shows the node address as its external IP
//! and answers there on its own port until it turns ClusterIP; one on the
//! API server's port gets no address; a service's `externalIPs` answer
//! with its port.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Cluster, Netns, path_str, stop};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "8080"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
"#;

const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: client
    image: skiff.test/testbin:1
    imagePullPolicy: Never
    args: ["pause"]
"#;

/// The cluster with the two `web` pods Ready (and, with `client`, a client
/// pod Ready too); returns the web pods' names and IPs.
fn start_with_web(client: bool) -> Result<(Cluster, Vec<(String, String)>)> {
    let cluster = Cluster::start()?;
    let file = cluster.write("web.yaml", WEB)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    if client {
        let file = cluster.write("client.yaml", CLIENT)?;
        cluster.ok(&["apply", "-f", path_str(&file)?])?;
    }
    cluster.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    if client {
        cluster.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=120s",
        ])?;
    }
    let pods: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=web", "-o", "json"])?)?;
    let mut web = Vec::new();
    for pod in pods["items"].as_array().context("items")? {
        web.push((
            pod["metadata"]["name"]
                .as_str()
                .context("name")?
                .to_string(),
            pod["status"]["podIP"]
                .as_str()
                .context("podIP")?
                .to_string(),
        ));
    }
    ensure!(web.len() == 2, "{pods}");
    Ok((cluster, web))
}

/// `/testbin ARGS` in the client pod: (success, stdout, stderr).
fn in_client(cluster: &Cluster, args: &[&str]) -> Result<(bool, String, String)> {
    let mut all = vec!["exec", "client", "--", "/testbin"];
    all.extend_from_slice(args);
    let out = cluster.kubectl(&all)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Retries `GET url` from the host (the server's namespace) for up to
/// 30 s until it answers; returns the body. On failure the error ends with
/// `diagnostics()` (a log tail).
fn host_get_until(
    cluster: &Cluster,
    url: &str,
    diagnostics: impl Fn() -> String,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, body, err) = cluster.netns.http_get(url)?;
        if ok {
            return Ok(body);
        }
        ensure!(
            Instant::now() < deadline,
            "{url} never answered from the host: {body}{err}\n{}",
            diagnostics()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Retries `/testbin http-get URL` in the client pod until it succeeds
/// (the proxy's rules follow the service within seconds); returns the body.
fn client_get(cluster: &Cluster, url: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, body, err) = in_client(cluster, &["http-get", url])?;
        if ok {
            return Ok(body.trim().to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "GET {url} from the client pod kept failing: {body}{err}\n{}",
                cluster.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_node_port_answers_on_the_node_address_until_its_service_is_deleted() -> Result<()> {
    let (cluster, web) = start_with_web(false)?;
    let names: BTreeSet<&str> = web.iter().map(|(n, _)| n.as_str()).collect();
    cluster.ok(&[
        "expose",
        "deployment",
        "web",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ])?;
    let port = cluster.ok(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("nodePort {port:?}"))?;
    ensure!((30000..=32767).contains(&port), "nodePort {port}");
    let url = format!("http://10.99.0.1:{port}/hostname");

    let body = host_get_until(&cluster, &url, || cluster.log_tail())?;
    ensure!(
        names.contains(body.as_str()),
        "{url} answered {body:?}, not one of {names:?}"
    );

    // Deleting the service removes its rules: the port stops answering.
    cluster.ok(&["delete", "service", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, body, err) = cluster.netns.http_get(&url)?;
        if !ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{url} still answers 10 s after the service was deleted: {body}{err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

#[test]
fn pods_resolve_services_through_the_cluster_dns() -> Result<()> {
    let (cluster, web) = start_with_web(true)?;
    let svc = cluster.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n\
         ---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web-headless}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{port: 8080}]\n",
    )?;
    cluster.ok(&["apply", "-f", path_str(&svc)?])?;
    let ip = cluster.cluster_ip("web")?;
    let mut pod_ips: Vec<String> = web.iter().map(|(_, ip)| ip.clone()).collect();
    pod_ips.sort();

    let cases = [
        ("kubernetes.default", vec!["10.43.0.1".to_string()]),
        ("web.default.svc.cluster.local", vec![ip.clone()]),
        ("web", vec![ip.clone()]),
        ("web-headless.default.svc.cluster.local", pod_ips),
    ];
    for (name, want) in &cases {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = in_client(&cluster, &["lookup", name])?;
            let got: Vec<String> = out.lines().map(str::to_string).collect();
            if ok && &got == want {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "lookup {name} printed {out:?} (want {want:?}): {err}\n{}",
                cluster.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The name works end to end: the service answers through it.
    let body = client_get(&cluster, "http://web.default.svc.cluster.local:80/hostname")?;
    ensure!(web.iter().any(|(n, _)| *n == body), "{body:?}");
    // An unknown name does not resolve.
    let (ok, out, _) = in_client(
        &cluster,
        &["lookup", "nothing-here.default.svc.cluster.local"],
    )?;
    ensure!(!ok, "an unknown service resolved: {out}");

    cluster.ok(&["delete", "service", "web", "web-headless"])?;
    Ok(())
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_pod_and_without_it_both_answer() -> Result<()> {
    let (cluster, web) = start_with_web(true)?;
    let svc = cluster.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{port: 80, targetPort: 8080}]\n\
         ---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: spread}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    cluster.ok(&["apply", "-f", path_str(&svc)?])?;
    let names: BTreeSet<String> = web.iter().map(|(n, _)| n.clone()).collect();

    let sticky = format!("http://{}:80/hostname", cluster.cluster_ip("sticky")?);
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(client_get(&cluster, &sticky)?);
    }
    ensure!(
        seen.len() == 1 && seen.is_subset(&names),
        "with ClientIP affinity one client reached {seen:?} (pods {names:?})"
    );

    let spread = format!("http://{}:80/hostname", cluster.cluster_ip("spread")?);
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(client_get(&cluster, &spread)?);
        if seen.len() == 2 {
            break;
        }
    }
    ensure!(
        seen == names,
        "without affinity 30 requests reached {seen:?}, not both of {names:?}"
    );

    cluster.ok(&["delete", "service", "sticky", "spread"])?;
    Ok(())
}

/// The pod's `Ready` condition status.
fn ready_status(cluster: &Cluster, pod: &str) -> Result<String> {
    Ok(cluster
        .ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?
        .trim()
        .to_string())
}

/// Waits until the pod's `Ready` condition is `want`.
fn wait_ready(cluster: &Cluster, pod: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_status(cluster, pod)? != want {
        if Instant::now() > deadline {
            bail!(
                "pod {pod} never became Ready={want}\n{}",
                cluster.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn a_pod_that_turns_unready_leaves_the_rotation_within_two_seconds() -> Result<()> {
    let (cluster, web) = start_with_web(true)?;
    let svc = cluster.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    cluster.ok(&["apply", "-f", path_str(&svc)?])?;
    let url = format!("http://{}:80/hostname", cluster.cluster_ip("web")?);
    let names: BTreeSet<String> = web.iter().map(|(n, _)| n.clone()).collect();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(client_get(&cluster, &url)?);
        if seen == names {
            break;
        }
    }
    ensure!(
        seen == names,
        "before: requests reached {seen:?}, not {names:?}"
    );

    // The first pod's readiness probe starts failing (netexec's toggle).
    let (sick, sick_ip) = &web[0];
    let toggle = format!("http://{sick_ip}:8080/fail-healthz");
    client_get(&cluster, &toggle)?;
    wait_ready(&cluster, sick, "False")?;
    // Within 2 s of the pod showing unready, the service stops sending to it.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..20 {
        let who = client_get(&cluster, &url)?;
        ensure!(
            &who != sick,
            "{sick} is unready but still answered through the service"
        );
    }

    // Healthy again: it comes back into the rotation.
    client_get(&cluster, &format!("http://{sick_ip}:8080/heal"))?;
    wait_ready(&cluster, sick, "True")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if &client_get(&cluster, &url)? == sick {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{sick} is Ready again but not back in the rotation"
        );
    }
    cluster.ok(&["delete", "service", "web"])?;
    Ok(())
}

const LOAD_BALANCED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: lb-web
spec:
  replicas: 2
  selector:
    matchLabels: {app: lb-web}
  template:
    metadata:
      labels: {app: lb-web}
    spec:
      containers:
      - name: netexec
        image: skiff.test/testbin:1
        imagePullPolicy: Never
        args: ["netexec", "--http-port", "9376"]
        readinessProbe:
          httpGet: {path: /healthz, port: 9376}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: lb-web
spec:
  type: LoadBalancer
  selector: {app: lb-web}
  ports: [{port: 8080, targetPort: 9376}]
"#;

const LOAD_BALANCED_TWIN: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb-twin
spec:
  type: LoadBalancer
  selector: {app: lb-web}
  ports: [{port: 8080, targetPort: 9376}]
"#;

const LOAD_BALANCED_ON_API_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb-api
spec:
  type: LoadBalancer
  selector: {app: lb-web}
  ports: [{port: 6443, targetPort: 9376}]
"#;

const EXTERNAL_IPS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: ext-web
spec:
  selector: {app: lb-web}
  externalIPs: [10.99.0.77]
  ports: [{port: 8081, targetPort: 9376}]
"#;

#[test]
fn a_load_balancer_service_answers_on_the_node_address_until_it_turns_cluster_ip() -> Result<()> {
    let cluster = Cluster::start()?;
    let file = cluster.write("lb.yaml", LOAD_BALANCED)?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/lb-web", "--timeout=120s"])?;
    let names: BTreeSet<String> = cluster
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=lb-web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ensure!(names.len() == 2, "pods {names:?}");

    // The service load balancer publishes the (only, ready) node's address.
    let ingress = [
        "get",
        "service",
        "lb-web",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ];
    cluster.wait_for(&ingress, "10.99.0.1", Duration::from_secs(30))?;
    let row = cluster.ok(&["get", "service", "lb-web", "--no-headers"])?;
    let columns: Vec<&str> = row.split_whitespace().collect();
    ensure!(
        columns.get(1) == Some(&"LoadBalancer") && columns.get(3) == Some(&"10.99.0.1"),
        "kubectl get service shows {row:?}, not the node address as EXTERNAL-IP"
    );

    // The load balancer address with the service's port (not the node
    // port) reaches a pod.
    let url = "http://10.99.0.1:8080/hostname";
    let body = host_get_until(&cluster, url, || cluster.log_tail())?;
    ensure!(
        names.contains(&body),
        "{url} answered {body:?}, not one of {names:?}"
    );

    // A second load balancer on the same port: the node address can carry
    // the port for one service only, so the older one keeps it and the new
    // one waits without ingress, with a warning (and the proxies do not
    // get two services for one address and port).
    let twin = cluster.write("lb-twin.yaml", LOAD_BALANCED_TWIN)?;
    cluster.ok(&["apply", "-f", path_str(&twin)?])?;
    cluster.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=lb-twin,reason=PortInUse",
            "-o",
            "jsonpath={.items[0].message}",
        ],
        "port 8080/TCP is already used by load balancer service default/lb-web; no ingress until it is free",
        Duration::from_secs(30),
    )?;
    let twin_ingress = cluster.ok(&[
        "get",
        "service",
        "lb-twin",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ])?;
    ensure!(
        twin_ingress.trim().is_empty(),
        "lb-twin got {twin_ingress:?}"
    );
    let (ok, body, err) = cluster.netns.http_get(url)?;
    ensure!(
        ok && names.contains(&body),
        "{url} stopped answering with a second service on its port: {body}{err}"
    );
    cluster.ok(&["delete", "service", "lb-twin"])?;

    // A load balancer on the API server's port would make every node's
    // proxy capture `<node address>:6443`: it gets no ingress.
    let api_lb = cluster.write("lb-api.yaml", LOAD_BALANCED_ON_API_PORT)?;
    cluster.ok(&["apply", "-f", path_str(&api_lb)?])?;
    cluster.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=lb-api,reason=PortInUse",
            "-o",
            "jsonpath={.items[0].message}",
        ],
        "port 6443/TCP is already used by the API server; no ingress until it is free",
        Duration::from_secs(30),
    )?;
    let api_ingress = cluster.ok(&[
        "get",
        "service",
        "lb-api",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ])?;
    ensure!(api_ingress.trim().is_empty(), "lb-api got {api_ingress:?}");
    cluster.ok(&["delete", "service", "lb-api"])?;

    // `spec.externalIPs` of a ClusterIP service: the address with the
    // service's port reaches a pod, from the host as from outside.
    let external = cluster.write("external.yaml", EXTERNAL_IPS)?;
    cluster.ok(&["apply", "-f", path_str(&external)?])?;
    let external_url = "http://10.99.0.77:8081/hostname";
    let body = host_get_until(&cluster, external_url, || cluster.log_tail())?;
    ensure!(
        names.contains(&body),
        "{external_url} answered {body:?}, not one of {names:?}"
    );
    cluster.ok(&["delete", "service", "ext-web"])?;

    // externalTrafficPolicy Local: only nodes with a ready endpoint are
    // listed, so the address goes when the Deployment scales to zero and
    // comes back with its pods.
    cluster.ok(&[
        "patch",
        "service",
        "lb-web",
        "-p",
        r#"{"spec": {"externalTrafficPolicy": "Local"}}"#,
    ])?;
    cluster.ok(&["scale", "deployment/lb-web", "--replicas=0"])?;
    cluster.wait_for(&ingress, "", Duration::from_secs(60))?;
    cluster.ok(&["scale", "deployment/lb-web", "--replicas=2"])?;
    cluster.ok(&["rollout", "status", "deployment/lb-web", "--timeout=120s"])?;
    cluster.wait_for(&ingress, "10.99.0.1", Duration::from_secs(30))?;

    // Back to ClusterIP (the API server drops the node port and the
    // load-balancer status with the type): the ingress is cleared and the
    // address stops answering on the port.
    cluster.ok(&[
        "patch",
        "service",
        "lb-web",
        "-p",
        r#"{"spec": {"type": "ClusterIP"}}"#,
    ])?;
    cluster.wait_for(&ingress, "", Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, body, err) = cluster.netns.http_get(url)?;
        if !ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{url} still answers 10 s after the service turned ClusterIP: {body}{err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And kubectl shows no external IP any more.
    let row = cluster.ok(&["get", "service", "lb-web", "--no-headers"])?;
    ensure!(row.split_whitespace().nth(3) == Some("<none>"), "{row:?}");
    Ok(())
}

const WEB_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

#[test]
fn skiff_proxy_alone_programs_a_node_whose_agent_runs_no_proxy() -> Result<()> {
    let cluster = Cluster::start_in(Netns::create("kproxy")?, &["--disable-kube-proxy"])?;
    let file = cluster.write("web.yaml", &format!("{WEB}---{WEB_SERVICE}"))?;
    cluster.ok(&["apply", "-f", path_str(&file)?])?;
    cluster.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])?;
    let url = format!("http://{}:80/hostname", cluster.cluster_ip("web")?);
    let table = || {
        cluster
            .netns
            .command("nft")
            .args(["list", "table", "ip", "skiff-proxy"])
            .output()
    };
    ensure!(
        !table()?.status.success(),
        "a proxy table exists although the agent runs no proxy"
    );
    let (ok, body, _) = cluster.netns.http_get(&url)?;
    ensure!(!ok, "{url} answered without a proxy: {body}");

    let log = std::fs::File::create(cluster.dir.path().join("proxy.log"))?;
    let mut proxy = cluster
        .netns
        .command(env!("CARGO_BIN_EXE_skiff"))
        .args(["proxy", "--kubeconfig"])
        .arg(&cluster.server.kubeconfig)
        .args(["--hostname-override", "node-a"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting skiff proxy")?;
    let reached = host_get_until(&cluster, &url, || {
        std::fs::read_to_string(cluster.dir.path().join("proxy.log")).unwrap_or_default()
    });
    stop(&mut proxy);
    let body = reached?;
    ensure!(body.starts_with("web-"), "{url} answered {body:?}");
    Ok(())
}
