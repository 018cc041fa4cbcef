//! The router called directly (`tower::ServiceExt::oneshot`, no socket) over
//! the embedded store: the HTTP-level behaviour kubectl does not show.

use std::sync::Arc;

use anyhow::{Context, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use skiff_apiserver::{AppState, app};
use skiff_store::{Store, StoreConfig};
use tower::ServiceExt;

const TOKEN: &str = "router-test-token";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    app: axum::Router,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let store = skiff_store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await?;
    let state = AppState::new(store.clone(), Some(TOKEN.into()), "127.0.0.1:6443".into());
    skiff_apiserver::registry::ensure_system_namespaces(&state).await?;
    Ok(Fixture {
        _dir: dir,
        store,
        app: app(state),
    })
}

/// Sends a request with the bearer token; returns status, content type and body.
async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, String, Vec<u8>)> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.clone().oneshot(req.body(Body::from(body))?).await?;
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((status, ct, bytes.to_vec()))
}

const AUTH: (&str, &str) = ("authorization", "Bearer router-test-token");
const JSON_CT: (&str, &str) = ("content-type", "application/json");

async fn call_json(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let body = body
        .map(|b| serde_json::to_vec(&b))
        .transpose()?
        .unwrap_or_default();
    let (status, _, bytes) = call(app, method, uri, &[AUTH, JSON_CT], body).await?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| String::from_utf8_lossy(&bytes).to_string())?;
    Ok((status, value))
}

fn configmap(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

#[tokio::test]
async fn unauthenticated_requests_get_a_401_status_except_open_paths() -> anyhow::Result<()> {
    let f = fixture().await?;
    let (status, _, body) = call(&f.app, "GET", "/api/v1/namespaces", &[], vec![]).await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body)?;
    ensure!(
        body == json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
        "{body}"
    );
    let (status, _, _) = call(
        &f.app,
        "GET",
        "/api/v1/namespaces",
        &[("authorization", "Bearer nope")],
        vec![],
    )
    .await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (status, _, _) = call(&f.app, "GET", path, &[], vec![]).await?;
        ensure!(status == StatusCode::OK, "{path}: {status}");
    }
    Ok(())
}

#[tokio::test]
async fn aggregated_discovery_is_served_only_when_asked_for() -> anyhow::Result<()> {
    let f = fixture().await?;
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let (status, ct, body) =
        call(&f.app, "GET", "/apis", &[AUTH, ("accept", accept)], vec![]).await?;
    ensure!(status == StatusCode::OK);
    ensure!(
        ct == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        "{ct}"
    );
    let doc: Value = serde_json::from_slice(&body)?;
    ensure!(
        doc["kind"] == "APIGroupDiscoveryList" && doc["apiVersion"] == "apidiscovery.k8s.io/v2",
        "{doc}"
    );
    ensure!(
        doc["items"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["metadata"]["name"] == "apps")),
        "{doc}"
    );

    let (status, ct, body) = call(
        &f.app,
        "GET",
        "/apis",
        &[AUTH, ("accept", "application/json")],
        vec![],
    )
    .await?;
    ensure!(status == StatusCode::OK && ct == "application/json", "{ct}");
    let doc: Value = serde_json::from_slice(&body)?;
    ensure!(doc["kind"] == "APIGroupList", "{doc}");
    let (status, doc) = call_json(&f.app, "GET", "/api/v1", None).await?;
    ensure!(
        status == StatusCode::OK && doc["kind"] == "APIResourceList",
        "{doc}"
    );
    let (status, doc) = call_json(&f.app, "GET", "/no/such/path", None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND && doc["reason"] == "NotFound",
        "{doc}"
    );
    Ok(())
}

#[tokio::test]
async fn bodies_over_three_mebibytes_are_rejected_and_not_stored() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut obj = configmap("big", json!({}));
    obj["data"]["k"] = json!("x".repeat(3 * 1024 * 1024 + 1));
    let (status, doc) = call_json(
        &f.app,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(obj),
    )
    .await?;
    ensure!(
        status == StatusCode::PAYLOAD_TOO_LARGE && doc["reason"] == "RequestEntityTooLarge",
        "{doc}"
    );
    let (status, _) = call_json(
        &f.app,
        "GET",
        "/api/v1/namespaces/default/configmaps/big",
        None,
    )
    .await?;
    ensure!(status == StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn errors_are_statuses_with_kubernetes_reasons_and_messages() -> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    // (name, method, uri, body, code, reason, message)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<Value>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "missing namespace",
            "POST",
            "/api/v1/namespaces/nowhere/configmaps".into(),
            Some(configmap("a", json!({}))),
            404,
            "NotFound",
            r#"namespaces "nowhere" not found"#,
        ),
        (
            "created",
            "POST",
            cms.into(),
            Some(configmap("a", json!({}))),
            201,
            "",
            "",
        ),
        (
            "already exists",
            "POST",
            cms.into(),
            Some(configmap("a", json!({}))),
            409,
            "AlreadyExists",
            r#"configmaps "a" already exists"#,
        ),
        (
            "wrong kind",
            "POST",
            cms.into(),
            Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}})),
            400,
            "BadRequest",
            "the kind in the data (Secret) does not match the expected kind (ConfigMap)",
        ),
        (
            "not found",
            "GET",
            format!("{cms}/zzz"),
            None,
            404,
            "NotFound",
            r#"configmaps "zzz" not found"#,
        ),
        (
            "grouped not found",
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web".into(),
            None,
            404,
            "NotFound",
            r#"deployments.apps "web" not found"#,
        ),
        (
            "stale update",
            "PUT",
            format!("{cms}/a"),
            Some({
                let mut o = configmap("a", json!({}));
                o["metadata"]["resourceVersion"] = json!("1");
                o
            }),
            409,
            "Conflict",
            r#"Operation cannot be fulfilled on configmaps "a": the object has been modified; please apply your changes to the latest version and try again"#,
        ),
        (
            "invalid label",
            "POST",
            cms.into(),
            Some(configmap("c", json!({"k": "-bad"}))),
            422,
            "Invalid",
            "",
        ),
        (
            "bad selector",
            "GET",
            format!("{cms}?labelSelector=a%20in%20b"),
            None,
            400,
            "BadRequest",
            "unable to parse requirement: a in b",
        ),
        (
            "unsupported field selector",
            "GET",
            format!("{cms}?fieldSelector=spec.nodeName%3Dx"),
            None,
            400,
            "BadRequest",
            "unable to parse requirement: field label not supported: spec.nodeName",
        ),
        (
            "unknown resource",
            "GET",
            "/api/v1/namespaces/default/widgets".into(),
            None,
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
        (
            "unsupported patch type",
            "PATCH",
            format!("{cms}/a"),
            Some(json!({})),
            415,
            "UnsupportedMediaType",
            "",
        ),
        (
            "system namespace",
            "DELETE",
            "/api/v1/namespaces/default".into(),
            None,
            403,
            "Forbidden",
            r#"namespaces "default" is forbidden: this namespace may not be deleted"#,
        ),
    ];
    for (name, method, uri, body, code, reason, message) in cases {
        let (status, doc) = call_json(&f.app, method, &uri, body).await?;
        ensure!(status.as_u16() == code, "{name}: {status} {doc}");
        if code >= 400 {
            ensure!(
                doc["kind"] == "Status" && doc["code"] == code && doc["reason"] == reason,
                "{name}: {doc}"
            );
            ensure!(
                message.is_empty() || doc["message"] == message,
                "{name}: {doc}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn paginated_list_with_selector_returns_every_match_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    for i in 0..7 {
        let labels = if i % 2 == 0 {
            json!({"even": "yes"})
        } else {
            json!({})
        };
        let (status, _) = call_json(
            &f.app,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(configmap(&format!("c{i}"), labels)),
        )
        .await?;
        ensure!(status == StatusCode::CREATED);
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut revisions = Vec::new();
    for _ in 0..10 {
        let mut uri = "/api/v1/configmaps?limit=2&labelSelector=even".to_string();
        if let Some(t) = &token {
            uri.push_str(&format!("&continue={t}"));
        }
        let (status, list) = call_json(&f.app, "GET", &uri, None).await?;
        ensure!(
            status == StatusCode::OK && list["kind"] == "ConfigMapList",
            "{list}"
        );
        revisions.push(list["metadata"]["resourceVersion"].clone());
        for item in list["items"].as_array().context("items")? {
            names.push(
                item["metadata"]["name"]
                    .as_str()
                    .context("name")?
                    .to_string(),
            );
        }
        // A write between pages does not show up: the list is a snapshot.
        call_json(
            &f.app,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(configmap(
                &format!("late{}", names.len()),
                json!({"even": "yes"}),
            )),
        )
        .await?;
        token = list["metadata"]["continue"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    ensure!(names == ["c0", "c2", "c4", "c6"], "{names:?}");
    ensure!(
        revisions.windows(2).all(|w| w[0] == w[1]),
        "one snapshot: {revisions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn watch_streams_initial_state_then_changes_and_410_when_compacted() -> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, created) = call_json(
        &f.app,
        "POST",
        cms,
        Some(configmap("w1", json!({"app": "x"}))),
    )
    .await?;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    let (_, _, _) = call(
        &f.app,
        "PATCH",
        &format!("{cms}/w1"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"metadata":{"labels":{"app":"y"}}}"#.to_vec(),
    )
    .await?;
    call_json(&f.app, "DELETE", &format!("{cms}/w1"), None).await?;

    // From the create's revision: the label change takes it out of the
    // selection (DELETED), the delete is then not shown again.
    let (status, _, body) = call(
        &f.app,
        "GET",
        &format!("{cms}?watch=1&resourceVersion={rv}&timeoutSeconds=1&labelSelector=app%3Dx"),
        &[AUTH],
        vec![],
    )
    .await?;
    ensure!(status == StatusCode::OK);
    let events: Vec<Value> = String::from_utf8(body)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    ensure!(types == ["DELETED"], "{events:?}");

    // Without a resourceVersion: the current state as ADDED first.
    call_json(&f.app, "POST", cms, Some(configmap("w2", json!({})))).await?;
    let (_, _, body) = call(
        &f.app,
        "GET",
        &format!("{cms}?watch=true&timeoutSeconds=1"),
        &[AUTH],
        vec![],
    )
    .await?;
    let events: Vec<Value> = String::from_utf8(body)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        events.len() == 1
            && events[0]["type"] == "ADDED"
            && events[0]["object"]["metadata"]["name"] == "w2",
        "{events:?}"
    );

    let current = f.store.current_revision().await?;
    f.store.compact(current).await?;
    let (status, _, body) = call(
        &f.app,
        "GET",
        &format!("{cms}?watch=1&resourceVersion=1&timeoutSeconds=1"),
        &[AUTH],
        vec![],
    )
    .await?;
    ensure!(status == StatusCode::OK);
    let event: Value =
        serde_json::from_slice(body.split(|b| *b == b'\n').next().context("event")?)?;
    ensure!(
        event["type"] == "ERROR"
            && event["object"]["code"] == 410
            && event["object"]["reason"] == "Expired",
        "{event}"
    );
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() -> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let mut obj = configmap("fin", json!({}));
    obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
    call_json(&f.app, "POST", cms, Some(obj)).await?;
    let (status, doc) = call_json(&f.app, "DELETE", &format!("{cms}/fin"), None).await?;
    ensure!(
        status == StatusCode::OK && doc["metadata"]["deletionTimestamp"].is_string(),
        "{doc}"
    );
    let (status, _) = call_json(&f.app, "GET", &format!("{cms}/fin"), None).await?;
    ensure!(status == StatusCode::OK, "still there while finalized");
    let (status, _, body) = call(
        &f.app,
        "PATCH",
        &format!("{cms}/fin"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"metadata":{"finalizers":null}}"#.to_vec(),
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = call_json(&f.app, "GET", &format!("{cms}/fin"), None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "gone once the last finalizer is removed"
    );
    Ok(())
}

/// Sends a request with the bearer token and returns the whole response.
async fn raw(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<axum::response::Response> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(AUTH.0, AUTH.1);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(app.clone().oneshot(req.body(Body::from(body))?).await?)
}

#[tokio::test]
async fn openapi_v3_documents_are_cached_by_hash_and_v2_refuses_protobuf() -> anyhow::Result<()> {
    let f = fixture().await?;
    let (status, index) = call_json(&f.app, "GET", "/openapi/v3", None).await?;
    ensure!(status == StatusCode::OK, "{index}");
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .context("apps/v1 in the index")?
        .to_string();
    let hash = url.split("hash=").nth(1).context("hash")?.to_string();

    let resp = raw(&f.app, "GET", &url, &[], vec![]).await?;
    ensure!(resp.status() == StatusCode::OK);
    let h = resp.headers();
    ensure!(h[header::CACHE_CONTROL] == "public, immutable", "{h:?}");
    ensure!(h.contains_key(header::EXPIRES), "{h:?}");
    ensure!(h[header::ETAG] == format!("\"{hash}\"").as_str(), "{h:?}");
    let doc: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await?)?;
    ensure!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"]
            [0]["kind"]
            == "Deployment"
    );

    // Without a hash: revalidated by ETag.
    let resp = raw(&f.app, "GET", "/openapi/v3/apis/apps/v1", &[], vec![]).await?;
    ensure!(resp.headers()[header::CACHE_CONTROL] == "no-cache, private");
    let etag = format!("\"{hash}\"");
    let resp = raw(
        &f.app,
        "GET",
        "/openapi/v3/apis/apps/v1",
        &[("if-none-match", &etag)],
        vec![],
    )
    .await?;
    ensure!(resp.status() == StatusCode::NOT_MODIFIED);
    // A stale hash is redirected to the current one.
    let resp = raw(
        &f.app,
        "GET",
        "/openapi/v3/apis/apps/v1?hash=0BAD",
        &[],
        vec![],
    )
    .await?;
    ensure!(resp.status() == StatusCode::MOVED_PERMANENTLY);
    ensure!(resp.headers()[header::LOCATION] == url.as_str());
    let resp = raw(&f.app, "GET", "/openapi/v3/apis/nope/v1", &[], vec![]).await?;
    ensure!(resp.status() == StatusCode::NOT_FOUND);

    // v2: JSON, or 406 for a protobuf-only Accept (client-go then falls back).
    let pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let resp = raw(&f.app, "GET", "/openapi/v2", &[("accept", pb)], vec![]).await?;
    ensure!(resp.status() == StatusCode::NOT_ACCEPTABLE);
    let (status, v2) = call_json(&f.app, "GET", "/openapi/v2", None).await?;
    ensure!(status == StatusCode::OK && v2["swagger"] == "2.0");
    ensure!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    Ok(())
}

#[tokio::test]
async fn strict_patches_with_unknown_fields_are_rejected_and_store_nothing() -> anyhow::Result<()> {
    let f = fixture().await?;
    let (status, _) = call_json(
        &f.app,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(configmap("c", json!({}))),
    )
    .await?;
    ensure!(status == StatusCode::CREATED);
    let patch = br#"{"data":{"k":"2"},"bogus":{"x":1}}"#.to_vec();
    let merge = ("content-type", "application/merge-patch+json");
    let uri = "/api/v1/namespaces/default/configmaps/c";
    let (status, _, body) = call(
        &f.app,
        "PATCH",
        &format!("{uri}?fieldValidation=Strict"),
        &[AUTH, merge],
        patch.clone(),
    )
    .await?;
    let status_obj: Value = serde_json::from_slice(&body)?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status_obj}");
    ensure!(
        status_obj["message"]
            == r#"strict decoding error: unknown field "bogus", unknown field "bogus.x""#
            || status_obj["message"] == r#"strict decoding error: unknown field "bogus""#,
        "{status_obj}"
    );
    let (_, cm) = call_json(&f.app, "GET", uri, None).await?;
    ensure!(cm["data"]["k"] == "v", "{cm}");

    let resp = raw(&f.app, "PATCH", uri, &[merge], patch).await?;
    ensure!(resp.status() == StatusCode::OK);
    let warnings: Vec<&str> = resp
        .headers()
        .get_all(header::WARNING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    ensure!(
        warnings == [r#"299 - "unknown field \"bogus\"""#],
        "{warnings:?}"
    );
    let (_, cm) = call_json(&f.app, "GET", uri, None).await?;
    ensure!(cm["data"]["k"] == "2" && cm.get("bogus").is_none(), "{cm}");

    let (status, body) = call_json(
        &f.app,
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldValidation=strict",
        Some(configmap("d", json!({}))),
    )
    .await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{body}");
    Ok(())
}
