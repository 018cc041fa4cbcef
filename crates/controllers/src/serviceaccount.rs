//! The service account controller: every active namespace has a `default`
//! ServiceAccount (recreated if deleted). Token issuance
//! (`serviceaccounts/token`) belongs to the API server and is not here.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::{ControllerConfig, Error};

pub const DEFAULT: &str = "default";

struct Context {
    client: kube::Client,
    resync: Duration,
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
    Ok(Action::requeue(ctx.resync))
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
    });
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
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
