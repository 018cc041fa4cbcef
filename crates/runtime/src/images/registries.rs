//! Where and how registries are reached, configured the k3s way: a
//! `registries.yaml` with `mirrors` (endpoints tried in order before the
//! registry itself) and `configs` (credentials and TLS per endpoint host).
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.example:5000"]
//!   registry.lan:5000:
//!     endpoint: ["http://registry.lan:5000"]   # plain HTTP: an insecure registry
//! configs:
//!   mirror.example:5000:
//!     auth: { username: u, password: p }
//!     tls: { ca_file: /etc/ssl/mirror-ca.pem }
//!   registry.lan:5000:
//!     tls: { insecure_skip_verify: true }
//! ```
//!
//! As in k3s, a registry is pulled over plain HTTP when an endpoint says
//! `http://`; loopback registries (`localhost`, `127.*`, `[::1]`) always
//! are, as Docker treats them. The registry's own endpoint is tried last
//! unless a mirror lists it already; the mirror `"*"` applies to every
//! registry without one of its own.
//!
//! Not supported (refused when the file is read, never silently ignored):
//! `rewrite` rules, client certificates (`cert_file`, `key_file`), and
//! endpoint paths other than `/v2`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::api::{Error, Result};
use crate::cri_types as cri;
use crate::reference::{DEFAULT_REGISTRY, is_loopback_host};

/// The contents of a `registries.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Registries {
    /// Registry name (`docker.io`, `host:port`, or `*`) → its mirrors.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Endpoint host (`host[:port]`) → how to talk to it.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Mirror {
    /// URLs (`https://host[:port]`, `http://…`; no scheme means https).
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// k3s' repository rewrites: not supported, refused when present.
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RegistryConfig {
    #[serde(default)]
    pub auth: Option<AuthSettings>,
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// Credentials for one endpoint host (k3s' field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthSettings {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// base64 of `username:password`.
    #[serde(default)]
    pub auth: String,
    #[serde(default)]
    pub identity_token: String,
}

impl AuthSettings {
    pub fn to_cri(&self, server: &str) -> cri::AuthConfig {
        cri::AuthConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            auth: self.auth.clone(),
            identity_token: self.identity_token.clone(),
            server_address: server.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TlsSettings {
    /// Extra CA certificates (PEM) to trust for this endpoint.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate: not supported, refused when present.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key: not supported, refused when present.
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to pull an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` the requests go to.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// The image's own registry rather than a mirror: credentials the
    /// caller passed for the image (imagePullSecrets) apply here.
    pub is_registry: bool,
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("registries config: {what}"))
}

/// Splits an endpoint URL into (plain HTTP, host).
fn parse_endpoint(url: &str) -> Result<(bool, String)> {
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if url.contains("://") {
        return Err(invalid(format!(
            "endpoint {url:?}: scheme is not http or https"
        )));
    } else {
        (false, url)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(invalid(format!("endpoint {url:?}: bad host")));
    }
    if !matches!(path, "" | "/" | "/v2" | "/v2/") {
        return Err(invalid(format!(
            "endpoint {url:?}: path prefixes other than /v2 are not supported"
        )));
    }
    Ok((plain_http, host.to_string()))
}

impl Registries {
    /// Parses and checks a `registries.yaml`.
    pub fn from_yaml(text: &str) -> Result<Registries> {
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let parsed: Registries = serde_yaml::from_str(text).map_err(invalid)?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// Reads `path`; a missing file is an empty configuration (as in k3s).
    pub fn load(path: &Path) -> Result<Registries> {
        match std::fs::read_to_string(path) {
            Ok(text) => Registries::from_yaml(&text).map_err(|e| match e {
                Error::InvalidArgument(m) => {
                    Error::InvalidArgument(format!("{}: {m}", path.display()))
                }
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(source) => Err(Error::Io {
                context: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    fn validate(&self) -> Result<()> {
        for (name, mirror) in &self.mirrors {
            if !mirror.rewrite.is_empty() {
                return Err(invalid(format!(
                    "mirror {name:?}: rewrite rules are not supported"
                )));
            }
            for e in &mirror.endpoint {
                parse_endpoint(e)?;
            }
        }
        for (host, config) in &self.configs {
            if let Some(tls) = &config.tls
                && (tls.cert_file.is_some() || tls.key_file.is_some())
            {
                return Err(invalid(format!(
                    "config {host:?}: client certificates (cert_file, key_file) are not supported"
                )));
            }
        }
        Ok(())
    }

    /// The endpoints to try for an image of `registry` (as normalised by
    /// [`crate::Reference`]), in order: its mirrors (or those of `"*"`),
    /// then the registry itself unless a mirror already is it.
    /// `insecure` lists more registries reached over plain HTTP.
    pub fn endpoints(&self, registry: &str, insecure: &[String]) -> Vec<Endpoint> {
        let own_host = if registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            registry
        };
        let mut out: Vec<Endpoint> = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        for url in mirror.map(|m| m.endpoint.as_slice()).unwrap_or_default() {
            // Checked when the file was read.
            let Ok((plain_http, host)) = parse_endpoint(url) else {
                continue;
            };
            let is_registry = host == registry || host == own_host;
            let endpoint = Endpoint {
                plain_http: plain_http || is_loopback_host(&host),
                host,
                is_registry,
            };
            if !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        if !out.iter().any(|e| e.is_registry) {
            out.push(Endpoint {
                host: own_host.to_string(),
                plain_http: is_loopback_host(registry) || insecure.iter().any(|r| r == registry),
                is_registry: true,
            });
        }
        out
    }

    /// The settings for an endpoint of `registry`: those of its host, or
    /// for the registry's own endpoint those of the registry's name (so
    /// `docker.io` configures `registry-1.docker.io`).
    pub fn config_for(&self, endpoint: &Endpoint, registry: &str) -> Option<&RegistryConfig> {
        self.configs.get(&endpoint.host).or_else(|| {
            endpoint
                .is_registry
                .then(|| self.configs.get(registry))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, plain_http: bool, is_registry: bool) -> Endpoint {
        Endpoint {
            host: host.into(),
            plain_http,
            is_registry,
        }
    }

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example:5000"
      - "registry-1.docker.io"
  registry.lan:5000:
    endpoint: ["http://registry.lan:5000/v2"]
  "*":
    endpoint: ["http://cache.lan"]
configs:
  mirror.example:5000:
    auth: { username: u, password: p }
    tls: { insecure_skip_verify: true }
"#;

    #[test]
    fn endpoints_follow_mirrors_then_the_registry_itself() {
        let r = Registries::from_yaml(YAML).unwrap();
        let none: Vec<String> = Vec::new();
        let cases = [
            (
                "mirror first, registry listed by the mirror is not repeated",
                "docker.io",
                none.clone(),
                vec![
                    ep("mirror.example:5000", false, false),
                    ep("registry-1.docker.io", false, true),
                ],
            ),
            (
                "an http endpoint makes the registry insecure",
                "registry.lan:5000",
                none.clone(),
                vec![ep("registry.lan:5000", true, true)],
            ),
            (
                "the wildcard mirror for everything else",
                "quay.io",
                none.clone(),
                vec![ep("cache.lan", true, false), ep("quay.io", false, true)],
            ),
        ];
        for (name, registry, insecure, want) in cases {
            assert_eq!(r.endpoints(registry, &insecure), want, "case {name}");
        }
    }

    #[test]
    fn without_configuration_loopback_and_listed_registries_use_plain_http() {
        let r = Registries::default();
        let cases = [
            ("loopback ip", "127.0.0.1:5000", vec![], true),
            ("localhost", "localhost:5000", vec![], true),
            ("ipv6 loopback", "[::1]:5000", vec![], true),
            ("remote", "registry.k8s.io", vec![], false),
            (
                "listed insecure",
                "registry.lan:5000",
                vec!["registry.lan:5000".to_string()],
                true,
            ),
        ];
        for (name, registry, insecure, plain) in cases {
            assert_eq!(
                r.endpoints(registry, &insecure),
                vec![ep(registry, plain, true)],
                "case {name}"
            );
        }
        assert_eq!(
            r.endpoints("docker.io", &[]),
            vec![ep("registry-1.docker.io", false, true)]
        );
    }

    #[test]
    fn unsupported_settings_are_refused_when_read() {
        let cases = [
            (
                "rewrite",
                "mirrors:\n  docker.io:\n    rewrite: {\"^a/(.*)\": \"b/$1\"}\n",
                "rewrite",
            ),
            (
                "client certificate",
                "configs:\n  r.lan:\n    tls: {cert_file: /c.pem, key_file: /k.pem}\n",
                "client certificates",
            ),
            (
                "endpoint path",
                "mirrors:\n  docker.io:\n    endpoint: [\"https://m.lan/prefix\"]\n",
                "path prefixes",
            ),
            (
                "endpoint scheme",
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://m.lan\"]\n",
                "scheme",
            ),
            ("not yaml", "mirrors: [", "registries config"),
        ];
        for (name, text, want) in cases {
            let err = Registries::from_yaml(text).expect_err(name).to_string();
            assert!(err.contains(want), "case {name}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_an_empty_configuration() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Registries::load(&dir.path().join("registries.yaml")).unwrap(),
            Registries::default()
        );
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "mirrors:\n  x:\n    rewrite: {a: b}\n").unwrap();
        let err = Registries::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
    }
}
