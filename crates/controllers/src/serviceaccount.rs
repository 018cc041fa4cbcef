//! The service account controller: every active namespace has a `default`
//! ServiceAccount (recreated if deleted), and, when the cluster's CA is
//! known, the `kube-root-ca.crt` ConfigMap with it under `ca.crt` (the job
//! of Kubernetes' root-ca-cert-publisher), which pods' projected service
//! account volumes mount. Token issuance (`serviceaccounts/token`) belongs
//! to the API server and is not here.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::{ControllerConfig, Error};

pub const DEFAULT: &str = "default";
/// The ConfigMap every namespace gets with the cluster CA.
pub const ROOT_CA: &str = "kube-root-ca.crt";

struct Context {
    client: kube::Client,
    resync: Duration,
    root_ca_pem: Option<String>,
}

/// True when the namespace should have its default service account.
pub fn wants_default(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !wants_default(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT).await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT.into()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %name, "created the default service account"),
            // Already there, or the namespace started terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(pem) = &ctx.root_ca_pem {
        publish_root_ca(&ctx.client, &name, pem).await?;
    }
    Ok(Action::requeue(ctx.resync))
}

/// Creates or corrects `kube-root-ca.crt` in `namespace`.
async fn publish_root_ca(client: &kube::Client, namespace: &str, pem: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let want = std::collections::BTreeMap::from([("ca.crt".to_string(), pem.to_string())]);
    match api.get_opt(ROOT_CA).await? {
        Some(cm) if cm.data.as_ref() == Some(&want) => Ok(()),
        Some(mut cm) => {
            cm.data = Some(want);
            match api.replace(ROOT_CA, &PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA.into()),
                    namespace: Some(namespace.into()),
                    annotations: Some(std::collections::BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err, "service account reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller: namespaces, and their service accounts (a deleted
/// `default` is recreated at once).
pub async fn run(client: kube::Client, config: ControllerConfig) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        resync: config.resync,
        root_ca_pem: config.root_ca_pem.clone(),
    });
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .watches(
            configmaps,
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")),
            |cm: ConfigMap| {
                cm.namespace()
                    .map(|ns| kube::runtime::reflector::ObjectRef::new(&ns))
            },
        )
        .watches(
            accounts,
            watcher::Config::default(),
            |sa: ServiceAccount| {
                (sa.name_any() == DEFAULT)
                    .then(|| sa.namespace())
                    .flatten()
                    .map(|ns| kube::runtime::reflector::ObjectRef::new(&ns))
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
