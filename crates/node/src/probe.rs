//! Liveness, readiness and startup probes: the threshold bookkeeping (pure,
//! [`ProbeState`]), one probe attempt (exec through the runtime, HTTP GET
//! and TCP against the pod IP), and the per-container loop that runs a
//! probe every period and publishes result changes to the pod worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_runtime::ContainerRuntime;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::events::{Recorder, Subject};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// A probe's settings with the API's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success: u32,
    pub failure: u32,
}

impl Thresholds {
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Thresholds {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// The result of a probe after thresholds: flips only after `success`
/// consecutive successes or `failure` consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    pub passing: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    /// Readiness and startup start failing, liveness passing.
    pub fn initial(kind: ProbeKind) -> Self {
        ProbeState {
            passing: kind == ProbeKind::Liveness,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one attempt; returns whether `passing` changed.
    pub fn observe(&mut self, ok: bool, t: &Thresholds) -> bool {
        let before = self.passing;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= t.success {
                self.passing = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= t.failure {
                self.passing = false;
            }
        }
        before != self.passing
    }
}

/// The probe results of one container instance.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    pub liveness: ProbeState,
    pub readiness: ProbeState,
    pub startup: ProbeState,
    pub has_liveness: bool,
    pub has_readiness: bool,
    pub has_startup: bool,
    /// Consecutive startup failures after which the container is killed.
    startup_failure_threshold: u32,
}

impl ContainerProbes {
    pub fn for_container(c: &Container) -> Self {
        ContainerProbes {
            liveness: ProbeState::initial(ProbeKind::Liveness),
            readiness: ProbeState::initial(ProbeKind::Readiness),
            startup: ProbeState::initial(ProbeKind::Startup),
            has_liveness: c.liveness_probe.is_some(),
            has_readiness: c.readiness_probe.is_some(),
            has_startup: c.startup_probe.is_some(),
            startup_failure_threshold: c
                .startup_probe
                .as_ref()
                .map(|p| Thresholds::of(p).failure)
                .unwrap_or(u32::MAX),
        }
    }

    pub fn started(&self) -> bool {
        !self.has_startup || self.startup.passing
    }

    pub fn ready(&self) -> bool {
        self.started() && (!self.has_readiness || self.readiness.passing)
    }

    /// The container must be killed: its liveness probe failed, or its
    /// startup probe did.
    pub fn must_restart(&self) -> Option<ProbeKind> {
        if self.has_startup
            && !self.startup.passing
            && self.startup.failures >= self.startup_failure_threshold
        {
            return Some(ProbeKind::Startup);
        }
        if self.has_liveness && !self.liveness.passing {
            return Some(ProbeKind::Liveness);
        }
        None
    }

    fn state_mut(&mut self, kind: ProbeKind) -> &mut ProbeState {
        match kind {
            ProbeKind::Liveness => &mut self.liveness,
            ProbeKind::Readiness => &mut self.readiness,
            ProbeKind::Startup => &mut self.startup,
        }
    }
}

/// Where and how to probe one container instance.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub container_id: String,
    pub container: Container,
    pub pod_ip: Option<String>,
}

/// One attempt: `Ok(())` on success, `Err(output)` on failure.
pub async fn probe_once(probe: &Probe, t: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match t.runtime.exec_sync(&t.container_id, cmd, timeout).await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => {
                let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&r.stderr));
                Err(if out.trim().is_empty() {
                    format!("command exited with {}", r.exit_code)
                } else {
                    out.trim().to_string()
                })
            }
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .clone()
            .or_else(|| t.pod_ip.clone())
            .ok_or("the pod has no IP yet")?;
        let port = resolve_port(&tcp.port, &t.container)?;
        return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| t.pod_ip.clone())
            .ok_or("the pod has no IP yet")?;
        let port = resolve_port(&http.port, &t.container)?;
        let path = http.path.clone().unwrap_or_else(|| "/".to_string());
        let https = http.scheme.as_deref() == Some("HTTPS");
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let url = format!(
            "{}://{host}:{port}{path}",
            if https { "https" } else { "http" }
        );
        return match tokio::time::timeout(timeout, http_get(&host, port, &path, https, &headers))
            .await
        {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
            Err(_) => Err(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by skiff-node".to_string());
    }
    Err("the probe has no handler".to_string())
}

/// A named or numbered port of the container.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in container {}", c.name))
        }
    }
}

/// A GET over HTTP/1.1 (TLS without verification for HTTPS, as the
/// kubelet's probes do); returns the status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let mut req = hyper::Request::get(path)
        .header("Host", format!("{host}:{port}"))
        .header("User-Agent", "kube-probe/1.33")
        .header("Accept", "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    if https {
        let config = crate::tls::insecure_client_config().map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<I>(io: I, req: hyper::Request<Empty<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let code = match resp {
        Ok(resp) => {
            let code = resp.status().as_u16();
            // Read (and drop) the body so the connection ends cleanly.
            let _ = resp.into_body().collect().await;
            Ok(code)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    code
}

/// Shared probe results of one container instance plus how to wake the pod
/// worker.
#[derive(Clone)]
pub struct Shared {
    pub results: Arc<Mutex<ContainerProbes>>,
    pub wake: Arc<Notify>,
}

/// Runs one probe of a container instance forever (the caller aborts it
/// when the instance goes away).
pub async fn probe_loop(
    kind: ProbeKind,
    probe: Probe,
    target: Target,
    shared: Shared,
    recorder: Recorder,
    subject: Subject,
) {
    let t = Thresholds::of(&probe);
    tokio::time::sleep(t.initial_delay).await;
    loop {
        let gated = kind != ProbeKind::Startup && {
            let r = lock(&shared.results);
            !r.started()
        };
        let startup_done = kind == ProbeKind::Startup && lock(&shared.results).startup.passing;
        if startup_done {
            // A startup probe stops once it succeeded.
            return;
        }
        if !gated {
            let outcome = probe_once(&probe, &target, t.timeout).await;
            if let Err(output) = &outcome {
                recorder.warning(
                    subject.clone(),
                    "Unhealthy",
                    format!("{} probe failed: {output}", kind.title()),
                );
            }
            let changed = lock(&shared.results)
                .state_mut(kind)
                .observe(outcome.is_ok(), &t);
            // A startup probe failing for good must wake the worker too.
            let changed = changed
                || (kind == ProbeKind::Startup && lock(&shared.results).must_restart().is_some());
            if changed {
                shared.wake.notify_one();
            }
        }
        tokio::time::sleep(t.period).await;
    }
}

/// Locks a probe result, recovering from a poisoned lock (a panicking probe
/// task must not take the pod worker down).
pub fn lock(m: &Mutex<ContainerProbes>) -> std::sync::MutexGuard<'_, ContainerProbes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_results_flip_only_after_their_thresholds() {
        let t = Thresholds {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success: 2,
            failure: 3,
        };
        // (attempt ok?, passing after it)
        /// (name, kind, [(attempt succeeded, passing after it)])
        type Case<'a> = (&'a str, ProbeKind, &'a [(bool, bool)]);
        let cases: &[Case] = &[
            (
                "readiness needs two successes",
                ProbeKind::Readiness,
                &[(true, false), (true, true), (true, true)],
            ),
            (
                "readiness fails after three failures",
                ProbeKind::Readiness,
                &[
                    (true, false),
                    (true, true),
                    (false, true),
                    (false, true),
                    (false, false),
                ],
            ),
            (
                "a success resets the failure count",
                ProbeKind::Liveness,
                &[
                    (false, true),
                    (false, true),
                    (true, true),
                    (false, true),
                    (false, true),
                    (false, false),
                ],
            ),
            (
                "liveness starts passing",
                ProbeKind::Liveness,
                &[(false, true)],
            ),
        ];
        for (name, kind, steps) in cases {
            let mut s = ProbeState::initial(*kind);
            for (i, (ok, want)) in steps.iter().enumerate() {
                s.observe(*ok, &t);
                assert_eq!(s.passing, *want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn probe_defaults_match_the_api() {
        let t = Thresholds::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success, t.failure), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
    }

    #[test]
    fn readiness_waits_for_startup() {
        let c = Container {
            startup_probe: Some(Probe::default()),
            readiness_probe: Some(Probe::default()),
            ..Default::default()
        };
        let mut p = ContainerProbes::for_container(&c);
        assert!(!p.started());
        assert!(!p.ready());
        p.readiness.passing = true;
        assert!(!p.ready(), "not ready before startup succeeded");
        p.startup.passing = true;
        assert!(p.ready());
    }
}
