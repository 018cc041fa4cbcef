//! Registry credentials from Docker config files (`.dockerconfigjson`,
//! `.dockercfg`: what a pod's `imagePullSecrets` hold), looked up for an
//! image the way the kubelet's keyring does
//! (`pkg/credentialprovider/keyring.go`):
//!
//! - a key is a registry host with an optional path (`https://`, `http://`
//!   and a leading `/v1` or `/v2` are dropped), and hosts may use globs per
//!   dot-separated label (`*.example.com`);
//! - an image matches a key when the hosts match label by label, the ports
//!   are equal and the image's path starts with the key's path;
//! - every matching key's credentials are returned, most specific key first
//!   (keys sorted in reverse), for the caller to try in turn;
//! - images of Docker Hub (`busybox`, `docker.io/…`) also use the
//!   credentials of `index.docker.io` (and `docker.io`).
//!
//! Pure data in and out: this module reads no Kubernetes objects.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use crate::api::{Error, Result};
use crate::cri_types as cri;

/// One entry of a Docker config file.
#[derive(Debug, Clone, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// base64 of `username:password`.
    #[serde(default)]
    auth: String,
    #[serde(default, alias = "identityToken")]
    identitytoken: String,
    #[serde(default, alias = "registryToken")]
    registrytoken: String,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// Key → credentials, in the order they were added.
    creds: BTreeMap<String, Vec<cri::AuthConfig>>,
}

const DEFAULT_REGISTRY_KEYS: [&str; 2] = ["index.docker.io", "docker.io"];

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("docker config: {what}"))
}

/// `https://host/v1/` → `host`, `host/path` → `host/path`.
fn normalise_key(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    let host = host.to_ascii_lowercase();
    Some(if path.is_empty() || path == "/" {
        host
    } else {
        format!("{host}{path}")
    })
}

/// (host without port, port, path) of a schemeless `host[:port][/path]`.
fn split_location(s: &str) -> (String, String, &str) {
    let (host_port, path) = match s.find('/') {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            (h, p)
        }
        _ => (host_port, ""),
    };
    (host.to_ascii_lowercase(), port.to_string(), path)
}

/// Shell-style match of one host label: `*` any run, `?` one character.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], text) || (!text.is_empty() && glob_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Whether the key `glob` (host glob, port, path prefix) covers `image`.
fn key_matches(glob: &str, image: &str) -> bool {
    let (g_host, g_port, g_path) = split_location(glob);
    let (i_host, i_port, i_path) = split_location(image);
    let g_labels: Vec<&str> = g_host.split('.').collect();
    let i_labels: Vec<&str> = i_host.split('.').collect();
    g_port == i_port
        && g_labels.len() == i_labels.len()
        && g_labels
            .iter()
            .zip(&i_labels)
            .all(|(g, i)| glob_match(g.as_bytes(), i.as_bytes()))
        && i_path.starts_with(g_path)
}

/// Whether an image (as written in a pod) is on Docker Hub.
fn is_default_registry_image(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some((first, _)) => {
            matches!(first, "docker.io" | "index.docker.io")
                || (!first.is_empty() && first != "localhost" && !first.contains(['.', ':']))
        }
    }
}

impl Keyring {
    /// Adds the entries of a `.dockerconfigjson` (`{"auths": {…}}`).
    pub fn add_docker_config_json(&mut self, bytes: &[u8]) -> Result<()> {
        let parsed: DockerConfigJson = serde_json::from_slice(bytes).map_err(invalid)?;
        self.add_entries(parsed.auths)
    }

    /// Adds the entries of a legacy `.dockercfg` (the `auths` map itself).
    pub fn add_dockercfg(&mut self, bytes: &[u8]) -> Result<()> {
        let parsed: BTreeMap<String, Entry> = serde_json::from_slice(bytes).map_err(invalid)?;
        self.add_entries(parsed)
    }

    fn add_entries(&mut self, entries: BTreeMap<String, Entry>) -> Result<()> {
        for (location, entry) in entries {
            let Some(key) = normalise_key(&location) else {
                return Err(invalid(format!("bad registry {location:?}")));
            };
            let (mut username, mut password) = (entry.username, entry.password);
            if username.is_empty() && password.is_empty() && !entry.auth.is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(entry.auth.trim())
                    .map_err(|e| invalid(format!("{location}: auth is not base64: {e}")))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| invalid(format!("{location}: auth is not UTF-8")))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("{location}: auth is not user:password")))?;
                (username, password) = (u.to_string(), p.to_string());
            }
            let host = key.split('/').next().unwrap_or_default().to_string();
            self.creds.entry(key).or_default().push(cri::AuthConfig {
                username,
                password,
                identity_token: entry.identitytoken,
                registry_token: entry.registrytoken,
                server_address: host,
                ..Default::default()
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }

    /// The credentials to try for `image` (as written in the pod spec),
    /// most specific key first; empty when none apply.
    pub fn lookup(&self, image: &str) -> Vec<cri::AuthConfig> {
        let mut found: Vec<cri::AuthConfig> = self
            .creds
            .iter()
            .rev()
            .filter(|(key, _)| key_matches(key, image))
            .flat_map(|(_, creds)| creds.iter().cloned())
            .collect();
        if found.is_empty() && is_default_registry_image(image) {
            found = DEFAULT_REGISTRY_KEYS
                .iter()
                .filter_map(|k| self.creds.get(*k))
                .flatten()
                .cloned()
                .collect();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(creds: &[cri::AuthConfig]) -> Vec<String> {
        creds.iter().map(|c| c.username.clone()).collect()
    }

    fn keyring(json: &str) -> Keyring {
        let mut k = Keyring::default();
        k.add_docker_config_json(json.as_bytes()).unwrap();
        k
    }

    #[test]
    fn images_get_the_credentials_of_every_matching_key_most_specific_first() {
        let k = keyring(
            r#"{"auths": {
                "127.0.0.1:5000": {"username": "host", "password": "p"},
                "127.0.0.1:5000/team": {"username": "team", "password": "p"},
                "https://registry.example.com/v2/": {"username": "https", "password": "p"},
                "*.corp.example": {"username": "glob", "password": "p"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "p"}
            }}"#,
        );
        let cases = [
            ("host and port", "127.0.0.1:5000/app:1", vec!["host"]),
            (
                "path prefix first",
                "127.0.0.1:5000/team/app",
                vec!["team", "host"],
            ),
            ("other port", "127.0.0.1:5001/app", vec![]),
            (
                "scheme and /v2 dropped",
                "registry.example.com/x/y:2",
                vec!["https"],
            ),
            ("glob label", "a.corp.example/app", vec!["glob"]),
            ("glob is one label", "a.b.corp.example/app", vec![]),
            ("docker hub short name", "busybox", vec!["hub"]),
            ("docker hub user image", "someone/app:1", vec!["hub"]),
            (
                "docker hub explicit",
                "docker.io/library/busybox",
                vec!["hub"],
            ),
            ("localhost is not docker hub", "localhost/app", vec![]),
            ("unrelated registry", "quay.io/app", vec![]),
        ];
        for (name, image, want) in cases {
            assert_eq!(users(&k.lookup(image)), want, "case {name}");
        }
    }

    #[test]
    fn auth_fields_are_decoded_into_username_and_password() {
        // "alice:s3:cret"
        let k = keyring(r#"{"auths": {"r.lan": {"auth": "YWxpY2U6czM6Y3JldA=="}}}"#);
        let creds = k.lookup("r.lan/app");
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].username, "alice");
        assert_eq!(creds[0].password, "s3:cret");
        assert_eq!(creds[0].server_address, "r.lan");
    }

    #[test]
    fn legacy_dockercfg_and_several_secrets_add_up() {
        let mut k = keyring(r#"{"auths": {"r.lan": {"username": "first", "password": "p"}}}"#);
        k.add_dockercfg(br#"{"r.lan": {"username": "second", "password": "p"}}"#)
            .unwrap();
        assert_eq!(users(&k.lookup("r.lan/app")), ["first", "second"]);
    }

    #[test]
    fn malformed_configs_are_errors() {
        let cases = [
            ("not json", "{"),
            ("bad base64", r#"{"auths": {"r.lan": {"auth": "!!"}}}"#),
            ("no colon", r#"{"auths": {"r.lan": {"auth": "YWxpY2U="}}}"#),
            (
                "empty registry",
                r#"{"auths": {"https://": {"username": "u"}}}"#,
            ),
        ];
        for (name, json) in cases {
            let mut k = Keyring::default();
            assert!(
                k.add_docker_config_json(json.as_bytes()).is_err(),
                "case {name}"
            );
        }
    }
}
