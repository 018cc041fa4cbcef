//! Per-kind validation, as Kubernetes' `validation` packages do it for the
//! fields users most often get wrong: required fields, enumerations, port
//! ranges, names, selectors that must match their templates, and the fields
//! that are immutable after creation. Every problem is one [`FieldError`]
//! with the field's path (`spec.template.spec.containers[0].image`), so a
//! 422 names each invalid field. Pure functions, no IO.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::error::FieldError;
use crate::resources::ResourceDef;
use crate::validation::is_label;

/// The errors of `obj` of kind `def` (on create, and on update after
/// [`validate_update`]'s immutability checks).
pub fn validate(def: &ResourceDef, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (def.group, def.kind) {
        ("", "Pod") => pod_spec(spec, "spec", &mut errs),
        ("", "ReplicationController") => {
            replicas(spec, &mut errs);
            if let Some(sel) = spec.get("selector").and_then(Value::as_object)
                && !sel.is_empty()
            {
                let labels = obj
                    .pointer("/spec/template/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    errs.push(FieldError::invalid_value(
                        "spec.template.metadata.labels",
                        &labels,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            template(spec, &mut errs, &["Always"]);
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            if def.kind != "DaemonSet" {
                replicas(spec, &mut errs);
            }
            selector_matches_template(spec, &mut errs);
            template(spec, &mut errs, &["Always"]);
            if def.kind == "Deployment" {
                deployment_strategy(spec, &mut errs);
            }
        }
        ("batch", "Job") => {
            for field in ["parallelism", "completions", "backoffLimit"] {
                non_negative(spec, field, &format!("spec.{field}"), &mut errs);
            }
            if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
                && d <= 0
            {
                errs.push(FieldError::invalid_value(
                    "spec.activeDeadlineSeconds",
                    &json!(d),
                    "must be greater than 0",
                ));
            }
            if spec.get("selector").is_some() {
                selector_matches_template(spec, &mut errs);
            }
            template(spec, &mut errs, &["OnFailure", "Never"]);
        }
        ("batch", "CronJob") => {
            match spec.get("schedule").and_then(Value::as_str) {
                Some(s) if !s.trim().is_empty() => {
                    if !schedule_is_valid(s) {
                        errs.push(FieldError::invalid(
                            "spec.schedule",
                            s,
                            "unparseable schedule",
                        ));
                    }
                }
                _ => errs.push(FieldError::required("spec.schedule", "")),
            }
            if let Some(p) = spec.get("concurrencyPolicy") {
                one_of(
                    p,
                    "spec.concurrencyPolicy",
                    &["Allow", "Forbid", "Replace"],
                    &mut errs,
                );
            }
            let job_spec = spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null);
            let mut inner = Vec::new();
            template(job_spec, &mut inner, &["OnFailure", "Never"]);
            errs.extend(inner.into_iter().map(|mut e| {
                e.field = format!("spec.jobTemplate.{}", e.field);
                e
            }));
        }
        ("", "Service") => service(spec, &mut errs),
        ("", "ConfigMap") | ("", "Secret") => config_keys(obj, &mut errs),
        _ => {}
    }
    errs
}

/// The fields of `new` that may not differ from `old`.
pub fn validate_update(def: &ResourceDef, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let same = |ptr: &str| old.pointer(ptr) == new.pointer(ptr);
    let immutable = |ptr: &str, field: &str, errs: &mut Vec<FieldError>| {
        if !same(ptr) {
            errs.push(FieldError::invalid_value(
                field,
                new.pointer(ptr).unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    };
    match (def.group, def.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            immutable("/spec/selector", "spec.selector", &mut errs);
        }
        ("apps", "StatefulSet") => {
            let mut o = old.get("spec").cloned().unwrap_or(json!({}));
            let mut n = new.get("spec").cloned().unwrap_or(json!({}));
            for mutable in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                if let Some(m) = o.as_object_mut() {
                    m.remove(mutable);
                }
                if let Some(m) = n.as_object_mut() {
                    m.remove(mutable);
                }
            }
            if o != n {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        ("batch", "Job") => {
            immutable("/spec/selector", "spec.selector", &mut errs);
            immutable("/spec/template", "spec.template", &mut errs);
            immutable("/spec/completionMode", "spec.completionMode", &mut errs);
        }
        ("", "Pod") => pod_update(old, new, &mut errs),
        ("", "Service") => {
            // An allocated address stays; clearing it on update keeps it.
            let cleared = new
                .pointer("/spec/clusterIP")
                .is_none_or(|v| v.as_str() == Some(""));
            if !cleared && old.pointer("/spec/clusterIP").is_some() {
                immutable("/spec/clusterIP", "spec.clusterIPs[0]", &mut errs);
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if old.get("immutable") == Some(&json!(true)) {
                for (ptr, field) in [("/data", "data"), ("/binaryData", "binaryData")] {
                    if !same(ptr) {
                        errs.push(FieldError::forbidden(
                            field,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new.get("immutable") != Some(&json!(true)) {
                    errs.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if def.kind == "Secret" {
                immutable("/type", "type", &mut errs);
            }
        }
        ("", "Node") => {
            let old_cidr = old.pointer("/spec/podCIDR").and_then(Value::as_str);
            if old_cidr.is_some_and(|c| !c.is_empty()) && !same("/spec/podCIDR") {
                errs.push(FieldError::forbidden(
                    "spec.podCIDRs",
                    "node updates may not change podCIDR except from \"\" to valid",
                ));
            }
        }
        ("", "PersistentVolumeClaim") => {
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(json!({}));
                if let Some(m) = s.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeName");
                }
                s
            };
            if old.pointer("/spec/volumeName").is_some_and(|v| v != "") && !same("/spec/volumeName")
            {
                errs.push(FieldError::invalid_value(
                    "spec.volumeName",
                    new.pointer("/spec/volumeName").unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
            if strip(old) != strip(new) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
        }
        _ => {}
    }
    errs
}

fn replicas(spec: &Value, errs: &mut Vec<FieldError>) {
    non_negative(spec, "replicas", "spec.replicas", errs);
}

fn non_negative(obj: &Value, key: &str, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = obj.get(key) {
        match v.as_i64() {
            Some(n) if n < 0 => errs.push(FieldError::invalid_value(
                field,
                v,
                "must be greater than or equal to 0",
            )),
            _ => {}
        }
    }
}

fn one_of(v: &Value, field: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
        errs.push(FieldError::not_supported(field, v, allowed));
    }
}

/// A label selector (`matchLabels`/`matchExpressions`) must be present,
/// non-empty, and select the template's labels.
fn selector_matches_template(spec: &Value, errs: &mut Vec<FieldError>) {
    let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) else {
        errs.push(FieldError::required("spec.selector", ""));
        return;
    };
    let match_labels = sel.get("matchLabels").and_then(Value::as_object);
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        errs.push(FieldError::invalid_value(
            "spec.selector",
            sel,
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let labels: std::collections::BTreeMap<String, String> = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let parsed: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> =
        serde_json::from_value(sel.clone()).ok();
    let Some(parsed) = parsed else {
        errs.push(FieldError::invalid_value(
            "spec.selector",
            sel,
            "invalid label selector",
        ));
        return;
    };
    if !selector_matches(&parsed, &labels) {
        errs.push(FieldError::invalid_value(
            "spec.template.metadata.labels",
            &json!(labels),
            "`selector` does not match template `labels`",
        ));
    }
}

fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_exprs
}

fn template(spec: &Value, errs: &mut Vec<FieldError>, restart_policies: &[&str]) {
    let Some(tpl) = spec.get("template").filter(|t| !t.is_null()) else {
        errs.push(FieldError::required("spec.template", ""));
        return;
    };
    let pod_spec = tpl.get("spec").unwrap_or(&Value::Null);
    pod_spec_fields(pod_spec, "spec.template.spec", errs);
    if let Some(p) = pod_spec.get("restartPolicy")
        && !p.as_str().is_some_and(|s| restart_policies.contains(&s))
    {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            p,
            restart_policies,
        ));
    }
}

fn deployment_strategy(spec: &Value, errs: &mut Vec<FieldError>) {
    let Some(strategy) = spec.get("strategy") else {
        return;
    };
    if let Some(ty) = strategy.get("type") {
        one_of(
            ty,
            "spec.strategy.type",
            &["Recreate", "RollingUpdate"],
            errs,
        );
        if ty == "Recreate" && strategy.get("rollingUpdate").is_some_and(|r| !r.is_null()) {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
    }
    if let Some(ru) = strategy.get("rollingUpdate") {
        let zero = |k: &str| ru.get(k).is_none_or(|v| v == 0 || v == "0%" || v == "0");
        if ru.get("maxSurge").is_some()
            && ru.get("maxUnavailable").is_some()
            && zero("maxSurge")
            && zero("maxUnavailable")
        {
            errs.push(FieldError::invalid_value(
                "spec.strategy.rollingUpdate.maxUnavailable",
                ru.get("maxUnavailable").unwrap_or(&Value::Null),
                "may not be 0 when `maxSurge` is 0",
            ));
        }
    }
}

fn pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    pod_spec_fields(spec, path, errs);
    if let Some(p) = spec.get("restartPolicy") {
        one_of(
            p,
            &format!("{path}.restartPolicy"),
            &["Always", "OnFailure", "Never"],
            errs,
        );
    }
}

/// Containers, volumes and the enumerations of a pod spec.
fn pod_spec_fields(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let volumes: BTreeSet<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            let mut seen = BTreeSet::new();
            for (i, v) in vs.iter().enumerate() {
                let field = format!("{path}.volumes[{i}].name");
                match v.get("name").and_then(Value::as_str) {
                    Some(n) if is_label(n) => {
                        if !seen.insert(n.to_string()) {
                            errs.push(FieldError::duplicate(field, &json!(n)));
                        }
                    }
                    Some(n) => {
                        errs.push(FieldError::invalid(field, n, crate::validation::LABEL_MSG))
                    }
                    None => errs.push(FieldError::required(field, "")),
                }
            }
            seen
        })
        .unwrap_or_default();
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (list, items) in [
        (
            "initContainers",
            spec.get("initContainers").and_then(Value::as_array),
        ),
        ("containers", containers),
    ] {
        for (i, c) in items.into_iter().flatten().enumerate() {
            container(
                c,
                &format!("{path}.{list}[{i}]"),
                &volumes,
                &mut names,
                errs,
            );
        }
    }
    if let Some(p) = spec.get("dnsPolicy") {
        one_of(
            p,
            &format!("{path}.dnsPolicy"),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            errs,
        );
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && g < 0
    {
        errs.push(FieldError::invalid_value(
            format!("{path}.terminationGracePeriodSeconds"),
            &json!(g),
            "must be greater than or equal to 0",
        ));
    }
}

fn container(
    c: &Value,
    path: &str,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    errs: &mut Vec<FieldError>,
) {
    match c.get("name").and_then(Value::as_str) {
        Some(n) if is_label(n) => {
            if !names.insert(n.to_string()) {
                errs.push(FieldError::duplicate(format!("{path}.name"), &json!(n)));
            }
        }
        Some(n) => errs.push(FieldError::invalid(
            format!("{path}.name"),
            n,
            crate::validation::LABEL_MSG,
        )),
        None => errs.push(FieldError::required(format!("{path}.name"), "")),
    }
    if c.get("image")
        .and_then(Value::as_str)
        .is_none_or(|i| i.trim().is_empty())
    {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    if let Some(p) = c.get("imagePullPolicy") {
        one_of(
            p,
            &format!("{path}.imagePullPolicy"),
            &["Always", "IfNotPresent", "Never"],
            errs,
        );
    }
    let mut port_names = BTreeSet::new();
    for (i, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.ports[{i}]");
        match port.get("containerPort") {
            Some(v) if v.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            Some(v) => errs.push(FieldError::invalid_value(
                format!("{p}.containerPort"),
                v,
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{p}.containerPort"), "")),
        }
        if let Some(proto) = port.get("protocol") {
            one_of(
                proto,
                &format!("{p}.protocol"),
                &["SCTP", "TCP", "UDP"],
                errs,
            );
        }
        if let Some(name) = port.get("name").and_then(Value::as_str) {
            if !is_port_name(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    name,
                    "must be no more than 15 characters, contain only lowercase letters, digits and '-', contain at least one letter, and not start or end with '-'",
                ));
            } else if !port_names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), &json!(name)));
            }
        }
    }
    for (i, m) in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.volumeMounts[{i}]");
        match m.get("name").and_then(Value::as_str) {
            Some(n) if volumes.contains(n) => {}
            Some(n) => errs.push(FieldError::not_found(format!("{p}.name"), &json!(n))),
            None => errs.push(FieldError::required(format!("{p}.name"), "")),
        }
        if m.get("mountPath")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("{p}.mountPath"), ""));
        }
    }
    for (i, e) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if e.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("{path}.env[{i}].name"), ""));
        }
    }
}

/// IANA service names: at most 15 characters, lowercase letters, digits
/// and non-adjacent, non-edge `-`, at least one letter.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Pods are immutable but for images, deadlines, added tolerations and
/// removed scheduling gates (Kubernetes' message, not its whole rule set).
fn pod_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let masked = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(json!({}));
        if let Some(m) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "schedulingGates",
                "terminationGracePeriodSeconds",
            ] {
                m.remove(field);
            }
            // Binding sets the node once (through pods/binding).
            if pod.pointer("/spec/nodeName").is_some_and(|n| n != "") {
                m.remove("nodeName");
            }
            for list in ["containers", "initContainers", "ephemeralContainers"] {
                if let Some(items) = m.get_mut(list).and_then(Value::as_array_mut) {
                    for c in items {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
            }
        }
        spec
    };
    if masked(old) != masked(new) {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    let old_node = old.pointer("/spec/nodeName").and_then(Value::as_str);
    let new_node = new.pointer("/spec/nodeName").and_then(Value::as_str);
    if old_node.is_some_and(|n| !n.is_empty()) && new_node != old_node {
        errs.push(FieldError::invalid_value(
            "spec.nodeName",
            new.pointer("/spec/nodeName").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

fn service(spec: &Value, errs: &mut Vec<FieldError>) {
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if let Some(t) = spec.get("type") {
        one_of(
            t,
            "spec.type",
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            errs,
        );
    }
    if ty == "ExternalName" {
        match spec.get("externalName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {}
            _ => errs.push(FieldError::required("spec.externalName", "")),
        }
        return;
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_none_or(|p| p.is_empty()) && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        match port.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {
                if !is_label(n) {
                    errs.push(FieldError::invalid(
                        format!("{p}.name"),
                        n,
                        crate::validation::LABEL_MSG,
                    ));
                } else if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), &json!(n)));
                }
            }
            _ if ports.len() > 1 => errs.push(FieldError::required(format!("{p}.name"), "")),
            _ => {}
        }
        match port.get("port") {
            Some(v) if v.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            Some(v) => errs.push(FieldError::invalid_value(
                format!("{p}.port"),
                v,
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{p}.port"), "")),
        }
        let proto = port.get("protocol").cloned().unwrap_or(json!("TCP"));
        one_of(
            &proto,
            &format!("{p}.protocol"),
            &["SCTP", "TCP", "UDP"],
            errs,
        );
        if let Some(np) = port.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && ty == "ClusterIP"
        {
            errs.push(FieldError::forbidden(
                format!("{p}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
        if let Some(tp) = port.get("targetPort") {
            let ok = match tp {
                Value::Number(n) => n.as_i64().is_some_and(|n| (1..=65535).contains(&n)),
                Value::String(s) => is_port_name(s),
                _ => false,
            };
            if !ok {
                errs.push(FieldError::invalid_value(
                    format!("{p}.targetPort"),
                    tp,
                    "must be between 1 and 65535, inclusive, or a valid port name",
                ));
            }
        }
        let key = (port.get("port").cloned(), proto.clone());
        if !seen.insert(format!("{key:?}")) {
            errs.push(FieldError::duplicate(
                p.clone(),
                &json!({"port": port.get("port"), "protocol": proto}),
            ));
        }
    }
    if let Some(a) = spec.get("sessionAffinity") {
        one_of(a, "spec.sessionAffinity", &["ClientIP", "None"], errs);
    }
    for field in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if let Some(v) = spec.get(field) {
            one_of(v, &format!("spec.{field}"), &["Cluster", "Local"], errs);
        }
    }
}

/// Keys of `data` / `binaryData` / `stringData`: `[-._a-zA-Z0-9]+`, at most
/// 253 characters, not `.` or `..`, and not in two maps at once.
fn config_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    for map in ["data", "binaryData", "stringData"] {
        let Some(m) = obj.get(map).and_then(Value::as_object) else {
            continue;
        };
        for k in m.keys() {
            let valid = !k.is_empty()
                && k.len() <= 253
                && k != "."
                && k != ".."
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if !valid {
                errs.push(FieldError::invalid(
                    map.to_string(),
                    k,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            } else if map != "stringData" && !seen.insert(k.clone()) {
                errs.push(FieldError::invalid(
                    map.to_string(),
                    k,
                    "duplicate of key present in data",
                ));
            }
        }
    }
}

/// Five fields, or one of the `@` macros, as the CronJob controller parses.
fn schedule_is_valid(s: &str) -> bool {
    let s = s.trim();
    let s = match s.split_once(' ') {
        Some((tz, rest)) if tz.starts_with("CRON_TZ=") || tz.starts_with("TZ=") => rest.trim(),
        _ => s,
    };
    if s.starts_with('@') {
        return matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        );
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'*' | b',' | b'-' | b'/' | b'?'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn def(group: &str, plural: &str) -> &'static ResourceDef {
        resources::find(group, "v1", plural).expect("served resource")
    }

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{} {}", e.reason, e.field))
            .collect()
    }

    fn deployment(selector: Value, labels: Value) -> Value {
        json!({"spec": {
            "replicas": 1,
            "selector": selector,
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
        }})
    }

    #[test]
    fn workloads_need_a_selector_that_matches_their_template() {
        let d = def("apps", "deployments");
        let cases = [
            (
                "matching",
                deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"})),
                vec![],
            ),
            (
                "mismatched",
                deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "b"})),
                vec!["FieldValueInvalid spec.template.metadata.labels"],
            ),
            (
                "missing",
                deployment(Value::Null, json!({"app": "a"})),
                vec!["FieldValueRequired spec.selector"],
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(fields(&validate(d, &obj)), want, "{name}");
        }
    }

    #[test]
    fn pod_specs_name_each_invalid_field() {
        let pod = json!({"spec": {
            "restartPolicy": "Sometimes",
            "volumes": [{"name": "data"}],
            "containers": [
                {"name": "web", "ports": [{"containerPort": 70000}],
                 "volumeMounts": [{"name": "cache", "mountPath": "/c"}]},
                {"name": "web", "image": "x", "imagePullPolicy": "Maybe"}
            ]
        }});
        let got = fields(&validate(def("", "pods"), &pod));
        assert_eq!(
            got,
            vec![
                "FieldValueRequired spec.containers[0].image",
                "FieldValueInvalid spec.containers[0].ports[0].containerPort",
                "FieldValueNotFound spec.containers[0].volumeMounts[0].name",
                "FieldValueDuplicate spec.containers[1].name",
                "FieldValueNotSupported spec.containers[1].imagePullPolicy",
                "FieldValueNotSupported spec.restartPolicy",
            ]
        );
        let empty = fields(&validate(def("", "pods"), &json!({"spec": {}})));
        assert_eq!(empty, vec!["FieldValueRequired spec.containers"]);
    }

    #[test]
    fn immutable_fields_are_refused_on_update() {
        let d = def("apps", "deployments");
        let old = deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}));
        let new = deployment(json!({"matchLabels": {"app": "b"}}), json!({"app": "b"}));
        assert_eq!(
            fields(&validate_update(d, &old, &new)),
            vec!["FieldValueInvalid spec.selector"]
        );
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(validate_update(d, &old, &scaled).is_empty());

        let pod = json!({"spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "a"}]}});
        let mut new_image = pod.clone();
        new_image["spec"]["containers"][0]["image"] = json!("b");
        assert!(validate_update(def("", "pods"), &pod, &new_image).is_empty());
        let mut new_name = pod.clone();
        new_name["spec"]["containers"][0]["name"] = json!("d");
        assert_eq!(
            fields(&validate_update(def("", "pods"), &pod, &new_name)),
            vec!["FieldValueForbidden spec"]
        );
    }

    #[test]
    fn services_check_ports_and_types() {
        let svc = json!({"spec": {"type": "Weird", "ports": [
            {"name": "a", "port": 0}, {"port": 80, "protocol": "ICMP"}
        ]}});
        assert_eq!(
            fields(&validate(def("", "services"), &svc)),
            vec![
                "FieldValueNotSupported spec.type",
                "FieldValueInvalid spec.ports[0].port",
                "FieldValueRequired spec.ports[1].name",
                "FieldValueNotSupported spec.ports[1].protocol",
            ]
        );
        let headless = json!({"spec": {"clusterIP": "None", "selector": {"a": "b"}}});
        assert!(validate(def("", "services"), &headless).is_empty());
    }

    #[test]
    fn jobs_only_allow_onfailure_or_never() {
        let job = json!({"spec": {"template": {"spec": {
            "restartPolicy": "Always",
            "containers": [{"name": "c", "image": "i"}]
        }}}});
        assert_eq!(
            fields(&validate(def("batch", "jobs"), &job)),
            vec!["FieldValueNotSupported spec.template.spec.restartPolicy"]
        );
    }

    #[test]
    fn config_keys_must_be_valid() {
        let cm = json!({"data": {"ok.key": "1", "bad key": "2"}});
        assert_eq!(
            fields(&validate(def("", "configmaps"), &cm)),
            vec!["FieldValueInvalid data"]
        );
    }
}
