//! End to end: kubectl v1.32's generators (`kubectl create <kind>`,
//! `kubectl create token`) send protobuf bodies and never fall back to
//! JSON; each must create the object with the fields it set. (`kubectl run`
//! is here too, though v1.32 sends its Pod as JSON.)

mod support;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use support::TestServer;

/// A JSON pointer into the created object and the value it must have.
type Want = (&'static str, fn() -> Value);

/// One generator: the command, the object it creates, and the fields
/// (JSON pointers) `kubectl get -o json` must show.
struct Case {
    create: &'static [&'static str],
    /// Whether kubectl sends the body as protobuf (checked at `-v=8`).
    protobuf: bool,
    get: &'static [&'static str],
    want: &'static [Want],
}

const CASES: &[Case] = &[
    Case {
        create: &[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
            "--port=80",
        ],
        protobuf: true,
        get: &["deployment", "web"],
        want: &[
            ("/spec/replicas", || json!(2)),
            ("/spec/selector/matchLabels/app", || json!("web")),
            ("/spec/template/spec/containers/0/image", || json!("nginx")),
            (
                "/spec/template/spec/containers/0/ports/0/containerPort",
                || json!(80),
            ),
        ],
    },
    Case {
        create: &["create", "serviceaccount", "builder"],
        protobuf: true,
        get: &["serviceaccount", "builder"],
        want: &[("/metadata/name", || json!("builder"))],
    },
    Case {
        create: &["create", "job", "j", "--image=busybox", "--", "echo", "hi"],
        protobuf: true,
        get: &["job", "j"],
        want: &[
            ("/spec/template/spec/containers/0/image", || {
                json!("busybox")
            }),
            ("/spec/template/spec/containers/0/command", || {
                json!(["echo", "hi"])
            }),
            ("/spec/template/spec/restartPolicy", || json!("Never")),
        ],
    },
    Case {
        create: &[
            "create",
            "cronjob",
            "c",
            "--image=busybox",
            "--schedule=*/5 * * * *",
        ],
        protobuf: true,
        get: &["cronjob", "c"],
        want: &[
            ("/spec/schedule", || json!("*/5 * * * *")),
            (
                "/spec/jobTemplate/spec/template/spec/containers/0/image",
                || json!("busybox"),
            ),
        ],
    },
    Case {
        create: &["create", "service", "clusterip", "s", "--tcp=80:8080"],
        protobuf: true,
        get: &["service", "s"],
        want: &[
            ("/spec/type", || json!("ClusterIP")),
            ("/spec/ports/0/port", || json!(80)),
            ("/spec/ports/0/targetPort", || json!(8080)),
            ("/spec/selector/app", || json!("s")),
        ],
    },
    Case {
        create: &["create", "secret", "generic", "s", "--from-literal=a=b"],
        protobuf: true,
        get: &["secret", "s"],
        want: &[("/data/a", || json!("Yg=="))],
    },
    Case {
        create: &["create", "quota", "q", "--hard=pods=10"],
        protobuf: true,
        get: &["resourcequota", "q"],
        want: &[("/spec/hard/pods", || json!("10"))],
    },
    Case {
        create: &["create", "role", "r", "--verb=get", "--resource=pods"],
        protobuf: true,
        get: &["role", "r"],
        want: &[(
            "/rules/0",
            || json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}),
        )],
    },
    Case {
        create: &["create", "rolebinding", "rb", "--role=r", "--user=u"],
        protobuf: true,
        get: &["rolebinding", "rb"],
        want: &[
            (
                "/roleRef",
                || json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}),
            ),
            (
                "/subjects/0",
                || json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "u"}),
            ),
        ],
    },
    Case {
        create: &["create", "priorityclass", "p", "--value=1000"],
        protobuf: true,
        get: &["priorityclass", "p"],
        want: &[
            ("/value", || json!(1000)),
            ("/globalDefault", || json!(false)),
        ],
    },
    Case {
        create: &[
            "create",
            "pdb",
            "p",
            "--selector=app=x",
            "--min-available=1",
        ],
        protobuf: true,
        get: &["pdb", "p"],
        want: &[
            ("/spec/minAvailable", || json!(1)),
            ("/spec/selector/matchLabels/app", || json!("x")),
        ],
    },
    Case {
        create: &["create", "configmap", "cm", "--from-literal=k=v"],
        protobuf: true,
        get: &["configmap", "cm"],
        want: &[("/data/k", || json!("v"))],
    },
    Case {
        create: &["create", "namespace", "team"],
        protobuf: true,
        get: &["namespace", "team"],
        want: &[("/metadata/name", || json!("team"))],
    },
    Case {
        create: &[
            "create",
            "clusterrole",
            "cr",
            "--verb=list",
            "--resource=deployments.apps",
        ],
        protobuf: true,
        get: &["clusterrole", "cr"],
        want: &[(
            "/rules/0",
            || json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]}),
        )],
    },
    Case {
        create: &[
            "create",
            "clusterrolebinding",
            "crb",
            "--clusterrole=cr",
            "--group=g",
        ],
        protobuf: true,
        get: &["clusterrolebinding", "crb"],
        want: &[(
            "/subjects/0",
            || json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "g"}),
        )],
    },
    Case {
        // IngressRule inlines IngressRuleValue (`http`) in JSON.
        create: &["create", "ingress", "ing", "--rule=foo.com/bar=svc1:8080"],
        protobuf: true,
        get: &["ingress", "ing"],
        want: &[
            ("/spec/rules/0/host", || json!("foo.com")),
            ("/spec/rules/0/http/paths/0/path", || json!("/bar")),
            ("/spec/rules/0/http/paths/0/pathType", || json!("Exact")),
            (
                "/spec/rules/0/http/paths/0/backend/service",
                || json!({"name": "svc1", "port": {"number": 8080}}),
            ),
        ],
    },
    Case {
        create: &["run", "p", "--image=nginx", "--labels=app=x"],
        protobuf: false,
        get: &["pod", "p"],
        want: &[
            ("/metadata/labels/app", || json!("x")),
            ("/spec/containers/0/name", || json!("p")),
            ("/spec/containers/0/image", || json!("nginx")),
        ],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generators_create_objects_through_protobuf_bodies() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(e) = check(&server, case).await {
            failures.push(format!("kubectl {}: {e:#}", case.create.join(" ")));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// Runs `args` at `-v=8` and checks the request body's content type.
async fn ok_sending(server: &TestServer, args: &[&str], protobuf: bool) -> anyhow::Result<String> {
    let out = server.kubectl(&[&["-v=8"], args].concat()).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "failed ({}): {stderr}", out.status);
    let sent_protobuf = stderr.contains("Content-Type: application/vnd.kubernetes.protobuf");
    ensure!(
        sent_protobuf == protobuf,
        "kubectl sent protobuf: {sent_protobuf}, expected {protobuf}: {stderr}"
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn check(server: &TestServer, case: &Case) -> anyhow::Result<()> {
    ok_sending(server, case.create, case.protobuf).await?;
    let obj = server.json(&[&["get"], case.get].concat()).await?;
    for (pointer, want) in case.want {
        let got = obj
            .pointer(pointer)
            .with_context(|| format!("{pointer} missing in {obj:#}"))?;
        ensure!(*got == want(), "{pointer}: got {got}, want {}", want());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_sends_a_protobuf_token_request() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // The service account controller does not run here: create `default`.
    let existing = server
        .kubectl(&["get", "serviceaccount", "default"])
        .await?;
    if !existing.status.success() {
        server.ok(&["create", "serviceaccount", "default"]).await?;
    }
    let token = ok_sending(
        &server,
        &["create", "token", "default", "--duration=10m"],
        true,
    )
    .await?;
    let token = token.trim();
    ensure!(token.split('.').count() == 3, "not a JWT: {token:?}");
    Ok(())
}
