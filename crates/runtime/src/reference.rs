//! Image reference normalisation, as Docker and Kubernetes do it:
//! `busybox` → `docker.io/library/busybox:latest`,
//! `localhost:5000/app` → `localhost:5000/app:latest`,
//! `repo@sha256:…` keeps its digest and gets no tag.

use std::fmt;

use crate::api::{Error, Result};

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `registry.k8s.io`.
    pub registry: String,
    /// `library/busybox`, `pause`.
    pub repository: String,
    /// `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` reads it.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid =
            |why: &str| Error::InvalidArgument(format!("image reference {input:?}: {why}"));
        let s = input.trim();
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d).map_err(|why| invalid(&why))?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let (n, t) = name_tag.split_at(last_slash + i);
                (n, Some(t[1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(invalid("bad tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase()
                            || ch.is_ascii_digit()
                            || matches!(ch, '.' | '_' | '-')
                    })
            })
        {
            return Err(invalid(
                "bad repository name (lowercase letters, digits, '.', '_', '-')",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` for a given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// Whether the registry is on this machine (pulled over plain HTTP unless
    /// configured otherwise).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether `host[:port]` is on this machine: `localhost`, `127.*`, `[::1]`.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks `sha256:<64 lowercase hex>`.
pub fn validate_digest(d: &str) -> std::result::Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        Some(("sha256", _)) => Err("bad sha256 digest".into()),
        Some((alg, _)) => Err(format!("unsupported digest algorithm {alg}")),
        None => Err("digest without algorithm".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_normalise_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("myuser/app:v2", "docker.io/myuser/app:v2"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
            ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
            ("skiff.test/testbin:1", "skiff.test/testbin:1"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "input {input}"
            );
        }
    }

    #[test]
    fn digest_references_keep_the_digest_and_get_no_default_tag() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.tag, None);
        let r = Reference::parse(&format!("localhost:5000/app:1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.as_deref(), Some(D));
    }

    #[test]
    fn malformed_references_are_rejected() {
        for input in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:abc",
            "busybox@md5:00",
            "a//b",
            "busy box",
            "app:-x",
        ] {
            assert!(Reference::parse(input).is_err(), "accepted {input:?}");
        }
    }

    #[test]
    fn loopback_registries_are_detected() {
        assert!(
            Reference::parse("localhost:5000/a")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(
            Reference::parse("127.0.0.1:5000/a")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(
            !Reference::parse("registry.k8s.io/a")
                .unwrap()
                .is_loopback_registry()
        );
        assert!(!Reference::parse("busybox").unwrap().is_loopback_registry());
    }
}
