"""The Python `kubernetes` client against a skiff API server.

Run by crates/apiserver/tests/python_client.rs with the venv that
scripts/install-deps.sh makes:
`python client_flows.py KUBECONFIG NAMESPACE FLOW...`, FLOW being `objects`
(CRUD, watch, conflict, not found), `kindless` (bodies without kind and
apiVersion) or `version`. Each step prints
`ok: <step>`; the first failed check raises, which prints a traceback and
exits non-zero.
"""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_api_error(status, reason, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        check(e.status == status, f"status {e.status}, want {status}: {e.body}")
        check(reason in e.body, f"{reason!r} missing in {e.body}")
        return e
    raise AssertionError(f"{call.__name__}{args} succeeded, want {status}")


def config_map(name, data, labels=None):
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        data=data,
    )


def namespace(name):
    return client.V1Namespace(
        api_version="v1", kind="Namespace", metadata=client.V1ObjectMeta(name=name)
    )


def configmaps(core, ns):
    for i in range(3):
        core.create_namespaced_config_map(
            ns, config_map(f"cm-{i}", {"i": str(i)}, {"app": "flows", "idx": str(i)})
        )
    names = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
    check(names == ["cm-0", "cm-1", "cm-2"], names)
    selected = core.list_namespaced_config_map(ns, label_selector="app=flows,idx!=1")
    check([c.metadata.name for c in selected.items] == ["cm-0", "cm-2"], selected)
    print("ok: create and list ConfigMaps, with a label selector")

    # A dict body is a strategic merge patch, a list a JSON patch; the
    # generated methods cannot send a merge patch, so that one goes through
    # call_api with its content type.
    core.patch_namespaced_config_map("cm-0", ns, {"data": {"extra": "yes"}})
    core.patch_namespaced_config_map(
        "cm-0", ns, [{"op": "replace", "path": "/data/i", "value": "zero"}]
    )
    core.api_client.call_api(
        "/api/v1/namespaces/{namespace}/configmaps/{name}",
        "PATCH",
        {"namespace": ns, "name": "cm-0"},
        [],
        {"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        body={"metadata": {"labels": {"idx": None}}},
        response_type="V1ConfigMap",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    cm = core.read_namespaced_config_map("cm-0", ns)
    check(cm.data == {"i": "zero", "extra": "yes"}, cm.data)
    check(cm.metadata.labels == {"app": "flows"}, cm.metadata.labels)
    print("ok: strategic, JSON and merge patches")

    status = core.delete_namespaced_config_map("cm-1", ns)
    check(status.status == "Success" or status.kind == "ConfigMap", status)
    names = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
    check(names == ["cm-0", "cm-2"], names)
    print("ok: delete a ConfigMap")


def deployment(core, apps, ns):
    body = client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="app",
                            image="nginx:1.27",
                            ports=[client.V1ContainerPort(container_port=80)],
                        )
                    ]
                ),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(ns, body)
    check(created.metadata.uid and created.metadata.resource_version, created.metadata)
    check(created.metadata.generation == 1, created.metadata)
    patched = apps.patch_namespaced_deployment(
        "web",
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.28"}]}}}},
    )
    check(patched.spec.template.spec.containers[0].image == "nginx:1.28", patched.spec)
    check(patched.spec.template.spec.containers[0].ports[0].container_port == 80, patched.spec)
    check(patched.metadata.generation == 2, patched.metadata)
    scale = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 4}})
    check(scale.spec.replicas == 4, scale)
    current = apps.read_namespaced_deployment("web", ns)
    check(current.spec.replicas == 4, current.spec)
    current.spec.replicas = 1
    replaced = apps.replace_namespaced_deployment("web", ns, current)
    check(replaced.spec.replicas == 1, replaced.spec)
    listed = apps.list_namespaced_deployment(ns, label_selector="app=web")
    check([d.metadata.name for d in listed.items] == ["web"], listed)
    apps.delete_namespaced_deployment("web", ns)
    check(apps.list_namespaced_deployment(ns).items == [], "deployment deleted")
    print("ok: create, patch, scale, replace, list and delete a Deployment")


def watch_from_resource_version(core, ns):
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, config_map("watched", {"v": "1"}))
    core.patch_namespaced_config_map("watched", ns, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("watched", ns)
    seen = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=20
    ):
        obj = event["object"]
        seen.append((event["type"], obj.metadata.name, (obj.data or {}).get("v")))
        if event["type"] == "DELETED":
            w.stop()
    check(
        seen == [("ADDED", "watched", "1"), ("MODIFIED", "watched", "2"), ("DELETED", "watched", "2")],
        seen,
    )
    print("ok: watch from a resourceVersion sees ADDED, MODIFIED and DELETED")


def conflict(core, ns):
    fresh = core.read_namespaced_config_map("cm-2", ns)
    stale = core.read_namespaced_config_map("cm-2", ns)
    fresh.data["i"] = "fresh"
    core.replace_namespaced_config_map("cm-2", ns, fresh)
    stale.data["i"] = "stale"
    e = expect_api_error(409, "Conflict", core.replace_namespaced_config_map, "cm-2", ns, stale)
    check("the object has been modified" in e.body, e.body)
    check(core.read_namespaced_config_map("cm-2", ns).data["i"] == "fresh", "stale write stored")
    print("ok: a stale resourceVersion is a 409 Conflict")


def not_found(core, apps, ns):
    e = expect_api_error(404, "NotFound", core.read_namespaced_config_map, "missing", ns)
    check('configmaps \\"missing\\" not found' in e.body or 'configmaps "missing" not found' in e.body, e.body)
    expect_api_error(404, "NotFound", apps.read_namespaced_deployment, "missing", ns)
    expect_api_error(404, "NotFound", core.delete_namespaced_config_map, "missing", ns)
    print("ok: a missing object is an ApiException with status 404")


def objects(api, ns):
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    core.create_namespace(namespace(ns))
    configmaps(core, ns)
    deployment(core, apps, ns)
    watch_from_resource_version(core, ns)
    conflict(core, ns)
    not_found(core, apps, ns)


def version(api, _ns):
    # VersionApi asks for `/version/`, with the trailing slash.
    info = client.VersionApi(api).get_code()
    check(info.git_version and info.major and info.minor, info)
    print(f"ok: server version {info.git_version}")


def kindless(api, ns):
    # The generated models leave `kind` and `apiVersion` out unless set; a
    # Kubernetes API server takes them from the URL.
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="plain"), data={"k": "v"})
    )
    cm = core.read_namespaced_config_map("plain", ns)
    check(cm.kind == "ConfigMap" and cm.api_version == "v1", cm)
    print("ok: objects without kind and apiVersion are created")


FLOWS = {"objects": objects, "version": version, "kindless": kindless}


def main(kubeconfig, ns, flows):
    api = config.new_client_from_config(config_file=kubeconfig)
    for flow in flows:
        FLOWS[flow](api, ns)
    print("all flows passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
