//! The skiff API server: the Kubernetes REST API over the cluster store, so
//! that real `kubectl` and client libraries work unchanged.
//!
//! It serves discovery, OpenAPI v2/v3 ([`openapi`]), a generic registry for
//! every resource in [`resources::RESOURCES`] (objects handled as JSON) with
//! `fieldValidation` ([`fieldvalidation`]), server-side tables
//! ([`output`]), the `scale` subresource ([`scale`]), watches, `/metrics`
//! ([`metrics`]), HTTPS with the cluster's own PKI, and authentication by
//! client certificate or bearer token. Start it with [`run`] (or [`Server::bind`] then [`Server::serve`]);
//! tests can call [`app`] directly with `tower::ServiceExt::oneshot`.
//!
//! Invariants:
//! - This is the only crate that talks to the store. Every other component
//!   (scheduler, controllers, node agent, proxy) is an API client.
//! - It must not know about a store backend: it sees `Arc<dyn Store>` only.
//! - It must not run controllers' logic (scheduling, garbage collection,
//!   status updates); it stores and validates what clients send.
//! - `metadata.resourceVersion` is never stored; it is the key's
//!   `mod_revision`, filled in on the way out.

pub mod allocator;
pub mod auth;
pub mod bootstrap;
pub mod deletion;
pub mod discovery;
pub mod error;
pub mod fieldvalidation;
pub mod kinds;
pub mod listoptions;
pub mod metrics;
pub mod namespaces;
pub mod nodeproxy;
pub mod openapi;
pub mod output;
pub mod patch;
pub mod pki;
pub mod pods;
pub mod protobuf;
pub mod registry;
pub mod resources;
pub mod satoken;
pub mod scale;
pub mod selector;
pub mod serve;
pub mod ssa;
pub mod validation;
pub mod watchcache;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::Value;
use skiff_store::Store;
use tokio::net::TcpListener;

pub use auth::User;
pub use error::{ApiError, ApiResult};

/// How the API server is started. `Default` binds 127.0.0.1:6443 (what tests
/// want); `skiff server` uses `0.0.0.0`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's directory: certificates under `tls/`, the admin
    /// kubeconfig under `cred/`.
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    /// The HTTPS port; 0 picks a free one (see [`Server::local_addr`]).
    pub https_listen_port: u16,
    /// Extra subject alternative names of the serving certificate.
    pub tls_sans: Vec<String>,
    /// The shared secret accepted as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Also write the admin kubeconfig here.
    pub write_kubeconfig: Option<PathBuf>,
    /// Where ClusterIPs and NodePorts come from.
    pub service_ranges: allocator::ServiceRanges,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/skiff/server"),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            https_listen_port: 6443,
            tls_sans: Vec::new(),
            token: None,
            write_kubeconfig: None,
            service_ranges: Default::default(),
        }
    }
}

/// What starting the server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("TLS: {0}")]
    Tls(#[from] serve::TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("creating system namespaces: {0}")]
    Bootstrap(#[source] ApiError),
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Arc<dyn Store>,
    token: Option<String>,
    server_address: String,
    metrics: Arc<metrics::Metrics>,
    watch_caches: watchcache::WatchCaches,
    token_signer: std::sync::OnceLock<Arc<satoken::TokenSigner>>,
    service_ranges: std::sync::OnceLock<allocator::ServiceRanges>,
}

impl AppState {
    /// `server_address` is what `/api` advertises (`host:port`).
    pub fn new(store: Arc<dyn Store>, token: Option<String>, server_address: String) -> AppState {
        let metrics: Arc<metrics::Metrics> = Arc::default();
        let store: Arc<dyn Store> = Arc::new(metrics::MeteredStore::new(store, metrics.clone()));
        AppState {
            inner: Arc::new(StateInner {
                store,
                token,
                server_address,
                metrics,
                watch_caches: Default::default(),
                token_signer: Default::default(),
                service_ranges: Default::default(),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.inner.metrics
    }

    /// Installs the key that signs and verifies service account tokens
    /// (once; later calls are ignored).
    pub fn set_token_signer(&self, signer: Arc<satoken::TokenSigner>) {
        let _ = self.inner.token_signer.set(signer);
    }

    /// Sets the service address and node port ranges (once).
    pub fn set_service_ranges(&self, ranges: allocator::ServiceRanges) {
        let _ = self.inner.service_ranges.set(ranges);
    }

    pub(crate) fn service_ranges(&self) -> allocator::ServiceRanges {
        self.inner.service_ranges.get().copied().unwrap_or_default()
    }

    pub(crate) fn token_signer(&self) -> Option<&Arc<satoken::TokenSigner>> {
        self.inner.token_signer.get()
    }

    pub(crate) fn watch_caches(&self) -> &watchcache::WatchCaches {
        &self.inner.watch_caches
    }

    /// Builds the watch cache of every resource now, as Kubernetes does at
    /// start, so that watches from any revision after this moment are
    /// served from memory. A cache that fails is built again on its next use.
    pub async fn start_watch_caches(&self) {
        for def in resources::RESOURCES {
            if let Err(e) = self.inner.watch_caches.get(&self.inner.store, def).await {
                tracing::warn!(resource = def.plural, error = %e, "watch cache not started");
            }
        }
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }
}

/// The API as an axum router, authentication included. Requests without a
/// verified client certificate ([`auth::PeerIdentity`] extension) need the
/// bearer token.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
        )
        .route(
            "/version/",
            get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
        )
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route(
            "/openapi/v2",
            get(|req: Request| async move { openapi::v2(req.headers()) }),
        )
        .route(
            "/openapi/v3",
            get(|req: Request| async move { openapi::v3_root(req.headers()) }),
        )
        .route(
            "/openapi/v3/{*path}",
            get(
                |axum::extract::Path(path): axum::extract::Path<String>, req: Request| async move {
                    openapi::v3_path(&path, req.uri(), req.headers())
                },
            ),
        )
        .route("/metrics", get(metrics_text))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/api/{*rest}", any(api_path))
        .route("/apis/{*rest}", any(apis_path))
        .fallback(|| async { ApiError::UnknownPath })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics().render(),
    )
        .into_response()
}

async fn health() -> &'static str {
    "ok"
}

/// A JSON response with Kubernetes' content type.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

fn aggregated_response(body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(discovery::AGGREGATED_V2),
            ),
            (header::VARY, HeaderValue::from_static("Accept")),
        ],
        bytes,
    )
        .into_response()
}

async fn api_root(State(state): State<AppState>, req: Request) -> Response {
    if discovery::wants_aggregated(req.headers()) {
        aggregated_response(&discovery::aggregated_core())
    } else {
        json_response(
            StatusCode::OK,
            &discovery::api_versions(&state.inner.server_address),
        )
    }
}

async fn apis_root(req: Request) -> Response {
    if discovery::wants_aggregated(req.headers()) {
        aggregated_response(&discovery::aggregated_groups())
    } else {
        json_response(StatusCode::OK, &discovery::api_groups())
    }
}

async fn api_path(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches("/api").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.split_first() {
        Some((version, rest)) => resource_request(&state, "", version, rest, req).await,
        None => ApiError::UnknownPath.into_response(),
    }
}

async fn apis_path(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches("/apis").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [group] => match (req.method() == Method::GET, discovery::api_group(group)) {
            (true, Some(doc)) => json_response(StatusCode::OK, &doc),
            (false, Some(_)) => ApiError::MethodNotAllowed.into_response(),
            (_, None) => ApiError::UnknownPath.into_response(),
        },
        [group, version, rest @ ..] => resource_request(&state, group, version, rest, req).await,
        [] => ApiError::UnknownPath.into_response(),
    }
}

/// Parses the resource part of a URL as Kubernetes' RequestInfo does and
/// hands the request to the registry.
async fn resource_request(
    state: &AppState,
    group: &str,
    version: &str,
    parts: &[&str],
    req: Request,
) -> Response {
    if parts.is_empty() {
        return match (
            req.method() == Method::GET,
            discovery::resource_list(group, version),
        ) {
            (true, Some(doc)) => json_response(StatusCode::OK, &doc),
            (false, Some(_)) => ApiError::MethodNotAllowed.into_response(),
            (_, None) => ApiError::UnknownPath.into_response(),
        };
    }
    if let ("", "v1", ["namespaces", ns, "bindings"]) = (group, version, parts) {
        return pods::bindings_request(state, ns, req).await;
    }
    let target = match parse_target(group, version, parts) {
        Some(t) => t,
        None => return ApiError::UnknownPath.into_response(),
    };
    let params: registry::Params = match axum::extract::Query::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(e) => return ApiError::BadRequest(e.body_text()).into_response(),
    };
    let method = req.method().clone();
    let labels = metrics::RequestLabels {
        verb: metrics_verb(&method, &target, &params),
        group: target.def.group,
        version: target.def.version,
        resource: target.def.plural,
        subresource: target.subresource.map(|s| s.name()).unwrap_or_default(),
    };
    let started = std::time::Instant::now();
    if let (
        Some(
            sub @ (resources::Subresource::Log
            | resources::Subresource::Exec
            | resources::Subresource::Attach
            | resources::Subresource::PortForward),
        ),
        Some(ns),
        Some(name),
    ) = (
        target.subresource,
        target.namespace.clone(),
        target.name.clone(),
    ) {
        let response = match nodeproxy::proxy(state, &ns, &name, sub, req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        state
            .metrics()
            .observe(labels, response.status().as_u16(), started.elapsed());
        return response;
    }
    if let (Some(resources::Subresource::Token), Some(ns), Some(name)) = (
        target.subresource,
        target.namespace.clone(),
        target.name.clone(),
    ) {
        let response = async {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            let (parts, body) = req.into_parts();
            let bytes = registry::read_body(&parts.headers, body).await?;
            let out = satoken::token_request(state, &ns, &name, &bytes).await?;
            Ok(json_response(StatusCode::CREATED, &out))
        }
        .await
        .unwrap_or_else(IntoResponse::into_response);
        state
            .metrics()
            .observe(labels, response.status().as_u16(), started.elapsed());
        return response;
    }
    let (parts, body) = req.into_parts();
    let body: Body = body;
    let response =
        match registry::handle(state, &method, target, params, &parts.headers, body).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
    state
        .metrics()
        .observe(labels, response.status().as_u16(), started.elapsed());
    response
}

/// Kubernetes' verb label: the HTTP method, with reads split into GET,
/// LIST and WATCH and collection deletes as DELETECOLLECTION.
fn metrics_verb(
    method: &Method,
    target: &registry::Target,
    params: &registry::Params,
) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if params.is_watch() => "WATCH",
        ("GET", false) => "LIST",
        ("GET", true) => "GET",
        ("POST", _) => "POST",
        ("PUT", _) => "PUT",
        ("PATCH", _) => "PATCH",
        ("DELETE", false) => "DELETECOLLECTION",
        ("DELETE", true) => "DELETE",
        _ => "OTHER",
    }
}

/// `[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]`.
fn parse_target(group: &str, version: &str, parts: &[&str]) -> Option<registry::Target> {
    const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];
    let mut parts = parts;
    let mut namespace = None;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = Some(parts[1].to_string());
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    let def = resources::find(group, version, parts.first()?)?;
    let name = parts.get(1).map(|s| s.to_string());
    let subresource = match parts.get(2) {
        Some(s) => {
            let sub = resources::Subresource::parse(s)?;
            Some(def.has_subresource(sub).then_some(sub)?)
        }
        None => None,
    };
    if parts.len() > 3 {
        return None;
    }
    if def.namespaced {
        // A namespaced object must be addressed inside its namespace.
        if name.is_some() && namespace.is_none() {
            return None;
        }
    } else if def.plural != "namespaces" && namespace.is_some() {
        return None;
    } else if def.plural == "namespaces" {
        namespace = None;
    }
    Some(registry::Target {
        def,
        namespace,
        name,
        subresource,
    })
}

/// A bound, not yet serving, API server.
pub struct Server {
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    kubeconfig_path: PathBuf,
    state: AppState,
}

impl Server {
    /// Creates or loads the certificates, binds the port, creates the system
    /// namespaces and writes the admin kubeconfig (with the bound port).
    pub async fn bind(config: ServerConfig, store: Arc<dyn Store>) -> Result<Server, ServerError> {
        let sans = pki::serving_sans(&config.bind_address.to_string(), &config.tls_sans);
        let pki = pki::ensure(&config.data_dir, &sans)?;
        let tls = serve::server_config(&pki)?;
        let addr = SocketAddr::new(config.bind_address, config.https_listen_port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let host = if local.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local.ip()
        };
        let advertised = SocketAddr::new(host, local.port());
        let state = AppState::new(store, config.token.clone(), advertised.to_string());
        let signer = satoken::TokenSigner::load_or_create(&pki.dir)
            .map_err(|e| ServerError::Bootstrap(ApiError::Internal(e.to_string())))?;
        state.set_token_signer(Arc::new(signer));
        state.set_service_ranges(config.service_ranges);
        // Generating the OpenAPI documents takes a moment: do it before
        // the first client asks.
        tokio::task::spawn_blocking(|| {
            openapi::documents();
        });
        registry::ensure_system_namespaces(&state)
            .await
            .map_err(ServerError::Bootstrap)?;
        state.start_watch_caches().await;
        let advertise_ip = if config.bind_address.is_unspecified() {
            default_route_ip()
        } else {
            config.bind_address
        };
        bootstrap::kubernetes_service(&state, advertise_ip, local.port())
            .await
            .map_err(ServerError::Bootstrap)?;

        let kubeconfig = pki::admin_kubeconfig(&pki, &format!("https://{advertised}"));
        let kubeconfig_path = config.data_dir.join("cred").join("admin.kubeconfig");
        pki::write_kubeconfig(&kubeconfig_path, &kubeconfig)?;
        if let Some(extra) = &config.write_kubeconfig {
            pki::write_kubeconfig(extra, &kubeconfig)?;
        }
        tracing::info!(address = %local, kubeconfig = %kubeconfig_path.display(), "API server listening");
        Ok(Server {
            listener,
            tls,
            router: app(state.clone()),
            state,
            kubeconfig_path,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// An in-process transport to this server's API for a component running
    /// in the same process, authenticated as `user`. It serves as long as the
    /// process lives, also before [`Server::serve`] is called.
    pub fn loopback(&self, user: User) -> serve::Loopback {
        serve::Loopback::new(self.router.clone(), user)
    }

    /// The admin kubeconfig under the data directory.
    pub fn kubeconfig_path(&self) -> &std::path::Path {
        &self.kubeconfig_path
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        // Background upkeep lives exactly as long as serving.
        let state = self.state.clone();
        let repair = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = allocator::repair(&state, std::time::Duration::from_secs(60)).await
                {
                    tracing::warn!(error = %e, "repairing service allocations");
                }
            }
        });
        serve::serve(self.listener, self.tls, self.router, shutdown).await;
        repair.abort();
    }
}

/// Starts the API server and serves until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(config, store).await?.serve(shutdown).await;
    Ok(())
}

/// The address the host would use towards other machines: a UDP "connect"
/// picks the source address from the routing table without sending
/// anything. Loopback when there is no route.
pub fn default_route_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.43.0.1:443")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_kubernetes_request_info() {
        // (path parts after group/version, group, want: (plural, namespace, name, sub))
        type Want = Option<(
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            bool,
        )>;
        let cases: &[(&str, &[&str], Want)] = &[
            ("", &["pods"], Some(("pods", None, None, false))),
            (
                "",
                &["namespaces", "ns", "pods"],
                Some(("pods", Some("ns"), None, false)),
            ),
            (
                "",
                &["namespaces", "ns", "pods", "p"],
                Some(("pods", Some("ns"), Some("p"), false)),
            ),
            (
                "",
                &["namespaces", "ns", "pods", "p", "status"],
                Some(("pods", Some("ns"), Some("p"), true)),
            ),
            ("", &["namespaces"], Some(("namespaces", None, None, false))),
            (
                "",
                &["namespaces", "ns"],
                Some(("namespaces", None, Some("ns"), false)),
            ),
            (
                "",
                &["namespaces", "ns", "status"],
                Some(("namespaces", None, Some("ns"), true)),
            ),
            (
                "",
                &["nodes", "n1"],
                Some(("nodes", None, Some("n1"), false)),
            ),
            ("", &["pods", "p"], None),
            ("", &["namespaces", "ns", "nodes", "n1"], None),
            ("", &["namespaces", "ns", "configmaps", "c", "status"], None),
            ("", &["namespaces", "ns", "pods", "p", "status", "x"], None),
            ("", &["nothing"], None),
            (
                "apps",
                &["namespaces", "ns", "deployments"],
                Some(("deployments", Some("ns"), None, false)),
            ),
        ];
        for (group, parts, want) in cases {
            let got = parse_target(group, "v1", parts)
                .map(|t| (t.def.plural, t.namespace, t.name, t.subresource.is_some()));
            let want = want.map(|(p, ns, n, s)| (p, ns.map(String::from), n.map(String::from), s));
            assert_eq!(got, want, "{parts:?}");
        }
    }
}
