//! The generic registry: the verbs of every resource in the table, on top of
//! the store. Objects are `serde_json::Value`s; the store holds their JSON
//! without `metadata.resourceVersion`, which is the key's `mod_revision` and
//! is filled in on the way out.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use skiff_store::{Error as StoreError, EventKind, KeyValue, ListOptions, PutOptions, Revision};

use crate::AppState;
use crate::error::{ApiError, ApiResult, FieldError, GroupResource};
use crate::fieldvalidation::{self, Decoding, FieldValidation};
use crate::output::{self, Output, WatchEncoder};
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceDef, Subresource};
use crate::scale;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::ssa;
use crate::validation;

/// The detail of a 409 on a stale `resourceVersion`.
pub(crate) const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Kubernetes' limit on request bodies.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Watches without `timeoutSeconds` end after this long, like Kubernetes'
/// `--min-request-timeout`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// An idle watch that asked for bookmarks gets one this often (Kubernetes
/// sends one about every minute; clients only need them to be regular).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a resource URL names.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: &'static ResourceDef,
    /// The namespace from the URL (`None` for cluster-scoped resources and
    /// for lists across all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
}

/// The query parameters the registry understands.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<i64>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub dry_run: Option<String>,
    pub field_validation: Option<String>,
    pub include_object: Option<String>,
    pub allow_watch_bookmarks: Option<bool>,
    pub send_initial_events: Option<bool>,
    /// `DeleteOptions` as query parameters (used when a delete has no body).
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<bool>,
    /// Who is writing (`managedFields`); required for server-side apply.
    pub field_manager: Option<String>,
    /// Server-side apply: take over conflicting fields.
    pub force: Option<bool>,
}

impl Params {
    pub(crate) fn is_watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("1" | "true" | "True"))
    }

    fn selectors(&self, def: &ResourceDef) -> ApiResult<Selectors> {
        let labels = match self.label_selector.as_deref() {
            Some(s) => LabelSelector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
            None => LabelSelector::default(),
        };
        let fields = match self.field_selector.as_deref() {
            Some(s) => {
                FieldSelector::parse(s, def).map_err(|e| ApiError::BadRequest(e.to_string()))?
            }
            None => FieldSelector::default(),
        };
        Ok(Selectors { labels, fields })
    }

    pub(crate) fn dry_run(&self) -> ApiResult<bool> {
        match self.dry_run.as_deref() {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "Invalid dry run value: {other}, supported values: All"
            ))),
        }
    }
}

/// Serves one request to a resource URL.
pub async fn handle(
    state: &AppState,
    method: &Method,
    target: Target,
    params: Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Target {
        def,
        namespace,
        name,
        subresource,
    } = target;
    let ns = namespace.as_deref();
    if subresource == Some(Subresource::Scale) {
        let name = name.ok_or(ApiError::MethodNotAllowed)?;
        return scale_request(state, def, ns, &name, method, &params, headers, body).await;
    }
    if let (Some(sub @ (Subresource::Binding | Subresource::Eviction)), Some(name)) =
        (subresource, name.as_deref())
    {
        if method != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let ns = ns.ok_or(ApiError::UnknownPath)?;
        return crate::pods::subresource_create(state, sub, ns, name, &params, headers, body).await;
    }
    if subresource == Some(Subresource::Finalize) && method != Method::PUT {
        return Err(ApiError::MethodNotAllowed);
    }
    match (method.as_str(), name) {
        ("GET", None) if params.is_watch() => {
            let out = Output::negotiate(headers, params.include_object.as_deref())?;
            watch(state, def, ns, &params, out).await
        }
        ("GET", None) => {
            let out = Output::negotiate(headers, params.include_object.as_deref())?;
            Ok(ok(output::list(
                def,
                out,
                list(state, def, ns, &params).await?,
            )))
        }
        ("GET", Some(name)) => {
            let out = Output::negotiate(headers, params.include_object.as_deref())?;
            Ok(ok(output::object(
                def,
                out,
                get(state, def, ns, &name).await?,
            )))
        }
        ("POST", None) if ns.is_some() || !def.namespaced => {
            let validation = FieldValidation::parse(params.field_validation.as_deref())?;
            let body = read_body(headers, body).await?;
            let mut obj = decode_object(def, headers, &body)?;
            let warnings = fieldvalidation::check(def, &mut obj, validation, Decoding::Body)?;
            let manager = field_manager(&params, headers)?;
            let created = create(
                state,
                def,
                ns,
                obj,
                params.dry_run()?,
                Ownership::Update(&manager),
            )
            .await?;
            let mut response = crate::json_response(StatusCode::CREATED, &created);
            fieldvalidation::add_warnings(&mut response, &warnings);
            Ok(response)
        }
        ("PUT", Some(name)) => {
            let validation = FieldValidation::parse(params.field_validation.as_deref())?;
            let body = read_body(headers, body).await?;
            let mut obj = decode_object(def, headers, &body)?;
            let warnings = fieldvalidation::check(def, &mut obj, validation, Decoding::Body)?;
            let manager = field_manager(&params, headers)?;
            let updated = update(
                state,
                def,
                ns,
                &name,
                subresource,
                obj,
                params.dry_run()?,
                &manager,
            )
            .await?;
            let mut response = ok(updated);
            fieldvalidation::add_warnings(&mut response, &warnings);
            Ok(response)
        }
        ("PATCH", Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let validation = FieldValidation::parse(params.field_validation.as_deref())?;
            if content_type.split(';').next().map(str::trim) == Some(APPLY_PATCH) {
                let body = read_body(headers, body).await?;
                let manager = params
                    .field_manager
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                        )
                    })?;
                field_manager(&params, headers)?;
                let (applied, warnings) = apply_patch(
                    state,
                    def,
                    ns,
                    &name,
                    subresource,
                    ApplyRequest {
                        body: &body,
                        validation,
                        dry_run: params.dry_run()?,
                        manager,
                        force: params.force == Some(true),
                    },
                )
                .await?;
                let mut response = ok(applied);
                fieldvalidation::add_warnings(&mut response, &warnings);
                return Ok(response);
            }
            let Some(ty) = PatchType::from_content_type(content_type) else {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
                )));
            };
            let body = read_body(headers, body).await?;
            let manager = field_manager(&params, headers)?;
            let (patched, warnings) = patch(
                state,
                def,
                ns,
                &name,
                subresource,
                PatchRequest {
                    ty,
                    body: &body,
                    validation,
                    dry_run: params.dry_run()?,
                    manager: &manager,
                },
            )
            .await?;
            let mut response = ok(patched);
            fieldvalidation::add_warnings(&mut response, &warnings);
            Ok(response)
        }
        ("DELETE", Some(name)) if subresource.is_none() => {
            let body = read_body(headers, body).await?;
            let opts = DeleteOptions::decode(&body, &params)?;
            let (code, out) = delete(state, def, ns, &name, &opts, params.dry_run()?).await?;
            Ok(crate::json_response(code, &out))
        }
        ("DELETE", None) => {
            let body = read_body(headers, body).await?;
            let opts = DeleteOptions::decode(&body, &params)?;
            Ok(ok(delete_collection(state, def, ns, &params, &opts).await?))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `<resource>/<name>/scale`: get, update and patch of an `autoscaling/v1`
/// Scale; writes change only the object's `spec.replicas`.
#[allow(clippy::too_many_arguments)]
async fn scale_request(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    method: &Method,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let key = key_of(def, ns, name);
    let manager = field_manager(params, headers)?;
    match method.as_str() {
        "GET" => Ok(ok(scale::to_scale(def, &get(state, def, ns, name).await?))),
        "PUT" => {
            let body = read_body(headers, body).await?;
            let requested: Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
            })?;
            scale::check_type_meta(&requested)?;
            if meta(&requested, "name").is_some_and(|n| n != name) {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta(&requested, "name").unwrap_or_default()
                )));
            }
            let precondition = match meta(&requested, "resourceVersion").filter(|rv| !rv.is_empty())
            {
                Some(rv) => Some(parse_resource_version(def, name, &rv)?),
                None => None,
            };
            let replicas = scale::requested_replicas(name, &requested)?;
            let dry_run = params.dry_run()?;
            loop {
                let current = state
                    .store()
                    .get(&key)
                    .await?
                    .ok_or_else(|| not_found(def, name))?;
                if precondition.is_some_and(|rv| rv != current.mod_revision) {
                    return Err(conflict(def, name, MODIFIED));
                }
                match write_replicas(state, def, &current, replicas, dry_run, &manager).await? {
                    Write::Done(v) => return Ok(ok(scale::to_scale(def, &v))),
                    Write::Retry if precondition.is_some() => {
                        return Err(conflict(def, name, MODIFIED));
                    }
                    Write::Retry => continue,
                }
            }
        }
        "PATCH" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let Some(ty) = PatchType::from_content_type(content_type) else {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json; got {content_type:?}"
                )));
            };
            let body = read_body(headers, body).await?;
            let dry_run = params.dry_run()?;
            loop {
                let current = state
                    .store()
                    .get(&key)
                    .await?
                    .ok_or_else(|| not_found(def, name))?;
                let old = present_kv(def, &current)?;
                let patched = patch::apply(ty, &scale::to_scale(def, &old), &body)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                scale::check_type_meta(&patched)?;
                let rv = meta(&patched, "resourceVersion").filter(|rv| !rv.is_empty());
                if let Some(rv) = rv
                    && rv != current.mod_revision.to_string()
                {
                    parse_resource_version(def, name, &rv)?;
                    return Err(conflict(def, name, MODIFIED));
                }
                let replicas = scale::requested_replicas(name, &patched)?;
                match write_replicas(state, def, &current, replicas, dry_run, &manager).await? {
                    Write::Done(v) => return Ok(ok(scale::to_scale(def, &v))),
                    Write::Retry => continue,
                }
            }
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Sets `spec.replicas` of the stored object `current`.
async fn write_replicas(
    state: &AppState,
    def: &ResourceDef,
    current: &KeyValue,
    replicas: i64,
    dry_run: bool,
    manager: &str,
) -> ApiResult<Write> {
    let old = present_kv(def, current)?;
    let mut new = old.clone();
    if let Some(map) = new.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("replicas".into(), json!(replicas));
        }
    }
    commit_update(
        state,
        def,
        current,
        &old,
        new,
        Some(Subresource::Scale),
        dry_run,
        Ownership::Update(manager),
    )
    .await
}

pub(crate) fn ok(v: Value) -> Response {
    crate::json_response(StatusCode::OK, &v)
}

pub(crate) async fn read_body(headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::RequestEntityTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                ApiError::RequestEntityTooLarge {
                    limit: MAX_BODY_BYTES,
                }
            } else {
                ApiError::BadRequest(format!("reading request body: {inner}"))
            }
        })
}

/// Parses a request body into an object of `def`'s kind. `kind` and
/// `apiVersion` must be present and match the URL.
fn decode_object(def: &ResourceDef, headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media == "application/vnd.kubernetes.protobuf" {
        let obj = crate::protobuf::decode(body).map_err(|e| match e {
            crate::protobuf::ProtobufError::UnsupportedKind(_) => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            other => ApiError::BadRequest(other.to_string()),
        })?;
        check_type_meta(def, &obj)?;
        return Ok(obj);
    }
    if media != "application/json" && !media.is_empty() {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json; got {content_type:?}"
        )));
    }
    let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "couldn't get version/kind; json parse error: the body is not a JSON object".into(),
        ));
    };
    // A body without any type information takes the endpoint's, as
    // Kubernetes' decoder defaults it (the Python client sends such bodies).
    let untyped = |k: &str| map.get(k).and_then(Value::as_str).is_none_or(str::is_empty);
    if untyped("kind") && untyped("apiVersion") {
        map.insert("kind".into(), json!(def.kind));
        map.insert("apiVersion".into(), json!(def.api_version()));
    }
    check_type_meta(def, &obj)?;
    Ok(obj)
}

fn check_type_meta(def: &ResourceDef, obj: &Value) -> ApiResult<()> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "Object 'Kind' is missing in '{obj}'"
        )));
    }
    if api_version.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "Object 'apiVersion' is missing in '{obj}'"
        )));
    }
    if api_version != def.api_version() {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    if kind != def.kind {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    Ok(())
}

pub(crate) fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

/// The `metadata` map of `obj`, created when missing. Callers pass objects
/// (checked at decode time); anything else is replaced by an empty object
/// rather than panicking.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(map) = obj else {
        unreachable!("replaced by an object above")
    };
    let slot = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

/// The RFC 3339 UTC time with second precision, as Kubernetes writes it.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A stored object as clients see it: `apiVersion`/`kind` set and
/// `metadata.resourceVersion` from the key's revision.
pub(crate) fn present(def: &ResourceDef, value: &[u8], revision: Revision) -> ApiResult<Value> {
    let obj: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))?;
    if !obj.is_object() {
        return Err(ApiError::Internal(
            "stored object is not a JSON object".into(),
        ));
    }
    Ok(present_value(def, obj, revision))
}

/// An object as the API shows it: `apiVersion` and `kind` of its resource
/// and `resourceVersion` = `revision`. A write answers with the object it
/// stored through this, without parsing the stored bytes back.
pub(crate) fn present_value(def: &ResourceDef, mut obj: Value, revision: Revision) -> Value {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(def.api_version()));
        map.insert("kind".into(), Value::String(def.kind.into()));
    }
    let meta = meta_mut(&mut obj);
    meta.remove("selfLink");
    meta.insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
    obj
}

pub(crate) fn present_kv(def: &ResourceDef, kv: &KeyValue) -> ApiResult<Value> {
    present(def, &kv.value, kv.mod_revision)
}

/// Metadata fields that are never stored.
fn unstored_meta(key: &str) -> bool {
    key == "resourceVersion" || key == "selfLink"
}

/// The bytes stored for an object: without `resourceVersion` and `selfLink`
/// (serialised skipping them, not from a copy of the object).
pub(crate) fn encode(obj: &Value) -> ApiResult<Bytes> {
    serde_json::to_vec(&Stored(obj))
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("encoding object: {e}")))
}

/// Serialises an object as [`encode`] stores it.
struct Stored<'a>(&'a Value);

/// Serialises metadata without the fields that are never stored.
struct StoredMeta<'a>(&'a Value);

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(map) = self.0.as_object() else {
            return self.0.serialize(s);
        };
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            if k == "metadata" {
                out.serialize_entry(k, &StoredMeta(v))?;
            } else {
                out.serialize_entry(k, v)?;
            }
        }
        out.end()
    }
}

impl serde::Serialize for StoredMeta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(map) = self.0.as_object() else {
            return self.0.serialize(s);
        };
        let mut out = s.serialize_map(None)?;
        for (k, v) in map.iter().filter(|(k, _)| !unstored_meta(k)) {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

/// Whether two objects would be stored as the same bytes: equal but for
/// the metadata that is never stored. Objects are `BTreeMap`s, so maps
/// compare entry by entry in key order.
fn same_when_stored(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && if ka == "metadata" {
                    match (va.as_object(), vb.as_object()) {
                        (Some(ma), Some(mb)) => ma
                            .iter()
                            .filter(|(k, _)| !unstored_meta(k))
                            .eq(mb.iter().filter(|(k, _)| !unstored_meta(k))),
                        _ => va == vb,
                    }
                } else {
                    va == vb
                }
        })
}

pub(crate) fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: GroupResource::of(def),
        name: name.to_string(),
    }
}

pub(crate) fn conflict(def: &ResourceDef, name: &str, detail: &str) -> ApiError {
    ApiError::Conflict {
        resource: GroupResource::of(def),
        name: name.to_string(),
        detail: detail.to_string(),
    }
}

pub(crate) fn invalid(def: &ResourceDef, name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: def.kind.to_string(),
        group: def.group.to_string(),
        name: name.to_string(),
        causes,
    }
}

pub(crate) fn put_options(def: &ResourceDef) -> PutOptions {
    PutOptions { ttl: def.ttl }
}

/// The key of an object; `namespace` is ignored for cluster-scoped kinds.
pub(crate) fn key_of(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
    def.key(if def.namespaced { namespace } else { None }, name)
}

pub async fn get(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Value> {
    let kv = state
        .store()
        .get(&key_of(def, ns, name))
        .await?
        .ok_or_else(|| not_found(def, name))?;
    present_kv(def, &kv)
}

/// `generateName` plus five random characters from Kubernetes' alphabet.
fn generate_name(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String = random.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    // Kubernetes truncates the base so that the name stays within 63.
    let base: String = base.chars().take(58).collect();
    format!("{base}{suffix}")
}

/// Creates `obj` (already checked for kind) in namespace `ns`.
pub async fn create(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
    ownership: Ownership<'_>,
) -> ApiResult<Value> {
    // Namespace: from the URL; the object's must agree.
    if def.namespaced {
        let url_ns = ns.unwrap_or_default();
        match meta(&obj, "namespace") {
            Some(obj_ns) if !obj_ns.is_empty() && obj_ns != url_ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            _ => {
                meta_mut(&mut obj).insert("namespace".into(), Value::String(url_ns.into()));
            }
        }
    } else {
        meta_mut(&mut obj).remove("namespace");
    }
    // Name, possibly generated.
    let name = match meta(&obj, "name").filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => match meta(&obj, "generateName").filter(|n| !n.is_empty()) {
            Some(base) => {
                let n = generate_name(&base);
                meta_mut(&mut obj).insert("name".into(), Value::String(n.clone()));
                n
            }
            None => {
                return Err(invalid(
                    def,
                    "",
                    vec![FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        },
    };
    let errors = validation::validate_metadata(&obj, def.name_rule, def.namespaced);
    if !errors.is_empty() {
        return Err(invalid(def, &name, errors));
    }
    // System fields are the server's.
    {
        let m = meta_mut(&mut obj);
        m.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        for field in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(field);
        }
    }
    apply_defaults(def, &mut obj);
    let errors = crate::kinds::validate(def, &obj);
    if !errors.is_empty() {
        return Err(invalid(def, &name, errors));
    }
    ownership.record(def, None, &mut obj, None);
    if def.namespaced {
        crate::namespaces::admit_create(state, def, ns.unwrap_or_default(), &name).await?;
    }
    let key = key_of(def, ns, &name);
    if dry_run {
        if state.store().get(&key).await?.is_some() {
            return Err(ApiError::AlreadyExists {
                resource: GroupResource::of(def),
                name,
            });
        }
        return Ok(obj);
    }
    let taken = if (def.group, def.plural) == ("", "services") {
        Some(crate::allocator::allocate(state, ns.unwrap_or_default(), &mut obj).await?)
    } else {
        None
    };
    let created = match state
        .store()
        .create(&key, encode(&obj)?, put_options(def))
        .await
    {
        Ok(kv) => Ok(present_value(def, obj, kv.mod_revision)),
        Err(StoreError::AlreadyExists { .. }) => Err(ApiError::AlreadyExists {
            resource: GroupResource::of(def),
            name,
        }),
        Err(e) => Err(e.into()),
    };
    if created.is_err()
        && let Some(taken) = taken
    {
        taken.release(state).await;
    }
    created
}

pub(crate) fn namespaces_def() -> &'static ResourceDef {
    // The table always has namespaces; a missing row is a programming error
    // caught by the resources tests.
    resources::find("", "v1", "namespaces").unwrap_or(&resources::RESOURCES[0])
}

/// A Secret's `stringData` is write-only: as Kubernetes' v1 conversion
/// does, its entries are merged into `data` (base64-encoded, overriding
/// keys already there) and it is not stored. A `stringData` that is not a
/// map of strings is left for validation to reject.
fn fold_string_data(def: &ResourceDef, obj: &mut Value) {
    if (def.group, def.plural) != ("", "secrets") {
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let well_formed = match map.get("stringData") {
        Some(Value::Object(sd)) => sd.values().all(Value::is_string),
        Some(Value::Null) => {
            map.remove("stringData");
            return;
        }
        _ => false,
    };
    if !well_formed {
        return;
    }
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    if !map.get("data").is_some_and(Value::is_object) {
        map.insert("data".into(), json!({}));
    }
    if let Some(Value::Object(data)) = map.get_mut("data") {
        for (k, v) in string_data {
            if let Value::String(text) = v {
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                data.insert(k, Value::String(encoded));
            }
        }
    }
}

/// The per-kind defaulting done so far (Kubernetes defaults many more
/// fields; typed defaulting comes with the API types).
fn apply_defaults(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.plural) {
        ("", "namespaces") => default_namespace(obj),
        ("", "pods") => {
            // Kubernetes' pod strategy resets status on create.
            let qos = qos_class(obj);
            if let Some(map) = obj.as_object_mut() {
                map.insert(
                    "status".into(),
                    json!({"phase": "Pending", "qosClass": qos}),
                );
            }
        }
        ("", "services") => default_service(obj),
        ("", "secrets") => {
            fold_string_data(def, obj);
            if let Some(map) = obj.as_object_mut()
                && map
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                map.insert("type".into(), json!("Opaque"));
            }
        }
        _ => {}
    }
    // Status is the controllers' (and agents'): a create starts without
    // one, as Kubernetes' strategies reset it. Nodes register with theirs.
    if def.has_subresource(Subresource::Status)
        && !matches!(
            (def.group, def.plural),
            ("", "pods" | "nodes" | "namespaces")
        )
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
}

/// Service port defaults: protocol TCP, `targetPort` the port itself; a
/// zero `nodePort` or `targetPort` (what protobuf clients send for unset)
/// counts as unset.
fn default_service(obj: &mut Value) {
    let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return;
    };
    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
        port.entry("protocol").or_insert(json!("TCP"));
        if port.get("nodePort").and_then(Value::as_i64) == Some(0) {
            port.remove("nodePort");
        }
        let unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            _ => false,
        };
        if unset && let Some(p) = port.get("port").cloned() {
            port.insert("targetPort".into(), p);
        }
    }
}

/// A pod's QoS class from its containers' requests and limits (cpu and
/// memory), as `qos.GetPodQOS` computes it.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let quantity = |c: &Value, kind: &str, res: &str| {
        c.pointer(&format!("/resources/{kind}/{res}"))
            .filter(|v| !v.is_null())
            .map(|v| v.to_string())
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        for res in ["cpu", "memory"] {
            let request = quantity(c, "requests", res);
            let limit = quantity(c, "limits", res);
            any |= request.is_some() || limit.is_some();
            // A missing request defaults to the limit.
            if limit.is_none() || request.is_some_and(|r| Some(r) != limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn default_namespace(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let spec = map.entry("spec").or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        spec.entry("finalizers")
            .or_insert_with(|| json!(["kubernetes"]));
    }
    map.insert("status".into(), json!({"phase": "Active"}));
    crate::namespaces::label_with_name(obj);
}

/// Everything but `metadata` and `status`: what bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The outcome of a conditional write attempt.
enum Write {
    Done(Value),
    /// Someone else wrote first: read again.
    Retry,
}

/// Turns a client's new version of an object into the one to store: server
/// fields kept from `old`, status or spec kept depending on `sub`, generation
/// bumped on spec changes, then validated and written conditionally on
/// `current`'s revision.
#[allow(clippy::too_many_arguments)]
async fn commit_update(
    state: &AppState,
    def: &ResourceDef,
    current: &KeyValue,
    old: &Value,
    mut new: Value,
    sub: Option<Subresource>,
    dry_run: bool,
    ownership: Ownership<'_>,
) -> ApiResult<Write> {
    let name = meta(old, "name").unwrap_or_default();
    if meta(&new, "name").is_some_and(|n| n != name) {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta(&new, "name").unwrap_or_default()
        )));
    }
    if def.namespaced && meta(&new, "namespace").is_some_and(|n| Some(n) != meta(old, "namespace"))
    {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    check_type_meta(def, &new)?;
    let new_obj = match sub {
        Some(Subresource::Status) => {
            // Only .status changes through the status subresource.
            let mut merged = old.clone();
            if let (Some(m), Some(status)) = (merged.as_object_mut(), new.get("status")) {
                m.insert("status".into(), status.clone());
            }
            merged
        }
        Some(
            Subresource::Binding
            | Subresource::Eviction
            | Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward
            | Subresource::Token,
        ) => {
            return Err(ApiError::MethodNotAllowed);
        }
        Some(Subresource::Scale | Subresource::Finalize) | None => {
            crate::namespaces::prepare_update(def, sub, old, &mut new);
            fold_string_data(def, &mut new);
            if let (true, Some(m)) = (
                def.has_subresource(Subresource::Status),
                new.as_object_mut(),
            ) {
                match old.get("status") {
                    Some(status) => m.insert("status".into(), status.clone()),
                    None => m.remove("status"),
                };
            }
            if is_services(def) {
                crate::allocator::prepare_update(old, &mut new);
            }
            let old_meta = old.get("metadata").cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            if spec_part(&new) != spec_part(old) {
                let generation = old_meta
                    .get("generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
            }
            new
        }
    };
    let mut errors = validation::validate_metadata(&new_obj, def.name_rule, def.namespaced);
    if sub != Some(Subresource::Status) {
        errors.extend(crate::kinds::validate_update(def, old, &new_obj));
        if errors.is_empty() {
            errors.extend(crate::kinds::validate(def, &new_obj));
        }
    }
    if !errors.is_empty() {
        return Err(invalid(def, &name, errors));
    }
    let mut new_obj = new_obj;
    // A service whose type changed takes (and later gives back) addresses
    // and node ports. A dry run takes nothing.
    let reallocation = if is_services(def) && sub.is_none() && !dry_run {
        let ns = meta(old, "namespace").unwrap_or_default();
        Some(crate::allocator::allocate_update(state, &ns, old, &mut new_obj).await?)
    } else {
        None
    };
    let written = write_update(state, def, current, old, new_obj, sub, dry_run, ownership).await;
    if let Some(r) = reallocation {
        match &written {
            Ok(Write::Done(_)) => {
                let ns = meta(old, "namespace").unwrap_or_default();
                r.committed(state, &ns, &name).await;
            }
            _ => r.taken.release(state).await,
        }
    }
    written
}

fn is_services(def: &ResourceDef) -> bool {
    (def.group, def.plural) == ("", "services")
}

/// The store write of an update whose new object is settled.
#[allow(clippy::too_many_arguments)]
async fn write_update(
    state: &AppState,
    def: &ResourceDef,
    current: &KeyValue,
    old: &Value,
    mut new_obj: Value,
    sub: Option<Subresource>,
    dry_run: bool,
    ownership: Ownership<'_>,
) -> ApiResult<Write> {
    ownership.record(def, Some(old), &mut new_obj, sub);
    if same_when_stored(&new_obj, old) {
        return Ok(Write::Done(present_kv(def, current)?));
    }
    let new_bytes = encode(&new_obj)?;
    // The last finalizer removed from an object being deleted: it goes.
    let remove = crate::deletion::should_delete_during_update(def, old, &new_obj);
    if dry_run {
        let mut out = new_obj;
        meta_mut(&mut out).insert(
            "resourceVersion".into(),
            json!(current.mod_revision.to_string()),
        );
        return Ok(Write::Done(out));
    }
    if remove {
        return match state
            .store()
            .delete(&current.key, Some(current.mod_revision))
            .await
        {
            Ok(deleted) => Ok(Write::Done(present_value(def, new_obj, deleted.revision))),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(Write::Retry),
            Err(e) => Err(e.into()),
        };
    }
    match state
        .store()
        .update(
            &current.key,
            new_bytes,
            current.mod_revision,
            put_options(def),
        )
        .await
    {
        Ok(kv) => Ok(Write::Done(present_value(def, new_obj, kv.mod_revision))),
        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(Write::Retry),
        Err(e) => Err(e.into()),
    }
}

fn parse_resource_version(def: &ResourceDef, name: &str, rv: &str) -> ApiResult<Revision> {
    rv.parse::<Revision>().map_err(|_| {
        invalid(
            def,
            name,
            vec![FieldError::invalid(
                "metadata.resourceVersion",
                rv,
                "must be an integer",
            )],
        )
    })
}

#[allow(clippy::too_many_arguments)]
pub async fn update(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: Option<Subresource>,
    obj: Value,
    dry_run: bool,
    manager: &str,
) -> ApiResult<Value> {
    if meta(&obj, "name").is_some_and(|n| n != name) {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta(&obj, "name").unwrap_or_default()
        )));
    }
    let precondition = match meta(&obj, "resourceVersion").filter(|rv| !rv.is_empty()) {
        Some(rv) => Some(parse_resource_version(def, name, &rv)?),
        None => None,
    };
    let key = key_of(def, ns, name);
    loop {
        let current = state
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| not_found(def, name))?;
        if precondition.is_some_and(|rv| rv != current.mod_revision) {
            return Err(conflict(def, name, MODIFIED));
        }
        let old = present_kv(def, &current)?;
        let ownership = Ownership::Update(manager);
        match commit_update(
            state,
            def,
            &current,
            &old,
            obj.clone(),
            sub,
            dry_run,
            ownership,
        )
        .await?
        {
            Write::Done(v) => return Ok(v),
            Write::Retry if precondition.is_some() => return Err(conflict(def, name, MODIFIED)),
            Write::Retry => continue,
        }
    }
}

/// How a write records field ownership (`metadata.managedFields`).
#[derive(Debug, Clone, Copy)]
pub enum Ownership<'a> {
    /// An ordinary write by this manager: it owns the fields it changed.
    Update(&'a str),
    /// A server-side apply already computed the managed fields.
    Applied,
}

impl Ownership<'_> {
    fn record(
        &self,
        def: &ResourceDef,
        old: Option<&Value>,
        new: &mut Value,
        sub: Option<Subresource>,
    ) {
        let Ownership::Update(manager) = *self else {
            return;
        };
        let entries = old.map(ssa::managed_fields).unwrap_or_default();
        let api_version = def.api_version();
        let now = now_rfc3339();
        let subresource = match sub {
            Some(Subresource::Status) => "status",
            Some(Subresource::Scale) => "scale",
            _ => "",
        };
        let m = ssa::Manager {
            name: manager,
            api_version: &api_version,
            subresource,
            now: &now,
        };
        let ignore_status = sub.is_none() && def.has_subresource(Subresource::Status);
        let entries = ssa::track_update(old, new, entries, &m, ignore_status);
        ssa::set_managed_fields(new, &entries);
    }
}

/// The manager of a write: `fieldManager`, else the client's user agent up
/// to its first `/`, as Kubernetes derives it.
pub(crate) fn field_manager(params: &Params, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(m) = params.field_manager.as_deref().filter(|m| !m.is_empty()) {
        if m.len() > 128 {
            return Err(ApiError::BadRequest(
                "fieldManager: Too long: may not be more than 128 bytes".into(),
            ));
        }
        return Ok(m.to_string());
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name: String = agent
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .take(128)
        .collect();
    Ok(if name.is_empty() {
        "unknown".into()
    } else {
        name
    })
}

/// A patch and how to apply it.
#[derive(Debug, Clone, Copy)]
pub struct PatchRequest<'a> {
    pub ty: PatchType,
    pub body: &'a [u8],
    pub validation: FieldValidation,
    pub dry_run: bool,
    pub manager: &'a str,
}

/// Patches an object; returns it with the unknown-field warnings.
pub async fn patch(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: Option<Subresource>,
    req: PatchRequest<'_>,
) -> ApiResult<(Value, Vec<String>)> {
    let PatchRequest {
        ty,
        body,
        validation,
        dry_run,
        manager,
    } = req;
    let key = key_of(def, ns, name);
    loop {
        let current = state
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| not_found(def, name))?;
        let old = present_kv(def, &current)?;
        let mut patched = patch::apply(ty, &old, body).map_err(|e| match e {
            patch::PatchError::Apply(_) => invalid(
                def,
                name,
                vec![FieldError {
                    reason: "FieldValueInvalid",
                    field: String::new(),
                    message: e.to_string(),
                }],
            ),
            other => ApiError::BadRequest(other.to_string()),
        })?;
        if !patched.is_object() {
            return Err(ApiError::BadRequest(
                "the patched object is not a JSON object".into(),
            ));
        }
        let warnings = fieldvalidation::check(def, &mut patched, validation, Decoding::Patch)?;
        // A resourceVersion in the patch is a precondition.
        let patched_rv = meta(&patched, "resourceVersion");
        let has_precondition =
            patched_rv.as_deref() != Some(current.mod_revision.to_string().as_str());
        if has_precondition {
            match patched_rv {
                Some(rv) if !rv.is_empty() => {
                    parse_resource_version(def, name, &rv)?;
                    return Err(conflict(def, name, MODIFIED));
                }
                // Removing resourceVersion through the patch means no precondition.
                _ => {}
            }
        }
        let ownership = Ownership::Update(manager);
        match commit_update(state, def, &current, &old, patched, sub, dry_run, ownership).await? {
            Write::Done(v) => return Ok((v, warnings)),
            Write::Retry => continue,
        }
    }
}

/// The media type of server-side apply.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// A server-side apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The applied configuration, YAML or JSON.
    pub body: &'a [u8],
    pub validation: FieldValidation,
    pub dry_run: bool,
    pub manager: &'a str,
    pub force: bool,
}

/// Server-side apply: creates the object from the configuration or merges
/// the configuration into it, with field ownership and conflicts
/// ([`crate::ssa`]).
pub async fn apply_patch(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: Option<Subresource>,
    req: ApplyRequest<'_>,
) -> ApiResult<(Value, Vec<String>)> {
    let mut config: Value = match serde_json::from_slice(req.body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(req.body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?,
    };
    if !config.is_object() {
        return Err(ApiError::BadRequest(
            "the applied configuration is not an object".into(),
        ));
    }
    check_type_meta(def, &config)?;
    if meta(&config, "name").is_some_and(|n| n != name) {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta(&config, "name").unwrap_or_default()
        )));
    }
    let warnings = fieldvalidation::check(def, &mut config, req.validation, Decoding::Patch)?;
    let api_version = def.api_version();
    let subresource = if sub == Some(Subresource::Status) {
        "status"
    } else {
        ""
    };
    let key = key_of(def, ns, name);
    loop {
        let now = now_rfc3339();
        let manager = ssa::Manager {
            name: req.manager,
            api_version: &api_version,
            subresource,
            now: &now,
        };
        let ignore_status = sub.is_none() && def.has_subresource(Subresource::Status);
        let conflicts = |conflicts: Vec<ssa::Conflict>| ApiError::ApplyConflict {
            resource: GroupResource::of(def),
            name: name.to_string(),
            conflicts: conflicts
                .into_iter()
                .map(|c| (c.manager, c.field))
                .collect(),
        };
        let Some(current) = state.store().get(&key).await? else {
            if sub.is_some() {
                return Err(not_found(def, name));
            }
            let mut obj =
                ssa::apply(None, &config, &manager, req.force, ignore_status).map_err(conflicts)?;
            meta_mut(&mut obj).insert("name".into(), json!(name));
            match create(state, def, ns, obj, req.dry_run, Ownership::Applied).await {
                Err(ApiError::AlreadyExists { .. }) => continue,
                other => return other.map(|v| (v, warnings)),
            }
        };
        let old = present_kv(def, &current)?;
        // A resourceVersion in the configuration is a precondition.
        if let Some(rv) = meta(&config, "resourceVersion").filter(|rv| !rv.is_empty())
            && rv != current.mod_revision.to_string()
        {
            parse_resource_version(def, name, &rv)?;
            return Err(conflict(def, name, MODIFIED));
        }
        let merged = ssa::apply(Some(&old), &config, &manager, req.force, ignore_status)
            .map_err(conflicts)?;
        match commit_update(
            state,
            def,
            &current,
            &old,
            merged,
            sub,
            req.dry_run,
            Ownership::Applied,
        )
        .await?
        {
            Write::Done(v) => return Ok((v, warnings)),
            Write::Retry => continue,
        }
    }
}

pub use crate::deletion::{DeleteOptions, Preconditions};

pub(crate) fn success_status(def: &ResourceDef, name: &str, uid: Option<String>) -> Value {
    let mut details = json!({"name": name, "kind": def.plural});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

/// Kinds whose delete answers with the deleted object, as in Kubernetes.
pub(crate) fn returns_deleted_object(def: &ResourceDef) -> bool {
    def.group.is_empty() && matches!(def.plural, "pods" | "services" | "namespaces")
}

/// Deletes one object: namespaces by their lifecycle ([`crate::namespaces`]),
/// everything else as the generic registry does ([`crate::deletion`]).
/// Returns the HTTP status and the body.
pub async fn delete(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> ApiResult<(StatusCode, Value)> {
    if def.group.is_empty() && def.plural == "namespaces" {
        crate::namespaces::delete(state, def, name, opts, dry_run).await
    } else {
        crate::deletion::delete(state, def, ns, name, opts, dry_run).await
    }
}

async fn delete_collection(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    params: &Params,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let dry_run = params.dry_run()?;
    let selectors = params.selectors(def)?;
    let page = state
        .store()
        .list(&def.key_prefix(ns), ListOptions::default())
        .await?;
    let mut deleted = Vec::new();
    for kv in &page.items {
        let obj = present_kv(def, kv)?;
        if !selectors.matches(&obj) {
            continue;
        }
        let name = meta(&obj, "name").unwrap_or_default();
        let obj_ns = meta(&obj, "namespace");
        if def.group.is_empty()
            && def.plural == "namespaces"
            && SYSTEM_NAMESPACES.contains(&name.as_str())
        {
            continue;
        }
        match delete(state, def, obj_ns.as_deref(), &name, opts, dry_run).await {
            Ok(_) => deleted.push(obj),
            Err(ApiError::NotFound { .. }) => {}
            // Objects changed since the list are skipped, as Kubernetes'
            // DeleteCollection does for failed preconditions.
            Err(ApiError::Conflict { .. }) if opts.preconditions.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": def.list_kind(),
        "apiVersion": def.api_version(),
        "metadata": {"resourceVersion": page.revision.to_string()},
        "items": deleted,
    }))
}

/// The decoded `continue` parameter: Kubernetes' format, base64url of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key after prefix>\u0000"}`.
#[derive(Debug, serde::Serialize, Deserialize, PartialEq, Eq)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(prefix: &str, revision: Revision, last_key: &str) -> String {
    let start = format!("{}\u{0}", last_key.strip_prefix(prefix).unwrap_or(last_key));
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start,
    };
    let bytes = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The revision and the key to continue after.
fn decode_continue(prefix: &str, token: &str) -> ApiResult<(Revision, String)> {
    let bad = || {
        ApiError::BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into())
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || token.rv <= 0 {
        return Err(bad());
    }
    let start = token.start.strip_suffix('\u{0}').unwrap_or(&token.start);
    if start.starts_with('/') || start.split('/').any(|p| p == "..") {
        return Err(bad());
    }
    Ok((token.rv, format!("{prefix}{start}")))
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

pub async fn list(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    params: &Params,
) -> ApiResult<Value> {
    crate::listoptions::validate(params)?;
    let selectors = params.selectors(def)?;
    let prefix = def.key_prefix(ns);
    // `resourceVersion=0`: any recent state will do, so it comes from the
    // watch cache (and, as in Kubernetes, without paging).
    if params.resource_version.as_deref() == Some("0")
        && params.resource_version_match.as_deref() != Some("Exact")
        && params.continue_token.as_deref().is_none_or(str::is_empty)
        && let Ok(cache) = state.watch_caches().get(state.store(), def).await
    {
        let (revision, objects) = cache.snapshot(&prefix, &selectors)?;
        let items = objects
            .iter()
            .map(|o| o.to_value())
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok(json!({
            "kind": def.list_kind(),
            "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
            "items": items,
        }));
    }
    let limit = params.limit.filter(|l| *l > 0).map(|l| l as usize);
    let (mut revision, mut after) = match params.continue_token.as_deref().filter(|t| !t.is_empty())
    {
        Some(token) => {
            let (rv, after) = decode_continue(&prefix, token)?;
            (Some(rv), Some(after))
        }
        None => {
            let exact = params.resource_version_match.as_deref() == Some("Exact");
            let rv = match params.resource_version.as_deref() {
                Some(rv) if exact && !rv.is_empty() => {
                    Some(rv.parse::<Revision>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid resource version: {rv}"))
                    })?)
                }
                _ => None,
            };
            (rv, None)
        }
    };
    let from_continue = after.is_some();
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let opts = ListOptions {
            limit: limit.unwrap_or(0),
            continue_after: after.clone(),
            revision,
        };
        let page = match state.store().list(&prefix, opts).await {
            Ok(p) => p,
            Err(StoreError::Compacted { .. }) if from_continue => {
                return Err(ApiError::Expired(CONTINUE_EXPIRED.into()));
            }
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                return Err(ApiError::Expired(format!(
                    "too old resource version: {requested} ({compacted})"
                )));
            }
            Err(StoreError::FutureRevision { requested, current }) => {
                return Err(ApiError::TooLargeResourceVersion { requested, current });
            }
            Err(e) => return Err(e.into()),
        };
        revision = Some(page.revision);
        let count = page.items.len();
        let mut full = false;
        for (i, kv) in page.items.iter().enumerate() {
            after = Some(kv.key.clone());
            let obj = present_kv(def, kv)?;
            if selectors.matches(&obj) {
                items.push(obj);
            }
            if limit.is_some_and(|l| items.len() >= l) {
                if i + 1 < count || page.more {
                    next = Some(kv.key.clone());
                }
                full = true;
                break;
            }
        }
        if full || !page.more || count == 0 {
            break;
        }
    }
    let revision = revision.unwrap_or(0);
    // NotOlderThan (the default for a non-zero resourceVersion): the
    // snapshot read must not be older than the one asked for.
    if !from_continue
        && params.resource_version_match.as_deref() != Some("Exact")
        && let Some(requested) = params
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        let requested = requested
            .parse::<Revision>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {requested}")))?;
        if requested > revision {
            return Err(ApiError::TooLargeResourceVersion {
                requested,
                current: revision,
            });
        }
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(last) = next {
        metadata["continue"] = json!(encode_continue(&prefix, revision, &last));
    }
    Ok(json!({
        "kind": def.list_kind(),
        "apiVersion": def.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// One watch event before encoding: its type and object.
type WatchEvent = (&'static str, Value);

/// A watch: ADDED for the current state first when no (or `"0"`)
/// resourceVersion is given, then every change, as JSON lines. Served from
/// the watch cache when it covers the starting revision, else straight from
/// the store (which answers 410 for compacted revisions).
async fn watch(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    params: &Params,
    output: Output,
) -> ApiResult<Response> {
    crate::listoptions::validate(params)?;
    let selectors = params.selectors(def)?;
    let prefix = def.key_prefix(ns);
    let timeout = params
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let spec = WatchSpec {
        def,
        prefix,
        selectors,
        output,
        timeout,
        bookmarks: params.allow_watch_bookmarks == Some(true),
    };
    let start = crate::listoptions::watch_start(params)?;
    let cache = match state.watch_caches().get(state.store(), def).await {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::debug!(resource = def.plural, error = %e, "watch served by the store");
            None
        }
    };
    let watching = state
        .metrics()
        .watch_started(def.group, def.version, def.plural);
    if let Some(cache) = cache.clone() {
        let from_cache = match start {
            crate::listoptions::WatchStart::Replay {
                end_bookmark,
                not_older_than,
            } if not_older_than.is_none_or(|rv| rv <= cache.latest()) => {
                let (rev, items) = cache.snapshot(&spec.prefix, &spec.selectors)?;
                Some((rev, items, end_bookmark))
            }
            crate::listoptions::WatchStart::Now => Some((cache.latest(), Vec::new(), false)),
            crate::listoptions::WatchStart::After(rv) if cache.covers(rv) => {
                Some((rv, Vec::new(), false))
            }
            _ => None,
        };
        if let Some((rev, initial, end_bookmark)) = from_cache {
            let (tx, rx) = watch_channel();
            tokio::spawn(async move {
                let _watching = watching;
                watch_cache_loop(spec, cache, rev, initial, end_bookmark, tx).await;
            });
            return Ok(watch_response(rx));
        }
    }
    let store = state.store().clone();
    let mut initial = Vec::new();
    let mut end_bookmark = false;
    let start = match start {
        crate::listoptions::WatchStart::Replay {
            end_bookmark: end,
            not_older_than,
        } => {
            end_bookmark = end;
            let page = store.list(&spec.prefix, ListOptions::default()).await?;
            if let Some(requested) = not_older_than.filter(|rv| *rv > page.revision) {
                return Err(ApiError::TooLargeResourceVersion {
                    requested,
                    current: page.revision,
                });
            }
            for kv in &page.items {
                let obj = present_kv(def, kv)?;
                if spec.selectors.matches(&obj) {
                    initial.push(("ADDED", obj));
                }
            }
            page.revision
        }
        crate::listoptions::WatchStart::Now => store.current_revision().await?,
        crate::listoptions::WatchStart::After(rv) => rv,
    };
    let (tx, rx) = watch_channel();
    // Opening the store watch before answering lets a compacted revision
    // still be reported inside a 200 stream, as Kubernetes does.
    let opened = store.watch(&spec.prefix, start).await;
    tokio::spawn(async move {
        let _watching = watching;
        let ends = tokio::time::Instant::now() + spec.timeout;
        let deadline = tokio::time::sleep_until(ends);
        tokio::pin!(deadline);
        let mut encoder = WatchEncoder::new(def, spec.output);
        for (kind, obj) in initial {
            if tx.send(Ok(encoder.encode(kind, obj))).await.is_err() {
                return;
            }
        }
        if end_bookmark
            && tx
                .send(Ok(encoder.encode("BOOKMARK", spec.bookmark(start, true))))
                .await
                .is_err()
        {
            return;
        }
        // Every change up to `seen` has been delivered (or filtered out).
        let mut seen = start;
        let mut sent_since_tick = false;
        let mut ticks = bookmark_ticks();
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Ok(encoder.encode("ERROR", watch_error(e)))).await;
                return;
            }
        };
        loop {
            // Caught up with the cache's window (a watcher that fell out of
            // it and came back from an older revision, once it has read
            // that far): the rest comes from the cache, where an event is
            // presented once for every watcher instead of parsed twice for
            // this one.
            if let Some(cache) = cache.as_ref().filter(|c| c.covers(seen)) {
                let mut spec = spec;
                spec.timeout = ends.saturating_duration_since(tokio::time::Instant::now());
                drop(stream);
                watch_cache_loop(spec, cache.clone(), seen, Vec::new(), false, tx).await;
                return;
            }
            let next = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticks.tick(), if spec.bookmarks => {
                    if !sent_since_tick
                        && tx
                            .send(Ok(encoder.encode("BOOKMARK", spec.bookmark(seen, false))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    sent_since_tick = false;
                    continue;
                }
                next = stream.next() => next,
            };
            let event = match next {
                None => return,
                Some(Err(e)) => {
                    let _ = tx.send(Ok(encoder.encode("ERROR", watch_error(e)))).await;
                    return;
                }
                Some(Ok(ev)) => ev,
            };
            seen = seen.max(event.revision);
            let lines = match translate(def, &spec.selectors, &event) {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = tx.send(Ok(encoder.encode("ERROR", e.status()))).await;
                    return;
                }
            };
            for (kind, obj) in lines {
                sent_since_tick = true;
                if tx.send(Ok(encoder.encode(kind, obj))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(watch_response(rx))
}

/// What one watch asked for.
struct WatchSpec {
    def: &'static ResourceDef,
    prefix: String,
    selectors: Selectors,
    output: Output,
    timeout: Duration,
    bookmarks: bool,
}

impl WatchSpec {
    fn bookmark(&self, rv: Revision, end: bool) -> Value {
        let mut obj = json!({
            "kind": self.def.kind,
            "apiVersion": self.def.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        });
        if end {
            obj["metadata"]["annotations"] =
                json!({crate::listoptions::INITIAL_EVENTS_END: "true"});
        }
        obj
    }
}

type WatchTx = tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>;
type WatchRx = tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>;

fn watch_channel() -> (WatchTx, WatchRx) {
    tokio::sync::mpsc::channel(64)
}

fn bookmark_ticks() -> tokio::time::Interval {
    tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_INTERVAL,
        BOOKMARK_INTERVAL,
    )
}

fn watch_response(rx: WatchRx) -> Response {
    let body = Body::from_stream(watch_body(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| ApiError::Internal("building watch response".into()).into_response())
}

/// A watcher of the watch cache: a cursor into its event window. Ends when
/// the client goes, the timeout passes, or the cursor falls out of the
/// window (the client then re-watches from its last revision).
async fn watch_cache_loop(
    spec: WatchSpec,
    cache: std::sync::Arc<crate::watchcache::ResourceCache>,
    start: Revision,
    initial: Vec<std::sync::Arc<crate::watchcache::CachedObject>>,
    end_bookmark: bool,
    tx: WatchTx,
) {
    use crate::watchcache::Read;
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut encoder = WatchEncoder::new(spec.def, spec.output);
    let mut progress = cache.subscribe();
    for obj in initial {
        let line = match encoder.encode_cached("ADDED", &obj) {
            Ok(line) => line,
            Err(e) => encoder.encode("ERROR", e.status()),
        };
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    if end_bookmark
        && tx
            .send(Ok(encoder.encode("BOOKMARK", spec.bookmark(start, true))))
            .await
            .is_err()
    {
        return;
    }
    let mut cursor = start;
    let mut sent_since_tick = false;
    let mut ticks = bookmark_ticks();
    loop {
        match cache.read_after(cursor) {
            Read::Events(events) => {
                for event in events {
                    cursor = event.revision;
                    let Some((kind, obj)) = event.for_watcher(&spec.prefix, &spec.selectors) else {
                        continue;
                    };
                    let line = match encoder.encode_cached(kind, obj) {
                        Ok(line) => line,
                        Err(e) => {
                            let _ = tx.send(Ok(encoder.encode("ERROR", e.status()))).await;
                            return;
                        }
                    };
                    sent_since_tick = true;
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
            Read::TooOld | Read::Failed => return,
        }
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = ticks.tick(), if spec.bookmarks => {
                if !sent_since_tick
                    && tx
                        .send(Ok(encoder.encode("BOOKMARK", spec.bookmark(cursor, false))))
                        .await
                        .is_err()
                {
                    return;
                }
                sent_since_tick = false;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// A watch response sends the events already queued as one body chunk, up
/// to this many bytes.
const WATCH_CHUNK: usize = 64 * 1024;

/// The body of a watch response: each chunk is the next event plus those
/// queued behind it (the lines are self-delimiting, so clients do not see
/// chunk boundaries). Under load a watcher falls a few events behind, and
/// one chunk for all of them is one HTTP chunk, one TLS record and one
/// write instead of one each per event: at 5,000 nodes these writes were
/// a sixth of the server's CPU. A lone event still goes out at once.
fn watch_body(mut rx: WatchRx) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures::stream::poll_fn(move |cx| {
        let first = match rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(Ok(line))) => line,
            other => return other,
        };
        // Copied into a buffer only when a second event is waiting.
        if first.len() >= WATCH_CHUNK {
            return std::task::Poll::Ready(Some(Ok(first)));
        }
        let Ok(Ok(second)) = rx.try_recv() else {
            return std::task::Poll::Ready(Some(Ok(first)));
        };
        let mut chunk = bytes::BytesMut::from(&first[..]);
        chunk.extend_from_slice(&second);
        while chunk.len() < WATCH_CHUNK {
            let Ok(Ok(next)) = rx.try_recv() else {
                break;
            };
            chunk.extend_from_slice(&next);
        }
        std::task::Poll::Ready(Some(Ok(chunk.freeze())))
    })
}

fn watch_error(e: StoreError) -> Value {
    let err = match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::Expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => {
            ApiError::TooLargeResourceVersion { requested, current }
        }
        other => ApiError::Internal(other.to_string()),
    };
    err.status()
}

/// The watch events one store event means for a watcher with `selectors`:
/// an object that starts or stops matching is ADDED or DELETED for it.
fn translate(
    def: &ResourceDef,
    selectors: &Selectors,
    event: &skiff_store::Event,
) -> ApiResult<Vec<WatchEvent>> {
    let current = match &event.current {
        Some(kv) => Some(present_kv(def, kv)?),
        None => None,
    };
    let prev = match &event.prev {
        Some(kv) => Some(present(def, &kv.value, event.revision)?),
        None => None,
    };
    let now = current.as_ref().is_some_and(|o| selectors.matches(o));
    let before = prev.as_ref().is_some_and(|o| selectors.matches(o));
    let out = match (event.kind, current, prev) {
        (EventKind::Create, Some(obj), _) if now => Some(("ADDED", obj)),
        (EventKind::Update, Some(obj), _) if now && before => Some(("MODIFIED", obj)),
        (EventKind::Update, Some(obj), _) if now => Some(("ADDED", obj)),
        (EventKind::Update, Some(obj), _) if before => Some(("DELETED", obj)),
        (EventKind::Delete, _, Some(obj)) if before => Some(("DELETED", obj)),
        _ => None,
    };
    Ok(out.into_iter().collect())
}

/// Creates the system namespaces that are missing.
pub async fn ensure_system_namespaces(state: &AppState) -> ApiResult<()> {
    let def = namespaces_def();
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match create(
            state,
            def,
            None,
            obj,
            false,
            Ownership::Update("skiff-apiserver"),
        )
        .await
        {
            Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    label_namespaces(state).await
}

/// Gives every namespace stored without its name label (written before the
/// API server set it) the label, by writing it back unchanged: an update
/// adds it (see `namespaces::prepare_update`).
async fn label_namespaces(state: &AppState) -> ApiResult<()> {
    let def = namespaces_def();
    let all = list(state, def, None, &Params::default()).await?;
    let items = all
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for ns in items {
        if ns
            .pointer("/metadata/labels")
            .and_then(|l| l.get(crate::namespaces::NAME_LABEL))
            .is_some()
        {
            continue;
        }
        let Some(name) = meta(&ns, "name") else {
            continue;
        };
        match update(state, def, None, &name, None, ns, false, "skiff-apiserver").await {
            Ok(_) => tracing::info!(namespace = %name, "labelled namespace with its name"),
            // Someone else wrote it meanwhile, which labelled it too.
            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_watch_body_sends_queued_events_together_and_a_lone_one_at_once() {
        use futures::StreamExt;
        let (tx, rx) = watch_channel();
        let mut body = Box::pin(watch_body(rx));
        for line in ["{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}\n"] {
            tx.send(Ok(Bytes::from(line))).await.unwrap();
        }
        let chunk = body.next().await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        tx.send(Ok(Bytes::from_static(b"{\"d\":4}\n")))
            .await
            .unwrap();
        let chunk = body.next().await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"{\"d\":4}\n");
        // A chunk stops growing at WATCH_CHUNK; the rest follows.
        let big = Bytes::from(vec![b'x'; WATCH_CHUNK / 2 + 1]);
        for _ in 0..3 {
            tx.send(Ok(big.clone())).await.unwrap();
        }
        drop(tx);
        let sizes: Vec<usize> = body.map(|c| c.unwrap().len()).collect().await;
        assert_eq!(sizes, [2 * big.len(), big.len()]);
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let secrets = resources::find("", "v1", "secrets").expect("secrets");
        let configmaps = resources::find("", "v1", "configmaps").expect("configmaps");
        let mut obj = json!({"data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "pw": "s3cret"}});
        fold_string_data(secrets, &mut obj);
        assert_eq!(
            obj,
            json!({"data": {"a": "bmV3", "keep": "eA==", "pw": "czNjcmV0"}})
        );
        let mut obj = json!({"stringData": {"pw": "x"}});
        fold_string_data(secrets, &mut obj);
        assert_eq!(obj, json!({"data": {"pw": "eA=="}}));
        // Not a map of strings: left for validation to reject.
        let mut bad = json!({"stringData": {"pw": 1}});
        fold_string_data(secrets, &mut bad);
        assert_eq!(bad, json!({"stringData": {"pw": 1}}));
        // Other kinds are untouched.
        let mut cm = json!({"stringData": {"a": "b"}});
        fold_string_data(configmaps, &mut cm);
        assert_eq!(cm, json!({"stringData": {"a": "b"}}));
    }

    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_tampering() {
        let prefix = "/registry/core/pods/";
        let token = encode_continue(prefix, 42, "/registry/core/pods/ns/b");
        assert_eq!(
            decode_continue(prefix, &token).ok(),
            Some((42, "/registry/core/pods/ns/b".into()))
        );
        let bad: Vec<(&str, String)> = vec![
            ("not base64", "!!!".into()),
            (
                "not json",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x"),
            ),
            (
                "path traversal",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(r#"{"v":"meta.k8s.io/v1","rv":3,"start":"../secrets/x\u0000"}"#),
            ),
            (
                "zero revision",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(r#"{"v":"meta.k8s.io/v1","rv":0,"start":"a\u0000"}"#),
            ),
        ];
        for (name, token) in bad {
            assert!(decode_continue(prefix, &token).is_err(), "{name}");
        }
    }

    #[test]
    fn generated_names_keep_the_base_and_add_five_characters() {
        let name = generate_name("web-");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert!(
            validation::validate_name(crate::resources::NameRule::Subdomain, &name, "n").is_empty()
        );
    }

    #[test]
    fn pods_get_their_qos_class() {
        let pod = |resources: &[Value]| json!({"spec": {"containers": resources.iter().map(|r| json!({"name": "c", "resources": r})).collect::<Vec<_>>()}});
        let full = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
        let cases = [
            ("no resources", pod(&[json!({})]), "BestEffort"),
            (
                "limits only",
                pod(std::slice::from_ref(&full)),
                "Guaranteed",
            ),
            (
                "requests equal limits",
                pod(&[
                    json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}),
                ]),
                "Guaranteed",
            ),
            (
                "requests below limits",
                pod(&[
                    json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}),
                ]),
                "Burstable",
            ),
            (
                "one container without",
                pod(&[full, json!({})]),
                "Burstable",
            ),
            (
                "cpu request only",
                pod(&[json!({"requests": {"cpu": "1"}})]),
                "Burstable",
            ),
        ];
        for (name, pod, want) in cases {
            assert_eq!(qos_class(&pod), want, "{name}");
        }
    }

    #[test]
    fn timestamps_have_second_precision_in_utc() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), "2024-01-01T00:00:00Z".len(), "{ts}");
        assert!(ts.ends_with('Z'), "{ts}");
    }
}
