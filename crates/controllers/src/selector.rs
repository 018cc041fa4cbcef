//! `metav1.LabelSelector` matching (shared with the scheduler through
//! `skiff-client`) and its query-string form.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// True when `labels` match `selector`. An empty selector matches
/// everything (as for a ReplicaSet, where the API requires it non-empty).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    skiff_client::selectors::label_selector_matches(Some(selector), labels)
}

/// The selector as a query string (`a=b,c in (d,e)`) for list calls.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut parts = Vec::new();
    if let Some(ml) = &selector.match_labels {
        for (k, v) in ml {
            parts.push(format!("{k}={v}"));
        }
    }
    if let Some(exprs) = &selector.match_expressions {
        for e in exprs {
            let values = e.values.clone().unwrap_or_default().join(",");
            parts.push(match e.operator.as_str() {
                "In" => format!("{} in ({values})", e.key),
                "NotIn" => format!("{} notin ({values})", e.key),
                "Exists" => e.key.clone(),
                "DoesNotExist" => format!("!{}", e.key),
                _ => continue,
            });
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        let cases = [
            ("all match", labels(&[("app", "web"), ("tier", "a")]), true),
            ("wrong app", labels(&[("app", "db"), ("tier", "a")]), false),
            (
                "tier not in set",
                labels(&[("app", "web"), ("tier", "c")]),
                false,
            ),
            (
                "forbidden key",
                labels(&[("app", "web"), ("tier", "b"), ("canary", "1")]),
                false,
            ),
        ];
        for (name, l, want) in cases {
            assert_eq!(matches(&sel, &l), want, "{name}");
        }
        assert_eq!(to_query(&sel), "app=web,tier in (a,b),!canary");
    }
}
