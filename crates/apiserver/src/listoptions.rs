//! Validation of list and watch options as Kubernetes'
//! `ValidateListOptions` does (`resourceVersionMatch`, `sendInitialEvents`),
//! and what they mean for where a list or watch starts.

use crate::error::{ApiError, ApiResult, FieldError};
use crate::registry::Params;

/// The annotation of the bookmark that ends the initial events of a watch
/// with `sendInitialEvents=true`.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {detail}"),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let list = supported
        .iter()
        .map(|s| serde_json::json!(s).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    FieldError {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: {}: supported values: {list}",
            serde_json::json!(value)
        ),
    }
}

/// `ValidateListOptions`: a 422 `ListOptions.meta.k8s.io` naming each
/// invalid option.
pub fn validate(params: &Params) -> ApiResult<()> {
    let rv = params.resource_version.as_deref().unwrap_or_default();
    let continuing = params
        .continue_token
        .as_deref()
        .is_some_and(|c| !c.is_empty());
    let matching = params
        .resource_version_match
        .as_deref()
        .filter(|m| !m.is_empty());
    let mut causes = Vec::new();
    if params.is_watch() {
        if params.send_initial_events.is_some() && matching != Some("NotOlderThan") {
            causes.push(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(m) = matching {
            if params.send_initial_events.is_none() {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                causes.push(not_supported("resourceVersionMatch", m, &["NotOlderThan"]));
            }
            if continuing {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if let Some(m) = matching {
            if rv.is_empty() {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if continuing {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                causes.push(not_supported(
                    "resourceVersionMatch",
                    m,
                    &["Exact", "NotOlderThan", ""],
                ));
            }
            if m == "Exact" && rv == "0" {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if params.send_initial_events.is_some() {
            causes.push(forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            kind: "ListOptions".into(),
            group: "meta.k8s.io".into(),
            name: String::new(),
            causes,
        })
    }
}

/// Where a watch starts and whether it first replays the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Replay the current state as ADDED events, then follow.
    /// `end_bookmark`: close the replay with the initial-events-end bookmark.
    /// `not_older_than`: the state must be at least this revision.
    Replay {
        end_bookmark: bool,
        not_older_than: Option<i64>,
    },
    /// Only changes after the current revision.
    Now,
    /// Only changes after this revision.
    After(i64),
}

/// The start of a watch from its options (already validated).
pub fn watch_start(params: &Params) -> ApiResult<WatchStart> {
    let rv = params.resource_version.as_deref().unwrap_or_default();
    let parse = |rv: &str| {
        rv.parse::<i64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))
    };
    Ok(match params.send_initial_events {
        Some(true) => WatchStart::Replay {
            end_bookmark: params.allow_watch_bookmarks == Some(true),
            not_older_than: match rv {
                "" | "0" => None,
                rv => Some(parse(rv)?),
            },
        },
        Some(false) => match rv {
            "" | "0" => WatchStart::Now,
            rv => WatchStart::After(parse(rv)?),
        },
        None => match rv {
            "" | "0" => WatchStart::Replay {
                end_bookmark: false,
                not_older_than: None,
            },
            rv => WatchStart::After(parse(rv)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Params {
        let uri: axum::http::Uri = format!("/x?{query}").parse().expect("uri");
        axum::extract::Query::<Params>::try_from_uri(&uri)
            .expect("query")
            .0
    }

    #[test]
    fn list_options_are_validated_like_kubernetes() {
        let cases = [
            ("plain", "", None),
            (
                "exact",
                "resourceVersion=5&resourceVersionMatch=Exact",
                None,
            ),
            (
                "not older",
                "resourceVersion=0&resourceVersionMatch=NotOlderThan",
                None,
            ),
            (
                "match without version",
                "resourceVersionMatch=Exact",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"#,
                ),
            ),
            (
                "exact zero",
                "resourceVersion=0&resourceVersionMatch=Exact",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0""#,
                ),
            ),
            (
                "unknown match",
                "resourceVersion=3&resourceVersionMatch=Newest",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", """#,
                ),
            ),
            (
                "with continue",
                "resourceVersion=3&resourceVersionMatch=Exact&continue=abc",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided"#,
                ),
            ),
            (
                "initial events on list",
                "sendInitialEvents=true",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"#,
                ),
            ),
            (
                "streaming watch",
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
                None,
            ),
            (
                "initial events without match",
                "watch=1&sendInitialEvents=true",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"#,
                ),
            ),
            (
                "watch match without initial events",
                "watch=1&resourceVersionMatch=NotOlderThan",
                Some(
                    r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"#,
                ),
            ),
        ];
        for (name, query, want) in cases {
            let got = validate(&params(query)).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn watches_start_where_their_options_say() {
        let cases = [
            (
                "no version replays",
                "watch=1",
                WatchStart::Replay {
                    end_bookmark: false,
                    not_older_than: None,
                },
            ),
            (
                "zero replays",
                "watch=1&resourceVersion=0",
                WatchStart::Replay {
                    end_bookmark: false,
                    not_older_than: None,
                },
            ),
            (
                "a version follows",
                "watch=1&resourceVersion=7",
                WatchStart::After(7),
            ),
            (
                "streaming list",
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=4",
                WatchStart::Replay {
                    end_bookmark: true,
                    not_older_than: Some(4),
                },
            ),
            (
                "no initial events",
                "watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan",
                WatchStart::Now,
            ),
        ];
        for (name, query, want) in cases {
            assert_eq!(watch_start(&params(query)).ok(), Some(want), "{name}");
        }
    }
}
