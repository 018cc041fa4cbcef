//! Pulling images from a registry with `oci-client`.
//!
//! The manifest (resolved through an image index to this platform), the
//! config and the layers are stored byte for byte as the registry serves
//! them, each checked against its digest, so the stored manifest keeps the
//! registry's digest. Each endpoint [`Registries::endpoints`] names is tried
//! in turn (mirrors first) until one serves the image.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::oci::{self, Index, Manifest};
use super::registries::{Endpoint, Registries, RegistryConfig};
use super::{ImageRecord, ImageStore};
use crate::api::{Error, Result};
use crate::cri_types as cri;
use crate::reference::Reference;

/// How registries are reached.
#[derive(Debug, Clone, Default)]
pub struct PullConfig {
    /// Registries (`host[:port]`) pulled over plain HTTP, as if a mirror
    /// listed `http://host[:port]` for them. Loopback registries
    /// (`localhost`, `127.*`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
    /// Mirrors, credentials and TLS per registry (k3s' `registries.yaml`).
    pub registries: Registries,
}

/// Manifest media types asked for (the registry picks one it has).
const ACCEPTED_MANIFESTS: [&str; 4] = [
    oci::MEDIA_OCI_MANIFEST,
    oci::MEDIA_OCI_INDEX,
    oci::MEDIA_DOCKER_MANIFEST,
    oci::MEDIA_DOCKER_LIST,
];

/// The registry credentials of a CRI `AuthConfig`.
pub fn registry_auth(auth: Option<&cri::AuthConfig>) -> Result<RegistryAuth> {
    let Some(a) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Error::InvalidArgument(format!("auth config: bad base64 auth: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::InvalidArgument("auth config: auth is not UTF-8".into()))?;
        let (user, pass) = text.split_once(':').ok_or_else(|| {
            Error::InvalidArgument("auth config: auth is not user:password".into())
        })?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    if !a.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.registry_token.clone()));
    }
    if !a.identity_token.is_empty() {
        return Err(Error::Unsupported(
            "registry identity (OAuth refresh) tokens",
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

/// An error and every error it was caused by, as one line.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// What went wrong talking to a registry, in words a pod's events can show.
fn describe(e: &OciDistributionError, anonymous: bool) -> String {
    use OciDistributionError as E;
    match e {
        E::RegistryError { envelope, url } => {
            let Some(first) = envelope.errors.first() else {
                return format!("registry error at {url}");
            };
            let what = match &first.code {
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
                | OciErrorCode::BlobUnknown => "not found",
                OciErrorCode::Unauthorized if anonymous => {
                    "unauthorized: the registry requires credentials"
                }
                OciErrorCode::Unauthorized => "unauthorized: the registry refused the credentials",
                OciErrorCode::Denied => "access denied",
                OciErrorCode::Toomanyrequests => "too many requests",
                _ => "registry error",
            };
            let messages: Vec<&str> = envelope
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .filter(|m| !m.is_empty())
                .collect();
            format!("{what}: {} ({url})", messages.join("; "))
        }
        E::UnauthorizedError { url } if anonymous => {
            format!("unauthorized: the registry requires credentials ({url})")
        }
        E::UnauthorizedError { url } => {
            format!("unauthorized: the registry refused the credentials ({url})")
        }
        E::AuthenticationFailure(reason) => {
            format!("unauthorized: authentication failed: {}", reason.trim())
        }
        E::ServerError { code, url, message } => {
            format!("registry answered {code} for {url}: {}", message.trim())
        }
        other => with_sources(other),
    }
}

fn pull_err(image: &Reference, message: impl Into<String>) -> Error {
    Error::Image {
        image: image.to_string(),
        message: message.into(),
    }
}

/// Pulls `reference` into the store and registers it under that name,
/// trying each endpoint of its registry in turn. `auth` (the pod's
/// credentials) applies to the registry itself; mirrors use the
/// credentials configured for them.
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &Reference,
    auth: Option<&cri::AuthConfig>,
    config: &PullConfig,
) -> Result<ImageRecord> {
    // reqwest is built without a default crypto provider; the process may have
    // installed one already (then this is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoints = config
        .registries
        .endpoints(&reference.registry, &config.insecure_registries);
    let mut failures: Vec<String> = Vec::new();
    for endpoint in &endpoints {
        match pull_from(store.clone(), reference, endpoint, auth, &config.registries).await {
            Ok(record) => return Ok(record),
            Err(Error::Image { message, .. }) => {
                tracing::warn!(image = %reference, endpoint = %endpoint.host, error = %message, "pull failed");
                failures.push(if endpoints.len() == 1 {
                    message
                } else {
                    format!("{}: {message}", endpoint.host)
                });
            }
            // Not the registry's doing (the store, a bad credential config):
            // another endpoint would not help.
            Err(other) => return Err(other),
        }
    }
    Err(pull_err(reference, failures.join("; ")))
}

/// The credentials for one endpoint: the caller's for the registry itself,
/// else those configured for the endpoint's host.
fn endpoint_auth(
    endpoint: &Endpoint,
    auth: Option<&cri::AuthConfig>,
    settings: Option<&RegistryConfig>,
) -> Result<RegistryAuth> {
    if endpoint.is_registry
        && let Some(a) = auth
    {
        return registry_auth(Some(a));
    }
    match settings.and_then(|c| c.auth.as_ref()) {
        Some(a) => registry_auth(Some(&a.to_cri(&endpoint.host))),
        None => Ok(RegistryAuth::Anonymous),
    }
}

fn client_for(
    endpoint: &Endpoint,
    settings: Option<&RegistryConfig>,
) -> Result<oci_client::Client> {
    let tls = settings.and_then(|c| c.tls.clone()).unwrap_or_default();
    let mut extra_root_certificates = Vec::new();
    if let Some(path) = &tls.ca_file {
        let data = std::fs::read(path).map_err(|source| Error::Io {
            context: format!("reading CA file {path} for registry {}", endpoint.host),
            source,
        })?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    // Not `Client::new`: on a bad setting (a CA file that is not PEM) it
    // falls back to a default client, silently dropping the others.
    oci_client::Client::try_from(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: tls.insecure_skip_verify,
        extra_root_certificates,
        // Image indexes are resolved here, against oci::matches_host.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    })
    .map_err(|e| {
        Error::InvalidArgument(format!(
            "registry client for {}: {}",
            endpoint.host,
            with_sources(&e)
        ))
    })
}

/// Whether a manifest body is an image index (OCI) or manifest list (Docker).
fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match p.media_type.as_deref() {
            Some(oci::MEDIA_OCI_INDEX | oci::MEDIA_DOCKER_LIST) => true,
            Some(_) => false,
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

async fn pull_from(
    store: Arc<ImageStore>,
    reference: &Reference,
    endpoint: &Endpoint,
    auth: Option<&cri::AuthConfig>,
    registries: &Registries,
) -> Result<ImageRecord> {
    let settings = registries.config_for(endpoint, &reference.registry);
    let creds = endpoint_auth(endpoint, auth, settings)?;
    let anonymous = matches!(creds, RegistryAuth::Anonymous);
    let client = client_for(endpoint, settings)?;
    let host = endpoint.host.clone();
    let repo = reference.repository.clone();
    let oci_ref = match (&reference.digest, &reference.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(host, repo, d.clone()),
        (None, Some(t)) => oci_client::Reference::with_tag(host, repo, t.clone()),
        (None, None) => {
            return Err(Error::InvalidArgument(format!(
                "image reference {reference} has neither tag nor digest"
            )));
        }
    };
    let fail = |what: &str, e: OciDistributionError| {
        pull_err(reference, format!("{what}: {}", describe(&e, anonymous)))
    };
    tracing::info!(image = %reference, endpoint = %endpoint.host, plain_http = endpoint.plain_http, "pulling image");
    let (top_bytes, top_digest) = client
        .pull_manifest_raw(&oci_ref, &creds, &ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| fail("fetching manifest", e))?;
    let (manifest_bytes, manifest_digest) = if is_index(&top_bytes) {
        let index: Index = serde_json::from_slice(&top_bytes)
            .map_err(|e| pull_err(reference, format!("image index {top_digest}: {e}")))?;
        let Some(entry) = index.manifests.iter().find(|m| oci::matches_host(m)) else {
            let (os, arch) = oci::host_platform();
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            return Err(pull_err(
                reference,
                format!(
                    "no manifest for {os}/{arch} in image index {top_digest} (it has {})",
                    offered.join(", ")
                ),
            ));
        };
        let (bytes, digest) = client
            .pull_manifest_raw(
                &oci_ref.clone_with_digest(entry.digest.clone()),
                &creds,
                &ACCEPTED_MANIFESTS,
            )
            .await
            .map_err(|e| fail(&format!("fetching manifest {}", entry.digest), e))?;
        if is_index(&bytes) {
            return Err(pull_err(
                reference,
                format!("manifest {digest} of index {top_digest} is an index again"),
            ));
        }
        (bytes, digest)
    } else {
        (top_bytes, top_digest.clone())
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| pull_err(reference, format!("manifest {manifest_digest}: {e}")))?;
    if manifest.schema_version != 2 {
        return Err(pull_err(
            reference,
            format!(
                "manifest {manifest_digest}: schema version {} is not supported",
                manifest.schema_version
            ),
        ));
    }
    store.put_blob(&manifest_bytes, Some(&manifest_digest))?;
    if !store.has_blob(&manifest.config.digest) {
        let mut config = Vec::new();
        client
            .pull_blob(&oci_ref, manifest.config.digest.as_str(), &mut config)
            .await
            .map_err(|e| fail(&format!("fetching config {}", manifest.config.digest), e))?;
        store.put_blob(&config, Some(&manifest.config.digest))?;
    }
    for layer in &manifest.layers {
        if store.has_blob(&layer.digest) {
            continue;
        }
        let work = store.tmp_dir()?;
        let path = work.path().join("blob");
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(super::io_err(format!("creating {}", path.display())))?;
        client
            .pull_blob(&oci_ref, layer.digest.as_str(), file)
            .await
            .map_err(|e| fail(&format!("fetching layer {}", layer.digest), e))?;
        let s = store.clone();
        let digest = layer.digest.clone();
        tokio::task::spawn_blocking(move || {
            let _keep = work;
            s.put_blob_file(&path, &digest)
        })
        .await
        .map_err(|e| Error::Runtime(format!("blob task: {e}")))??;
    }
    let name = reference.clone();
    tokio::task::spawn_blocking(move || {
        store.register(&manifest_digest, &[name], Some(&top_digest))
    })
    .await
    .map_err(|e| Error::Runtime(format!("register task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(a: &RegistryAuth) -> (String, String, String) {
        match a {
            RegistryAuth::Anonymous => ("anonymous".into(), String::new(), String::new()),
            RegistryAuth::Basic(u, p) => ("basic".into(), u.clone(), p.clone()),
            RegistryAuth::Bearer(t) => ("bearer".into(), t.clone(), String::new()),
        }
    }

    #[test]
    fn registry_errors_read_as_what_went_wrong() {
        let envelope = |json: &str| serde_json::from_str(json).unwrap();
        let url = "http://r/v2/a/manifests/x".to_string();
        let cases = [
            (
                "missing tag",
                OciDistributionError::RegistryError {
                    envelope: envelope(
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    ),
                    url: url.clone(),
                },
                true,
                "not found: manifest unknown (http://r/v2/a/manifests/x)",
            ),
            (
                "no credentials",
                OciDistributionError::UnauthorizedError { url: url.clone() },
                true,
                "unauthorized: the registry requires credentials (http://r/v2/a/manifests/x)",
            ),
            (
                "wrong credentials",
                OciDistributionError::UnauthorizedError { url: url.clone() },
                false,
                "unauthorized: the registry refused the credentials (http://r/v2/a/manifests/x)",
            ),
            (
                "denied",
                OciDistributionError::RegistryError {
                    envelope: envelope(
                        r#"{"errors":[{"code":"DENIED","message":"no pull for you"}]}"#,
                    ),
                    url: url.clone(),
                },
                false,
                "access denied: no pull for you (http://r/v2/a/manifests/x)",
            ),
            (
                "server error",
                OciDistributionError::ServerError {
                    code: 503,
                    url: url.clone(),
                    message: "down\n".into(),
                },
                true,
                "registry answered 503 for http://r/v2/a/manifests/x: down",
            ),
        ];
        for (name, err, anonymous, want) in cases {
            assert_eq!(describe(&err, anonymous), want, "case {name}");
        }
    }

    #[test]
    fn index_documents_are_told_from_manifests() {
        let cases = [
            (
                "oci index",
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                true,
            ),
            (
                "docker list",
                r#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#,
                true,
            ),
            (
                "index without media type",
                r#"{"schemaVersion":2,"manifests":[]}"#,
                true,
            ),
            (
                "manifest",
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
                false,
            ),
            ("not json", "{", false),
        ];
        for (name, body, want) in cases {
            assert_eq!(is_index(body.as_bytes()), want, "case {name}");
        }
    }

    #[test]
    fn cri_auth_configs_map_to_registry_credentials() {
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        let cases = [
            ("none", None, Some(RegistryAuth::Anonymous)),
            (
                "username and password",
                Some(cri::AuthConfig {
                    username: "u".into(),
                    password: "p".into(),
                    ..Default::default()
                }),
                Some(basic("u", "p")),
            ),
            (
                "base64 auth",
                Some(cri::AuthConfig {
                    auth: "dTpwOng=".into(),
                    ..Default::default()
                }),
                Some(basic("u", "p:x")),
            ),
            (
                "registry token",
                Some(cri::AuthConfig {
                    registry_token: "t".into(),
                    ..Default::default()
                }),
                Some(RegistryAuth::Bearer("t".into())),
            ),
            (
                "bad base64",
                Some(cri::AuthConfig {
                    auth: "!!".into(),
                    ..Default::default()
                }),
                None,
            ),
        ];
        for (name, input, want) in cases {
            let got = registry_auth(input.as_ref()).ok();
            assert_eq!(
                got.as_ref().map(parts),
                want.as_ref().map(parts),
                "case {name}"
            );
        }
    }
}
