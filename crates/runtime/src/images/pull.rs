//! Pulling images from a registry with `oci-client`.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::oci::{self, Descriptor, Manifest};
use super::{ImageRecord, ImageStore};
use crate::api::{Error, Result};
use crate::cri_types as cri;
use crate::reference::Reference;

/// How registries are reached.
#[derive(Debug, Clone, Default)]
pub struct PullConfig {
    /// Registries (`host[:port]`) pulled over plain HTTP. Loopback registries
    /// (`localhost`, `127.*`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
}

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

fn pull_err(image: &Reference, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Image {
        image: image.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Pulls `reference` into the store and registers it under that name.
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &Reference,
    auth: Option<&cri::AuthConfig>,
    config: &PullConfig,
) -> Result<ImageRecord> {
    // reqwest is built without a default crypto provider; the process may have
    // installed one already (then this is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let auth = registry_auth(auth)?;
    let oci_ref: oci_client::Reference = reference
        .to_string()
        .parse()
        .map_err(|e| pull_err(reference, "parsing reference", e))?;
    let registry = oci_ref.resolve_registry().to_string();
    let insecure = reference.is_loopback_registry()
        || config
            .insecure_registries
            .iter()
            .any(|r| r == &reference.registry || r == &registry);
    let protocol = if insecure {
        ClientProtocol::HttpsExcept(vec![registry.clone(), reference.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    tracing::info!(image = %reference, insecure, "pulling image");
    let top_digest = client
        .fetch_manifest_digest(&oci_ref, &auth)
        .await
        .map_err(|e| pull_err(reference, "fetching manifest digest", e))?;
    let (manifest, _manifest_digest, config_json) = client
        .pull_manifest_and_config(&oci_ref, &auth)
        .await
        .map_err(|e| pull_err(reference, "pulling manifest", e))?;
    store.put_blob(config_json.as_bytes(), Some(&manifest.config.digest))?;
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
            .pull_blob(&oci_ref, layer, file)
            .await
            .map_err(|e| pull_err(reference, &format!("pulling layer {}", layer.digest), e))?;
        let s = store.clone();
        let digest = layer.digest.clone();
        tokio::task::spawn_blocking(move || s.put_blob_file(&path, &digest))
            .await
            .map_err(|e| Error::Runtime(format!("blob task: {e}")))??;
    }
    let desc = |d: &oci_client::manifest::OciDescriptor| Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let stored = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_OCI_MANIFEST.into()),
        config: desc(&manifest.config),
        layers: manifest.layers.iter().map(desc).collect(),
    };
    let bytes = serde_json::to_vec(&stored)
        .map_err(|e| Error::Runtime(format!("encoding manifest: {e}")))?;
    let manifest_digest = store.put_blob(&bytes, None)?;
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
