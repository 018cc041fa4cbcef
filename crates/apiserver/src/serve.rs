//! HTTPS serving: a TLS accept loop in front of the axum router. Each
//! connection's verified client certificate becomes a [`PeerIdentity`]
//! extension on every request of that connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::{PeerIdentity, user_from_certificate};
use crate::pki::Pki;

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("parsing {what} PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider skiff uses everywhere: ring. Installed as the process
/// default (once; later calls are no-ops) so that every rustls user in the
/// process agrees.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let provider = rustls::crypto::ring::default_provider();
    // Err means a default is already installed, which is fine.
    let _ = provider.clone().install_default();
    Arc::new(provider)
}

/// The server's TLS configuration: its serving certificate, client
/// certificates verified against the cluster CA but optional (so open
/// endpoints and bearer tokens work), HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(pki: &Pki) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let pem = |what| move |source| TlsError::Pem { what, source };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.map_err(pem("CA certificate"))?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem("serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .map_err(pem("serving key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` completes, then drops (and so
/// aborts) the connections still open.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accepting connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(serve_connection(acceptor, tcp, peer, app));
    }
    tracing::info!(
        open = connections.len(),
        "API server stopping; closing connections"
    );
    connections.shutdown().await;
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = PeerIdentity(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| user_from_certificate(cert.as_ref())),
    );
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(identity.clone());
        app.clone().oneshot(req.map(Body::new))
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// An in-process transport to the API: each request goes straight to the
/// router, as `identity`, without TCP, TLS or HTTP framing. For the
/// control-plane components that run inside `skiff server` (they are still
/// API clients: same handlers, admission, watch cache and errors as over the
/// network), as kube-apiserver's loopback client is for its own controllers.
///
/// Each request runs in its own task, as a connection's requests do, so a
/// panicking handler answers 500 instead of unwinding into the caller.
#[derive(Clone)]
pub struct Loopback {
    router: Router,
    identity: PeerIdentity,
}

impl Loopback {
    pub fn new(router: Router, user: crate::User) -> Loopback {
        Loopback {
            router,
            identity: PeerIdentity(Some(user)),
        }
    }
}

impl<B> tower::Service<hyper::Request<B>> for Loopback
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(self.identity.clone());
        let handled = tokio::spawn(self.router.clone().oneshot(req));
        Box::pin(async move {
            Ok(match handled.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(e) => {
                    tracing::error!(error = %e, "an in-process API request failed");
                    axum::response::IntoResponse::into_response(crate::ApiError::Internal(
                        "the request handler failed".into(),
                    ))
                }
            })
        })
    }
}
