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

fn pod(name: &str, node: Option<&str>, labels: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if let Some(node) = node {
        p["spec"]["nodeName"] = json!(node);
    }
    p
}

/// Sets a pod's phase and Ready condition through `pods/status`.
async fn set_running(app: &axum::Router, name: &str) -> anyhow::Result<()> {
    let (status, body) = call(
        app,
        "PATCH",
        &format!("/api/v1/namespaces/default/pods/{name}/status"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#
            .to_vec(),
    )
    .await
    .map(|(s, _, b)| (s, b))?;
    ensure!(
        status == StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

#[tokio::test]
async fn binding_assigns_a_node_once_and_marks_the_pod_scheduled() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pods = "/api/v1/namespaces/default/pods";
    call_json(&f.app, "POST", pods, Some(pod("p", None, json!({})))).await?;
    let binding = |name: &str, node: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/p/binding"),
        Some(binding("p", "n1")),
    )
    .await?;
    ensure!(
        status == StatusCode::CREATED
            && doc
                == json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        "{status} {doc}"
    );
    let (_, p) = call_json(&f.app, "GET", &format!("{pods}/p"), None).await?;
    ensure!(p["spec"]["nodeName"] == "n1", "{p}");
    let conditions = p["status"]["conditions"].as_array().context("conditions")?;
    ensure!(
        conditions.iter().any(|c| c["type"] == "PodScheduled"
            && c["status"] == "True"
            && c["lastTransitionTime"].is_string()),
        "{p}"
    );

    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/p/binding"),
        Some(binding("p", "n2")),
    )
    .await?;
    ensure!(
        status == StatusCode::CONFLICT
            && doc["reason"] == "Conflict"
            && doc["message"]
                == r#"Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "n1""#,
        "{doc}"
    );
    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/p/binding"),
        Some(binding("other", "n2")),
    )
    .await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{doc}");

    // The `bindings` collection takes the pod's name from the body.
    call_json(&f.app, "POST", pods, Some(pod("q", None, json!({})))).await?;
    let (status, doc) = call_json(
        &f.app,
        "POST",
        "/api/v1/namespaces/default/bindings",
        Some(binding("q", "n2")),
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "{doc}");
    let (_, q) = call_json(&f.app, "GET", &format!("{pods}/q"), None).await?;
    ensure!(q["spec"]["nodeName"] == "n2", "{q}");
    let (status, doc) = call_json(
        &f.app,
        "POST",
        "/api/v1/namespaces/default/bindings",
        Some(binding("missing", "n2")),
    )
    .await?;
    ensure!(status == StatusCode::NOT_FOUND, "{doc}");

    let (_, discovery) = call_json(&f.app, "GET", "/api/v1", None).await?;
    let resources = discovery["resources"].as_array().context("resources")?;
    for (name, verbs) in [
        ("pods/binding", json!(["create"])),
        ("pods/eviction", json!(["create"])),
        ("bindings", json!(["create"])),
        ("namespaces/finalize", json!(["update"])),
        ("namespaces/status", json!(["get", "patch", "update"])),
    ] {
        ensure!(
            resources
                .iter()
                .any(|r| r["name"] == name && r["verbs"] == verbs),
            "{name} missing in {discovery}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn eviction_deletes_within_the_disruption_budget_and_429s_beyond_it() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pods = "/api/v1/namespaces/default/pods";
    for name in ["a", "b"] {
        call_json(
            &f.app,
            "POST",
            pods,
            Some(pod(name, Some("n1"), json!({"app": "web"}))),
        )
        .await?;
        set_running(&f.app, name).await?;
    }
    let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
    call_json(&f.app, "POST", pdbs, Some(pdb)).await?;
    let (status, _, body) = call(
        &f.app,
        "PATCH",
        &format!("{pdbs}/web/status"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"status":{"observedGeneration":1,"disruptionsAllowed":1,"currentHealthy":2,"desiredHealthy":1,"expectedPods":2}}"#.to_vec(),
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );

    let eviction = |name: &str, grace: Option<i64>| {
        let mut e = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}});
        if let Some(g) = grace {
            e["deleteOptions"] = json!({"gracePeriodSeconds": g});
        }
        e
    };
    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/a/eviction"),
        Some(eviction("a", None)),
    )
    .await?;
    ensure!(
        status == StatusCode::CREATED && doc["status"] == "Success",
        "{doc}"
    );
    // Scheduled: it terminates with its grace period, marked as disrupted.
    let (status, a) = call_json(&f.app, "GET", &format!("{pods}/a"), None).await?;
    ensure!(
        status == StatusCode::OK
            && a["metadata"]["deletionGracePeriodSeconds"] == 30
            && a["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "DisruptionTarget" && c["reason"] == "EvictionByEvictionAPI"
                })
            }),
        "{a}"
    );
    let (_, budget) = call_json(&f.app, "GET", &format!("{pdbs}/web"), None).await?;
    ensure!(
        budget["status"]["disruptionsAllowed"] == 0
            && budget["status"]["disruptedPods"]["a"].is_string(),
        "{budget}"
    );

    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/b/eviction"),
        Some(eviction("b", Some(0))),
    )
    .await?;
    ensure!(
        status == StatusCode::TOO_MANY_REQUESTS
            && doc["reason"] == "TooManyRequests"
            && doc["message"]
                == "Cannot evict pod as it would violate the pod's disruption budget."
            && doc["details"]["causes"][0]["reason"] == "DisruptionBudget",
        "{doc}"
    );
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/b"), None).await?;
    ensure!(status == StatusCode::OK, "b stays");

    // A budget with room again: grace 0 removes it at once.
    call(
        &f.app,
        "PATCH",
        &format!("{pdbs}/web/status"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"status":{"disruptionsAllowed":1}}"#.to_vec(),
    )
    .await?;
    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/b/eviction"),
        Some(eviction("b", Some(0))),
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "{doc}");
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/b"), None).await?;
    ensure!(status == StatusCode::NOT_FOUND, "b evicted");

    // A pending pod is not guarded by the budget.
    call_json(
        &f.app,
        "POST",
        pods,
        Some(pod("c", None, json!({"app": "web"}))),
    )
    .await?;
    let (status, doc) = call_json(
        &f.app,
        "POST",
        &format!("{pods}/c/eviction"),
        Some(eviction("c", None)),
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "{doc}");
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/c"), None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "unscheduled pod goes at once"
    );
    Ok(())
}

#[tokio::test]
async fn scheduled_pods_terminate_gracefully_until_deleted_with_grace_zero() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pods = "/api/v1/namespaces/default/pods";
    call_json(&f.app, "POST", pods, Some(pod("u", None, json!({})))).await?;
    let (status, doc) = call_json(&f.app, "DELETE", &format!("{pods}/u"), None).await?;
    ensure!(status == StatusCode::OK && doc["kind"] == "Pod", "{doc}");
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/u"), None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "unscheduled pod removed at once"
    );

    call_json(&f.app, "POST", pods, Some(pod("s", Some("n1"), json!({})))).await?;
    let (status, doc) = call_json(&f.app, "DELETE", &format!("{pods}/s"), None).await?;
    ensure!(
        status == StatusCode::OK
            && doc["metadata"]["deletionGracePeriodSeconds"] == 30
            && doc["metadata"]["deletionTimestamp"].is_string(),
        "{doc}"
    );
    // A status update by the node agent does not remove it.
    set_running(&f.app, "s").await?;
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{pods}/s?gracePeriodSeconds=10"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && doc["metadata"]["deletionGracePeriodSeconds"] == 10,
        "{doc}"
    );
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{pods}/s"),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 60})),
    )
    .await?;
    ensure!(
        status == StatusCode::OK && doc["metadata"]["deletionGracePeriodSeconds"] == 10,
        "a longer grace does not extend: {doc}"
    );
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/s"), None).await?;
    ensure!(status == StatusCode::OK, "still terminating");
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{pods}/s"),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})),
    )
    .await?;
    ensure!(status == StatusCode::OK, "{doc}");
    let (status, _) = call_json(&f.app, "GET", &format!("{pods}/s"), None).await?;
    ensure!(status == StatusCode::NOT_FOUND, "grace 0 removes it");
    Ok(())
}

#[tokio::test]
async fn propagation_policies_and_preconditions_shape_deletion() -> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    for name in ["o", "fg", "bg", "pre"] {
        call_json(
            &f.app,
            "POST",
            cms,
            Some(configmap(name, json!({"set": "x"}))),
        )
        .await?;
    }
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}/o?propagationPolicy=Orphan"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK
            && doc["kind"] == "ConfigMap"
            && doc["metadata"]["finalizers"] == json!(["orphan"])
            && doc["metadata"]["deletionTimestamp"].is_string(),
        "{doc}"
    );
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}/fg"),
        Some(json!({"propagationPolicy": "Foreground"})),
    )
    .await?;
    ensure!(
        status == StatusCode::OK && doc["metadata"]["finalizers"] == json!(["foregroundDeletion"]),
        "{doc}"
    );
    // Removing the garbage collector's finalizer finishes the deletion.
    let (status, _, _) = call(
        &f.app,
        "PATCH",
        &format!("{cms}/o"),
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"metadata":{"finalizers":null}}"#.to_vec(),
    )
    .await?;
    ensure!(status == StatusCode::OK);
    let (status, _) = call_json(&f.app, "GET", &format!("{cms}/o"), None).await?;
    ensure!(status == StatusCode::NOT_FOUND);

    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}/bg?propagationPolicy=Background"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && doc["status"] == "Success",
        "{doc}"
    );

    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}/pre?propagationPolicy=Sideways"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY
            && doc["message"]
                == r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": supported values: "Foreground", "Background", "Orphan", "nil""#,
        "{doc}"
    );
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}/pre"),
        Some(json!({"preconditions": {"uid": "not-it"}})),
    )
    .await?;
    ensure!(
        status == StatusCode::CONFLICT
            && doc["message"]
                .as_str()
                .is_some_and(|m| m.contains("Precondition failed: UID in precondition: not-it")),
        "{doc}"
    );

    // deletecollection: the selector picks, the options apply to each.
    call_json(
        &f.app,
        "POST",
        cms,
        Some(configmap("keep", json!({"set": "y"}))),
    )
    .await?;
    let (status, doc) = call_json(
        &f.app,
        "DELETE",
        &format!("{cms}?labelSelector=set%3Dx&propagationPolicy=Orphan"),
        None,
    )
    .await?;
    ensure!(status == StatusCode::OK, "{doc}");
    let (_, pre) = call_json(&f.app, "GET", &format!("{cms}/pre"), None).await?;
    ensure!(pre["metadata"]["finalizers"] == json!(["orphan"]), "{pre}");
    let (_, keep) = call_json(&f.app, "GET", &format!("{cms}/keep"), None).await?;
    ensure!(
        keep["metadata"].get("deletionTimestamp").is_none(),
        "{keep}"
    );
    Ok(())
}

#[tokio::test]
async fn namespace_deletion_terminates_until_finalized() -> anyhow::Result<()> {
    let f = fixture().await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}});
    call_json(&f.app, "POST", "/api/v1/namespaces", Some(ns)).await?;
    let cms = "/api/v1/namespaces/demo/configmaps";
    call_json(&f.app, "POST", cms, Some(configmap("kept", json!({})))).await?;

    let (status, doc) = call_json(&f.app, "DELETE", "/api/v1/namespaces/demo", None).await?;
    ensure!(
        status == StatusCode::OK
            && doc["status"]["phase"] == "Terminating"
            && doc["metadata"]["deletionTimestamp"].is_string()
            && doc["spec"]["finalizers"] == json!(["kubernetes"]),
        "{doc}"
    );
    // The contents are the namespace controller's to delete.
    let (status, _) = call_json(&f.app, "GET", &format!("{cms}/kept"), None).await?;
    ensure!(status == StatusCode::OK, "contents stay");
    let (status, doc) = call_json(&f.app, "POST", cms, Some(configmap("new", json!({})))).await?;
    ensure!(
        status == StatusCode::FORBIDDEN
            && doc["message"]
                == r#"configmaps "new" is forbidden: unable to create new content in namespace demo because it is being terminated"#
            && doc["details"]["causes"][0]["reason"] == "NamespaceTerminating",
        "{doc}"
    );
    // A second delete while finalizers remain changes nothing.
    let (status, doc) = call_json(&f.app, "DELETE", "/api/v1/namespaces/demo", None).await?;
    ensure!(
        status == StatusCode::OK && doc["status"]["phase"] == "Terminating",
        "{doc}"
    );
    // The main resource cannot drop spec.finalizers.
    let (_, mut current) = call_json(&f.app, "GET", "/api/v1/namespaces/demo", None).await?;
    current["spec"]["finalizers"] = json!([]);
    let (status, doc) = call_json(
        &f.app,
        "PUT",
        "/api/v1/namespaces/demo",
        Some(current.clone()),
    )
    .await?;
    ensure!(
        status == StatusCode::OK && doc["spec"]["finalizers"] == json!(["kubernetes"]),
        "{doc}"
    );
    // The status subresource works (the controller's conditions).
    let (status, _, body) = call(
        &f.app,
        "PATCH",
        "/api/v1/namespaces/demo/status",
        &[AUTH, ("content-type", "application/merge-patch+json")],
        br#"{"status":{"conditions":[{"type":"NamespaceContentRemaining","status":"True","reason":"SomeResourcesRemain","message":"1 resource instances"}]}}"#.to_vec(),
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // finalize: emptying spec.finalizers removes it.
    current["metadata"]
        .as_object_mut()
        .context("metadata")?
        .remove("resourceVersion");
    let (status, doc) = call_json(
        &f.app,
        "PUT",
        "/api/v1/namespaces/demo/finalize",
        Some(current),
    )
    .await?;
    ensure!(status == StatusCode::OK, "{doc}");
    let (status, _) = call_json(&f.app, "GET", "/api/v1/namespaces/demo", None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "finalized namespace is removed"
    );
    Ok(())
}

#[tokio::test]
async fn resource_version_match_is_validated_and_honoured() -> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, first) = call_json(&f.app, "POST", cms, Some(configmap("one", json!({})))).await?;
    let rv: i64 = first["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .parse()?;
    call_json(&f.app, "POST", cms, Some(configmap("two", json!({})))).await?;

    let (status, list) = call_json(
        &f.app,
        "GET",
        &format!("{cms}?resourceVersion={rv}&resourceVersionMatch=Exact"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK
            && list["items"].as_array().map(Vec::len) == Some(1)
            && list["metadata"]["resourceVersion"] == json!(rv.to_string()),
        "{list}"
    );
    let (status, list) = call_json(
        &f.app,
        "GET",
        &format!("{cms}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && list["items"].as_array().map(Vec::len) == Some(2),
        "{list}"
    );
    let (status, doc) = call_json(
        &f.app,
        "GET",
        &format!(
            "{cms}?resourceVersion={}&resourceVersionMatch=NotOlderThan",
            rv + 1000
        ),
        None,
    )
    .await?;
    ensure!(status == StatusCode::GATEWAY_TIMEOUT, "{doc}");
    let (status, doc) = call_json(
        &f.app,
        "GET",
        &format!("{cms}?resourceVersionMatch=Exact"),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY
            && doc["message"]
                == r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"#,
        "{doc}"
    );
    Ok(())
}

#[tokio::test]
async fn streaming_watch_ends_initial_events_with_a_bookmark_and_bookmarks_when_idle()
-> anyhow::Result<()> {
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    call_json(&f.app, "POST", cms, Some(configmap("a", json!({})))).await?;
    call_json(&f.app, "POST", cms, Some(configmap("b", json!({})))).await?;
    let (status, _, body) = call(
        &f.app,
        "GET",
        &format!("{cms}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=12"),
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
    ensure!(
        types.len() >= 4 && types[..4] == ["ADDED", "ADDED", "BOOKMARK", "BOOKMARK"],
        "{events:?}"
    );
    let end = &events[2]["object"];
    ensure!(
        end["kind"] == "ConfigMap"
            && end["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
            && end["metadata"]["resourceVersion"]
                == events[1]["object"]["metadata"]["resourceVersion"],
        "{end}"
    );
    ensure!(
        events[3]["object"]["metadata"].get("annotations").is_none(),
        "periodic bookmark: {}",
        events[3]
    );
    let (status, doc) = call_json(
        &f.app,
        "GET",
        &format!("{cms}?watch=1&sendInitialEvents=true&timeoutSeconds=1"),
        None,
    )
    .await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{doc}");
    Ok(())
}

/// A store that counts the watches opened on it.
struct CountingStore {
    inner: Arc<dyn skiff_store::Store>,
    watches: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl skiff_store::Store for CountingStore {
    async fn get(&self, key: &str) -> skiff_store::Result<Option<skiff_store::KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        opts: skiff_store::ListOptions,
    ) -> skiff_store::Result<skiff_store::ListResult> {
        self.inner.list(prefix, opts).await
    }
    async fn count(&self, prefix: &str) -> skiff_store::Result<i64> {
        self.inner.count(prefix).await
    }
    async fn create(
        &self,
        key: &str,
        value: bytes::Bytes,
        opts: skiff_store::PutOptions,
    ) -> skiff_store::Result<skiff_store::KeyValue> {
        self.inner.create(key, value, opts).await
    }
    async fn update(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: skiff_store::Revision,
        opts: skiff_store::PutOptions,
    ) -> skiff_store::Result<skiff_store::KeyValue> {
        self.inner.update(key, value, expected, opts).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<skiff_store::Revision>,
    ) -> skiff_store::Result<skiff_store::Deleted> {
        self.inner.delete(key, expected).await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: skiff_store::Revision,
    ) -> skiff_store::Result<skiff_store::WatchStream> {
        self.watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.watch(prefix, after).await
    }
    async fn current_revision(&self) -> skiff_store::Result<skiff_store::Revision> {
        self.inner.current_revision().await
    }
    async fn compact(&self, revision: skiff_store::Revision) -> skiff_store::Result<()> {
        self.inner.compact(revision).await
    }
    fn backend_name(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test]
async fn many_watchers_share_one_store_watch_and_each_sees_every_matching_change()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let inner = skiff_store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await?;
    let store = Arc::new(CountingStore {
        inner,
        watches: Default::default(),
    });
    let state = AppState::new(store.clone(), Some(TOKEN.into()), "127.0.0.1:6443".into());
    skiff_apiserver::registry::ensure_system_namespaces(&state).await?;
    state.start_watch_caches().await;
    let started = store.watches.load(std::sync::atomic::Ordering::SeqCst);
    let app = app(state);
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, created) = call_json(&app, "POST", cms, Some(configmap("first", json!({})))).await?;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();

    // 200 watchers from the first object's revision, half of them selecting
    // only `app=web`.
    let mut watchers = Vec::new();
    for i in 0..200 {
        let selector = if i % 2 == 0 {
            "&labelSelector=app%3Dweb"
        } else {
            ""
        };
        let uri = format!("{cms}?watch=1&resourceVersion={rv}&timeoutSeconds=2{selector}");
        let app = app.clone();
        watchers.push(tokio::spawn(async move {
            call(&app, "GET", &uri, &[AUTH], vec![]).await
        }));
    }
    call_json(
        &app,
        "POST",
        cms,
        Some(configmap("web", json!({"app": "web"}))),
    )
    .await?;
    call_json(
        &app,
        "POST",
        cms,
        Some(configmap("db", json!({"app": "db"}))),
    )
    .await?;
    for (i, w) in watchers.into_iter().enumerate() {
        let (status, _, body) = w.await??;
        ensure!(status == StatusCode::OK);
        let names: Vec<String> = String::from_utf8(body)?
            .lines()
            .map(serde_json::from_str::<Value>)
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter_map(|e| e["object"]["metadata"]["name"].as_str().map(String::from))
            .collect();
        let want: &[&str] = if i % 2 == 0 { &["web"] } else { &["web", "db"] };
        ensure!(names == want, "watcher {i} saw {names:?}");
    }
    let watches = store.watches.load(std::sync::atomic::Ordering::SeqCst) - started;
    ensure!(
        watches == 0,
        "{watches} more store watches for 200 watchers"
    );

    // resourceVersion=0 lists come from the same cache.
    let (_, list) = call_json(&app, "GET", &format!("{cms}?resourceVersion=0"), None).await?;
    let n = list["items"].as_array().map(Vec::len).unwrap_or_default();
    ensure!(n == 3, "{list}");
    ensure!(store.watches.load(std::sync::atomic::Ordering::SeqCst) == started);
    Ok(())
}

/// A watch from a revision older than the watch cache's window is served
/// by the store until it has caught up, then by the cache: across that
/// handover every change arrives exactly once and in order.
#[tokio::test]
async fn a_watch_from_before_the_cache_window_catches_up_and_misses_nothing() -> anyhow::Result<()>
{
    let f = fixture().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, first) = call_json(&f.app, "POST", cms, Some(configmap("c0", json!({})))).await?;
    let rv0: i64 = first["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .parse()?;
    // Start the cache, then push the first revision out of its window.
    let (status, _, _) = call(
        &f.app,
        "GET",
        &format!("{cms}?resourceVersion=0"),
        &[AUTH],
        vec![],
    )
    .await?;
    ensure!(status == StatusCode::OK);
    let behind = skiff_apiserver::watchcache::WINDOW + 50;
    for chunk in (1..=behind).collect::<Vec<_>>().chunks(500) {
        let writes = chunk.iter().map(|i| {
            let value = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("c{i}"), "namespace": "default", "uid": format!("u{i}")},
            });
            let store = f.store.clone();
            async move {
                store
                    .create(
                        &format!("/registry/core/configmaps/default/c{i}"),
                        serde_json::to_vec(&value)?.into(),
                        Default::default(),
                    )
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
    }

    let app = f.app.clone();
    let watch = tokio::spawn(async move {
        call(
            &app,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv0}&timeoutSeconds=4"),
            &[AUTH],
            vec![],
        )
        .await
    });
    // Changes while the watch runs, after it has caught up.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for i in 0..5 {
        call_json(
            &f.app,
            "POST",
            cms,
            Some(configmap(&format!("late{i}"), json!({}))),
        )
        .await?;
    }
    let (status, _, body) = watch.await??;
    ensure!(status == StatusCode::OK);
    let events: Vec<Value> = String::from_utf8(body)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let revisions: Vec<i64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse().ok())
                .context("event without a revision")
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        events.len() == behind + 5,
        "{} events for {} changes",
        events.len(),
        behind + 5
    );
    ensure!(
        revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] > rv0,
        "revisions out of order or repeated"
    );
    ensure!(events.iter().all(|e| e["type"] == "ADDED"));
    ensure!(events[behind + 4]["object"]["metadata"]["name"] == "late4");
    Ok(())
}

/// A namespace stored before the API server labelled namespaces with their
/// name (written straight into the store here) gets the label at start, so
/// NetworkPolicy namespace selectors by name find it.
#[tokio::test]
async fn namespaces_stored_without_their_name_label_get_it_at_start() -> anyhow::Result<()> {
    let f = fixture().await?;
    let def = skiff_apiserver::resources::find("", "v1", "namespaces").context("namespaces")?;
    let old = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "old", "uid": "0d6a4a52-7d4e-4f8e-9d0a-6c1f1c1e1e01",
            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"team": "a"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    f.store
        .create(
            &def.key(None, "old"),
            serde_json::to_vec(&old)?.into(),
            Default::default(),
        )
        .await?;
    let (status, body) = call_json(&f.app, "GET", "/api/v1/namespaces/old", None).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(
        body["metadata"]["labels"]
            .get("kubernetes.io/metadata.name")
            .is_none(),
        "already labelled: {body}"
    );

    // What the server does at start.
    let state = AppState::new(f.store.clone(), Some(TOKEN.into()), "127.0.0.1:6443".into());
    skiff_apiserver::registry::ensure_system_namespaces(&state).await?;
    let (status, body) = call_json(&f.app, "GET", "/api/v1/namespaces/old", None).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(
        body["metadata"]["labels"] == json!({"team": "a", "kubernetes.io/metadata.name": "old"}),
        "labels after start: {body}"
    );
    Ok(())
}
