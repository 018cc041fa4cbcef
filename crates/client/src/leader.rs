//! Leader election through a Lease, the way Kubernetes' components do it
//! (`kube-system/kube-scheduler`, `kube-system/kube-controller-manager`):
//! the holder renews `spec.renewTime` every `renew_interval`; a candidate
//! takes the lease over when it was not renewed for `lease_duration`.
//! Writes are conditional on the Lease's resourceVersion, so two candidates
//! can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// Timing and identity of one candidate.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(2),
        }
    }
}

/// Runs `work` only while this candidate holds the lease: waits to acquire
/// it, runs `work` until it returns or leadership is lost (then `work` is
/// dropped, i.e. cancelled), and tries again. Returns when `work` returns.
pub async fn run_as_leader<F, Fut>(client: kube::Client, config: LeaderConfig, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        // Acquire.
        loop {
            match try_acquire_or_renew(&api, &config).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %config.name, "leader election"),
            }
            tokio::time::sleep(config.renew_interval).await;
        }
        tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
        let lost = async {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(config.renew_interval).await;
                match try_acquire_or_renew(&api, &config).await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the lease failed");
                        // Give up before another candidate may take over.
                        if last_renewed.elapsed() + config.renew_interval >= config.lease_duration {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = work() => return,
            _ = lost => tracing::warn!(lease = %config.name, "lost leadership"),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One attempt: true when this candidate holds the lease afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderConfig,
) -> Result<bool, kube::Error> {
    let duration_secs = config.lease_duration.as_secs().max(1) as i32;
    let current = api.get_opt(&config.name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == config.identity;
    let expired = match &spec.renew_time {
        None => true,
        Some(MicroTime(renewed)) => {
            let held_for = spec.lease_duration_seconds.unwrap_or(duration_secs).max(1) as i64;
            k8s_openapi::jiff::Timestamp::now().as_second() - renewed.as_second() > held_for
        }
    };
    if !mine && !expired && !holder.is_empty() {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration_secs);
    // Conditional on the resourceVersion we read: a concurrent candidate's
    // write makes this a 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
