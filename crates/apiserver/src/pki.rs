//! The cluster's certificates: a CA, the API server's serving certificate and
//! the admin client certificate, kept under `<data-dir>/tls/`, plus the admin
//! kubeconfig under `<data-dir>/cred/`.
//!
//! Everything is created on first start and reused afterwards. The serving
//! certificate is re-issued (by the same CA) when the wanted SANs change, as
//! k3s does, so that adding a `--tls-san` does not require a new CA.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What can go wrong creating or loading the certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("loading {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// The PEM material the server needs at runtime.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub dir: PathBuf,
}

/// The DNS names every serving certificate carries besides the configured ones.
const BUILTIN_DNS_SANS: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// The SANs of the serving certificate, sorted and deduplicated: the built-in
/// names, `127.0.0.1`, the bind address (unless unspecified) and `extra`.
pub fn serving_sans(bind_address: &str, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = BUILTIN_DNS_SANS.iter().map(|s| s.to_string()).collect();
    sans.push("127.0.0.1".into());
    if let Ok(ip) = bind_address.parse::<IpAddr>() {
        if !ip.is_unspecified() {
            sans.push(ip.to_string());
        }
    } else if !bind_address.is_empty() {
        sans.push(bind_address.to_string());
    }
    sans.extend(
        extra
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    );
    sans.sort();
    sans.dedup();
    sans
}

/// Loads the certificates under `<data_dir>/tls`, creating whatever is
/// missing, and re-issuing the serving certificate when `sans` changed.
pub fn ensure(data_dir: &Path, sans: &[String]) -> Result<Pki> {
    let dir = data_dir.join("tls");
    create_dir(&dir)?;
    let ca_cert_path = dir.join("server-ca.crt");
    let ca_key_path = dir.join("server-ca.key");

    let (ca_cert_pem, ca_key_pem) = if ca_cert_path.exists() && ca_key_path.exists() {
        (read(&ca_cert_path)?, read(&ca_key_path)?)
    } else {
        tracing::info!(dir = %dir.display(), "creating cluster certificate authority");
        let (cert, key) = new_ca()?;
        write_private(&ca_key_path, &key)?;
        write_public(&ca_cert_path, &cert)?;
        (cert, key)
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| PkiError::Load {
        path: ca_key_path.display().to_string(),
        source,
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|source| PkiError::Load {
            path: ca_cert_path.display().to_string(),
            source,
        })?;

    let serving_cert_path = dir.join("serving-kube-apiserver.crt");
    let serving_key_path = dir.join("serving-kube-apiserver.key");
    let sans_path = dir.join("serving-kube-apiserver.sans");
    let wanted_sans = sans.join("\n");
    let reuse_serving = serving_cert_path.exists()
        && serving_key_path.exists()
        && read(&sans_path).ok().as_deref() == Some(wanted_sans.as_str());
    let (serving_cert_pem, serving_key_pem) = if reuse_serving {
        (read(&serving_cert_path)?, read(&serving_key_path)?)
    } else {
        tracing::info!(?sans, "issuing API server serving certificate");
        let (cert, key) = new_leaf(
            &issuer,
            "kube-apiserver",
            &[],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write_private(&serving_key_path, &key)?;
        write_public(&serving_cert_path, &cert)?;
        write_public(&sans_path, &wanted_sans)?;
        (cert, key)
    };

    let admin_cert_path = dir.join("client-admin.crt");
    let admin_key_path = dir.join("client-admin.key");
    let (admin_cert_pem, admin_key_pem) = if admin_cert_path.exists() && admin_key_path.exists() {
        (read(&admin_cert_path)?, read(&admin_key_path)?)
    } else {
        let (cert, key) = new_leaf(
            &issuer,
            "system:admin",
            &["system:masters"],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        write_private(&admin_key_path, &key)?;
        write_public(&admin_cert_path, &cert)?;
        (cert, key)
    };

    Ok(Pki {
        ca_cert_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        dir,
    })
}

/// The admin kubeconfig, with the CA and the client certificate embedded.
pub fn admin_kubeconfig(pki: &Pki, server_url: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server_url}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(&pki.ca_cert_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    )
}

/// Writes a kubeconfig (mode 0600), creating the parent directory.
pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    write_private(path, contents)
}

fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // Slightly in the past so that clocks a little behind still accept it.
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(3650),
    )
}

fn new_ca() -> Result<(String, String)> {
    let generate = |source| PkiError::Generate { what: "ca", source };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    let now = time::OffsetDateTime::now_utc();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("skiff-server-ca@{}", now.unix_timestamp()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity();
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let what = match usage {
        ExtendedKeyUsagePurpose::ServerAuth => "serving",
        _ => "client",
    };
    let generate = |source| PkiError::Generate { what, source };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    for san in sans {
        let entry = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.clone()
                    .try_into()
                    .map_err(|_| PkiError::InvalidSan(san.clone()))?,
            ),
        };
        params.subject_alt_names.push(entry);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for org in organizations {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    (params.not_before, params.not_after) = validity();
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, issuer).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes through a temp file and a rename, with mode 0600 from the start.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_sans_include_builtin_names_bind_address_and_extras_without_unspecified() {
        // (bind address, extra SANs, wanted, not wanted)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "0.0.0.0",
                &[],
                &["kubernetes.default.svc", "127.0.0.1", "localhost"],
                &["0.0.0.0"],
            ),
            (
                "10.0.0.5",
                &["my.example.com"],
                &["10.0.0.5", "my.example.com"],
                &[],
            ),
            ("127.0.0.1", &[" "], &["127.0.0.1"], &[" ", ""]),
        ];
        for (bind, extra, want, not_want) in cases {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let sans = serving_sans(bind, &extra);
            for w in *want {
                assert!(
                    sans.iter().any(|s| s == w),
                    "bind {bind}: {w} missing in {sans:?}"
                );
            }
            for n in *not_want {
                assert!(
                    !sans.iter().any(|s| s == n),
                    "bind {bind}: {n} unexpected in {sans:?}"
                );
            }
        }
    }

    #[test]
    fn certificates_are_reused_on_restart_and_serving_cert_reissued_when_sans_change()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let sans = serving_sans("127.0.0.1", &[]);
        let first = ensure(dir.path(), &sans)?;
        let second = ensure(dir.path(), &sans)?;
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.serving_cert_pem, second.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, second.admin_cert_pem);
        let third = ensure(
            dir.path(),
            &serving_sans("127.0.0.1", &["extra.example".into()]),
        )?;
        assert_eq!(first.ca_cert_pem, third.ca_cert_pem);
        assert_ne!(first.serving_cert_pem, third.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, third.admin_cert_pem);
        Ok(())
    }
}
