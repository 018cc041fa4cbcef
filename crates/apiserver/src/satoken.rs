//! Service account tokens: `serviceaccounts/<name>/token` (TokenRequest)
//! issues bound JWTs, and the authenticator accepts them.
//!
//! Tokens are JWS compact serialisations signed with ES256 by a key the
//! server keeps beside its CA (`<data-dir>/tls/service-account.key`, made on
//! first start). The claims follow Kubernetes' bound tokens: `iss`, `sub`
//! (`system:serviceaccount:<ns>:<name>`), `aud`, `iat`/`nbf`/`exp`, and the
//! private `kubernetes.io` claim with the namespace, the service account
//! (name, uid) and the bound object (a pod, secret or node; name, uid). A
//! token authenticates only while its service account (and bound object)
//! still exist with the same uid.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::registry;
use crate::resources;

/// The issuer and default audience, as Kubernetes' defaults.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default lifetime and Kubernetes' minimum.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;

/// Why the signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("service account key {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the service account key: {0}")]
    Write(#[source] crate::pki::PkiError),
    #[error("service account key {path} is not a PKCS#8 P-256 key")]
    BadKey { path: String },
}

/// Signs and verifies service account tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenSigner {
    /// Loads the key from `dir/service-account.key`, making it first if
    /// missing.
    pub fn load_or_create(dir: &Path) -> Result<TokenSigner, SignerError> {
        let path = dir.join("service-account.key");
        let shown = path.display().to_string();
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read(&path) {
            Ok(pem) => {
                let text = String::from_utf8_lossy(&pem);
                let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(body.trim())
                    .map_err(|_| SignerError::BadKey {
                        path: shown.clone(),
                    })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| SignerError::BadKey {
                        path: shown.clone(),
                    })?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
                let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
                for chunk in b64.as_bytes().chunks(64) {
                    pem.push_str(&String::from_utf8_lossy(chunk));
                    pem.push('\n');
                }
                pem.push_str("-----END PRIVATE KEY-----\n");
                crate::pki::write_private(&path, &pem).map_err(SignerError::Write)?;
                doc.as_ref().to_vec()
            }
            Err(source) => {
                return Err(SignerError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| SignerError::BadKey { path: shown })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = B64.encode(&digest.as_ref()[..16]);
        Ok(TokenSigner { key, kid })
    }

    fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| ApiError::Internal("signing the token failed".into()))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// The claims of a token this signer made, if its signature holds.
    fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")? != "ES256" || header.get("kid")? != self.kid.as_str() {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .ok()?;
        serde_json::from_slice(&B64.decode(c).ok()?).ok()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `POST serviceaccounts/<name>/token`: a signed token for the account,
/// optionally bound to a pod, secret or node.
pub async fn token_request(
    state: &AppState,
    ns: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let signer = state
        .token_signer()
        .ok_or_else(|| ApiError::Internal("no service account signing key".into()))?;
    let request: Value = if body.starts_with(b"k8s\x00") {
        crate::protobuf::decode(body)
            .map_err(|e| ApiError::BadRequest(format!("decoding TokenRequest: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("decoding TokenRequest: {e}")))?
    };
    let kind = request
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !kind.is_empty() && kind != "TokenRequest" {
        return Err(ApiError::BadRequest(format!(
            "the body of the request must be a authentication.k8s.io/v1 TokenRequest, got {kind:?}"
        )));
    }
    let sas = resources::find("", "v1", "serviceaccounts").ok_or(ApiError::UnknownPath)?;
    let sa = registry::get(state, sas, Some(ns), name).await?;
    let sa_uid = registry::meta(&sa, "uid").unwrap_or_default();
    let spec = request.get("spec").cloned().unwrap_or(json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION);
    if expiration < MIN_EXPIRATION {
        return Err(ApiError::Invalid {
            kind: "TokenRequest".into(),
            group: "authentication.k8s.io".into(),
            name: name.into(),
            causes: vec![FieldError::invalid_value(
                "spec.expirationSeconds",
                &json!(expiration),
                "may not specify a duration less than 10 minutes",
            )],
        });
    }
    let audiences = spec
        .get("audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(ISSUER)]);
    let mut private = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": sa_uid},
    });
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let claim = match kind {
            "Pod" => "pod",
            "Secret" => "secret",
            "Node" => "node",
            other => {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind a token to a {other:?}; supported kinds: Pod, Secret, Node"
                )));
            }
        };
        let bound_name = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut entry = json!({"name": bound_name});
        if let Some(uid) = bound.get("uid").and_then(Value::as_str) {
            entry["uid"] = json!(uid);
        }
        private[claim] = entry;
    }
    let iat = now();
    let exp = iat + expiration;
    let claims = json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "kubernetes.io": private,
    });
    let token = signer.sign(&claims)?;
    let mut out = request.clone();
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
        m.insert("kind".into(), json!("TokenRequest"));
        m.insert(
            "metadata".into(),
            json!({"name": name, "namespace": ns, "creationTimestamp": rfc3339(iat)}),
        );
        let mut spec = spec;
        spec["audiences"] = json!(claims["aud"]);
        spec["expirationSeconds"] = json!(expiration);
        m.insert("spec".into(), spec);
        m.insert(
            "status".into(),
            json!({"token": token, "expirationTimestamp": rfc3339(exp)}),
        );
    }
    Ok(out)
}

/// The user of a service account token, if it is one of ours, unexpired,
/// for our audience, and its service account (and bound object) still
/// exist with the same uid.
pub async fn authenticate(state: &AppState, token: &str) -> Option<User> {
    let signer = state.token_signer()?;
    let claims = signer.verify(token)?;
    let t = now();
    if claims.get("exp")?.as_i64()? < t || claims.get("nbf").and_then(Value::as_i64)? > t + 60 {
        return None;
    }
    let aud_ok = match claims.get("aud")? {
        Value::String(a) => a == ISSUER,
        Value::Array(a) => a.iter().any(|a| a == ISSUER),
        _ => false,
    };
    if !aud_ok {
        return None;
    }
    let private = claims.get("kubernetes.io")?;
    let ns = private.get("namespace")?.as_str()?;
    let sa = private.get("serviceaccount")?;
    let sa_name = sa.get("name")?.as_str()?;
    let sa_uid = sa.get("uid")?.as_str()?;
    let sas = resources::find("", "v1", "serviceaccounts")?;
    let live = registry::get(state, sas, Some(ns), sa_name).await.ok()?;
    if registry::meta(&live, "uid").as_deref() != Some(sa_uid) {
        return None;
    }
    for (claim, plural, namespaced) in [
        ("pod", "pods", true),
        ("secret", "secrets", true),
        ("node", "nodes", false),
    ] {
        let Some(bound) = private.get(claim) else {
            continue;
        };
        let def = resources::find("", "v1", plural)?;
        let name = bound.get("name")?.as_str()?;
        let obj = registry::get(state, def, namespaced.then_some(ns), name)
            .await
            .ok()?;
        if let Some(uid) = bound.get("uid").and_then(Value::as_str)
            && registry::meta(&obj, "uid").as_deref() != Some(uid)
        {
            return None;
        }
    }
    Some(User {
        name: format!("system:serviceaccount:{ns}:{sa_name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_signer_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let signer = TokenSigner::load_or_create(dir.path()).unwrap();
        let claims = json!({"sub": "system:serviceaccount:default:default"});
        let token = signer.sign(&claims).unwrap();
        assert_eq!(signer.verify(&token), Some(claims));

        // The same key is loaded again after a restart.
        let again = TokenSigner::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token).is_some());

        let other = TokenSigner::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&token).is_none());

        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64.encode(r#"{"sub":"system:admin"}"#);
        parts[1] = &forged;
        assert!(signer.verify(&parts.join(".")).is_none());
    }
}
