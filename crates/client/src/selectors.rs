//! Matching: label selectors, node selector terms, tolerations against
//! taints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// `metav1.LabelSelectorAsSelector`: `None` matches nothing, an empty
/// selector matches everything.
pub fn label_selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(sel) = selector else { return false };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(v))) = (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// One term: all its expressions and fields must match; a term with
/// neither matches nothing.
pub fn node_selector_term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node_name.to_string();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields.iter().all(|r| {
            // Only metadata.name is a supported field (and only In/NotIn).
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(&name))
        })
}

/// Terms are ORed.
pub fn node_selector_matches(
    sel: &NodeSelector,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.node_selector_terms
        .iter()
        .any(|t| node_selector_term_matches(t, node_name, labels))
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = t.key.as_deref()
        && !key.is_empty()
        && key != taint.key
    {
        return false;
    }
    match t.operator.as_deref() {
        None | Some("") | Some("Equal") => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        Some("Exists") => true,
        _ => false,
    }
}

pub fn tolerations_tolerate(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        struct Case {
            name: &'static str,
            selector: Option<serde_json::Value>,
            labels: &'static [(&'static str, &'static str)],
            want: bool,
        }
        let cases = [
            Case {
                name: "nil matches nothing",
                selector: None,
                labels: &[("a", "b")],
                want: false,
            },
            Case {
                name: "empty matches everything",
                selector: Some(json!({})),
                labels: &[],
                want: true,
            },
            Case {
                name: "matchLabels",
                selector: Some(json!({"matchLabels": {"app": "web"}})),
                labels: &[("app", "web")],
                want: true,
            },
            Case {
                name: "matchLabels mismatch",
                selector: Some(json!({"matchLabels": {"app": "web"}})),
                labels: &[("app", "db")],
                want: false,
            },
            Case {
                name: "In",
                selector: Some(
                    json!({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]}),
                ),
                labels: &[("t", "b")],
                want: true,
            },
            Case {
                name: "NotIn absent",
                selector: Some(
                    json!({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}),
                ),
                labels: &[],
                want: true,
            },
            Case {
                name: "Exists",
                selector: Some(json!({"matchExpressions": [{"key": "t", "operator": "Exists"}]})),
                labels: &[],
                want: false,
            },
            Case {
                name: "DoesNotExist",
                selector: Some(
                    json!({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}),
                ),
                labels: &[("t", "x")],
                want: false,
            },
        ];
        for c in cases {
            let sel: Option<LabelSelector> = c.selector.map(|v| serde_json::from_value(v).unwrap());
            assert_eq!(
                label_selector_matches(sel.as_ref(), &labels(c.labels)),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn tolerations() {
        struct Case {
            name: &'static str,
            toleration: serde_json::Value,
            taint: serde_json::Value,
            want: bool,
        }
        let taint = json!({"key": "k", "value": "v", "effect": "NoSchedule"});
        let cases = [
            Case {
                name: "equal key value effect",
                toleration: json!({"key": "k", "value": "v", "effect": "NoSchedule"}),
                taint: taint.clone(),
                want: true,
            },
            Case {
                name: "default operator is Equal",
                toleration: json!({"key": "k", "value": "w"}),
                taint: taint.clone(),
                want: false,
            },
            Case {
                name: "exists any value",
                toleration: json!({"key": "k", "operator": "Exists"}),
                taint: taint.clone(),
                want: true,
            },
            Case {
                name: "empty key exists tolerates all",
                toleration: json!({"operator": "Exists"}),
                taint: taint.clone(),
                want: true,
            },
            Case {
                name: "effect mismatch",
                toleration: json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}),
                taint: taint.clone(),
                want: false,
            },
            Case {
                name: "empty value equals empty value",
                toleration: json!({"key": "k", "operator": "Equal"}),
                taint: json!({"key": "k", "effect": "NoSchedule"}),
                want: true,
            },
            Case {
                name: "unknown operator",
                toleration: json!({"key": "k", "operator": "Gt", "value": "v"}),
                taint: taint.clone(),
                want: false,
            },
        ];
        for c in cases {
            let t: Toleration = serde_json::from_value(c.toleration).unwrap();
            let taint: Taint = serde_json::from_value(c.taint).unwrap();
            assert_eq!(tolerates(&t, &taint), c.want, "{}", c.name);
        }
    }
}
