//! Generic validation of object metadata (names, labels); per-kind rules
//! are in [`crate::kinds`]. Pure functions, no IO.

use serde_json::Value;

use crate::error::FieldError;
use crate::resources::NameRule;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub(crate) fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_label_1035(s: &str) -> bool {
    is_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The errors of `name` under `rule`, at field `field`.
pub fn validate_name(rule: NameRule, name: &str, field: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > DNS1123_SUBDOMAIN_MAX {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    "must be no more than 253 characters",
                ));
            } else if !is_subdomain(name) {
                errs.push(FieldError::invalid(field, name, SUBDOMAIN_MSG));
            }
        }
        NameRule::Label => {
            if name.len() > DNS1123_LABEL_MAX {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    "must be no more than 63 characters",
                ));
            } else if !is_label(name) {
                errs.push(FieldError::invalid(field, name, LABEL_MSG));
            }
        }
        NameRule::Label1035 => {
            if name.len() > DNS1123_LABEL_MAX {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    "must be no more than 63 characters",
                ));
            } else if !is_label_1035(name) {
                errs.push(FieldError::invalid(field, name, LABEL1035_MSG));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    &format!("may not be '{name}'"),
                ));
            } else if name.contains('/') || name.contains('%') {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    "may not contain '/' or '%'",
                ));
            }
        }
    }
    errs
}

/// Label keys are qualified names (`[prefix/]name`), values are at most 63
/// characters of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
fn validate_labels(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(labels) = obj.pointer("/metadata/labels") else {
        return errs;
    };
    let Some(labels) = labels.as_object() else {
        if !labels.is_null() {
            errs.push(FieldError::invalid(
                "metadata.labels",
                "",
                "must be a map of strings",
            ));
        }
        return errs;
    };
    for (k, v) in labels {
        if !is_qualified_name(k) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        match v.as_str() {
            Some(v) if is_label_value(v) => {}
            Some(v) => errs.push(FieldError::invalid(
                "metadata.labels",
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            )),
            None => errs.push(FieldError::invalid("metadata.labels", k, "label values must be strings")),
        }
    }
    errs
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_subdomain(prefix) && is_name_part(name),
        None => is_name_part(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

/// Validates the generic metadata of an object about to be stored.
pub fn validate_metadata(obj: &Value, rule: NameRule, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => errs.extend(validate_name(rule, name, "metadata.name")),
        _ => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
    }
    if namespaced {
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => {
                errs.extend(validate_name(NameRule::Label, ns, "metadata.namespace"))
            }
            _ => errs.push(FieldError::required("metadata.namespace", "")),
        }
    }
    if let Some(ann) = obj.pointer("/metadata/annotations")
        && !ann.is_null()
        && !ann
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    {
        errs.push(FieldError::invalid(
            "metadata.annotations",
            "",
            "annotations must be a map of strings",
        ));
    }
    errs.extend(validate_labels(obj));
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_validated_per_rule() {
        let long_label = "a".repeat(64);
        let cases: &[(&str, NameRule, &str, bool)] = &[
            ("simple subdomain", NameRule::Subdomain, "web-1", true),
            ("dotted subdomain", NameRule::Subdomain, "a.b.c", true),
            ("uppercase", NameRule::Subdomain, "Web", false),
            ("underscore", NameRule::Subdomain, "a_b", false),
            ("leading dash", NameRule::Subdomain, "-a", false),
            ("empty segment", NameRule::Subdomain, "a..b", false),
            ("label with dot", NameRule::Label, "a.b", false),
            ("label too long", NameRule::Label, &long_label, false),
            ("1035 digit first", NameRule::Label1035, "1abc", false),
            ("1035 ok", NameRule::Label1035, "abc-1", true),
            (
                "path segment colon",
                NameRule::PathSegment,
                "system:admin",
                true,
            ),
            ("path segment slash", NameRule::PathSegment, "a/b", false),
        ];
        for (name, rule, value, ok) in cases {
            assert_eq!(
                validate_name(*rule, value, "metadata.name").is_empty(),
                *ok,
                "{name}"
            );
        }
    }

    #[test]
    fn metadata_requires_name_and_namespace_and_valid_labels() {
        let cases: &[(&str, Value, bool, &[&str])] = &[
            (
                "valid",
                json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app.kubernetes.io/name": "x"}}}),
                true,
                &[],
            ),
            (
                "missing name",
                json!({"metadata": {"namespace": "ns"}}),
                true,
                &["metadata.name"],
            ),
            (
                "missing namespace",
                json!({"metadata": {"name": "a"}}),
                true,
                &["metadata.namespace"],
            ),
            (
                "cluster scoped needs no namespace",
                json!({"metadata": {"name": "a"}}),
                false,
                &[],
            ),
            (
                "bad label value",
                json!({"metadata": {"name": "a", "labels": {"k": "-x"}}}),
                false,
                &["metadata.labels"],
            ),
            (
                "non string annotation",
                json!({"metadata": {"name": "a", "annotations": {"k": 1}}}),
                false,
                &["metadata.annotations"],
            ),
        ];
        for (name, obj, namespaced, fields) in cases {
            let got: Vec<String> = validate_metadata(obj, NameRule::Subdomain, *namespaced)
                .into_iter()
                .map(|e| e.field)
                .collect();
            assert_eq!(got, *fields, "{name}");
        }
    }
}
