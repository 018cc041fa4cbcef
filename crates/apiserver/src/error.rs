//! The API server's one error type. Every failure a client sees is rendered
//! as a `metav1.Status` with Kubernetes' reason, code and message format.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// One invalid field of an object (`details.causes[]` of a 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, …
    pub reason: &'static str,
    /// The JSON path of the field, e.g. `metadata.name`.
    pub field: String,
    /// What is wrong, e.g. `Invalid value: "x": …`.
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", json!(value)),
        }
    }

    /// `Invalid value` for a value of any JSON type (numbers print bare).
    pub fn invalid_value(field: impl Into<String>, value: &Value, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> FieldError {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    pub fn not_supported(
        field: impl Into<String>,
        value: &Value,
        supported: &[&str],
    ) -> FieldError {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    pub fn not_found(field: impl Into<String>, value: &Value) -> FieldError {
        FieldError {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {value}"),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> FieldError {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value{detail}"),
        }
    }
}

/// Identifies a resource in messages: `pods`, `deployments.apps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn of(def: &ResourceDef) -> GroupResource {
        GroupResource {
            group: def.group.to_string(),
            resource: def.plural.to_string(),
        }
    }

    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// What a request can fail with; rendered by [`IntoResponse`] as a Status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} {name:?} not found", .resource.qualified())]
    NotFound {
        resource: GroupResource,
        name: String,
    },

    #[error("the server could not find the requested resource")]
    UnknownPath,

    #[error("{} {name:?} already exists", .resource.qualified())]
    AlreadyExists {
        resource: GroupResource,
        name: String,
    },

    #[error(
        "Operation cannot be fulfilled on {} {name:?}: {detail}",
        .resource.qualified()
    )]
    Conflict {
        resource: GroupResource,
        name: String,
        detail: String,
    },

    /// A server-side apply that would change fields other managers own.
    #[error("{}", apply_conflict_message(.conflicts))]
    ApplyConflict {
        resource: GroupResource,
        name: String,
        /// (manager, field path) pairs.
        conflicts: Vec<(String, String)>,
    },

    #[error("{}", invalid_message(.kind, .group, .name, .causes))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<FieldError>,
    },

    #[error("{} {name:?} is forbidden: {detail}", .resource.qualified())]
    Forbidden {
        resource: GroupResource,
        name: String,
        detail: String,
    },

    /// 403 from the namespace lifecycle admission: a create in a namespace
    /// that is being deleted.
    #[error(
        "{} {name:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
        .resource.qualified()
    )]
    NamespaceTerminating {
        resource: GroupResource,
        name: String,
        namespace: String,
    },

    /// 429 with reason `TooManyRequests` (an eviction that its disruption
    /// budget does not allow); `cause` is a `DisruptionBudget` cause.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_seconds: u32,
        cause: Option<String>,
    },

    #[error("{0}")]
    BadRequest(String),

    /// 410 with reason `Expired`: a watch or continue token too old for the
    /// store's history.
    #[error("{0}")]
    Expired(String),

    #[error("Unauthorized")]
    Unauthorized,

    #[error("{0}")]
    UnsupportedMediaType(String),

    /// 406: no offered media type is acceptable to the client.
    #[error("{0}")]
    NotAcceptable(String),

    #[error("Request entity too large: limit is {limit}")]
    RequestEntityTooLarge { limit: usize },

    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,

    /// 504 with reason `Timeout`, what Kubernetes answers for a resource
    /// version newer than the store's.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: i64, current: i64 },

    #[error("Internal error occurred: {0}")]
    Internal(String),

    /// A backend the request needs (a node agent) cannot be reached.
    #[error("{0}")]
    ServiceUnavailable(String),
}

/// Kubernetes' form: `Apply failed with 1 conflict: conflict with "m": .spec.x`.
fn apply_conflict_message(conflicts: &[(String, String)]) -> String {
    let n = conflicts.len();
    let plural = if n == 1 { "" } else { "s" };
    let mut by_manager: Vec<(&str, Vec<&str>)> = Vec::new();
    for (manager, field) in conflicts {
        match by_manager.iter_mut().find(|(m, _)| m == manager) {
            Some((_, fields)) => fields.push(field),
            None => by_manager.push((manager, vec![field])),
        }
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(manager, fields)| {
            if fields.len() == 1 {
                format!("conflict with {manager:?}: {}", fields[0])
            } else {
                let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                format!("conflicts with {manager:?}:\n{}", list.join("\n"))
            }
        })
        .collect();
    format!(
        "Apply failed with {n} conflict{plural}: {}",
        parts.join("\n")
    )
}

fn invalid_message(kind: &str, group: &str, name: &str, causes: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let render = |c: &FieldError| format!("{}: {}", c.field, c.message);
    let list = match causes {
        [one] => render(one),
        many => format!(
            "[{}]",
            many.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
    };
    format!("{qualified} {name:?} is invalid: {list}")
}

impl From<skiff_store::Error> for ApiError {
    fn from(e: skiff_store::Error) -> Self {
        // The semantic answers are mapped where the resource is known; what
        // reaches here is a fault of the store.
        tracing::error!(error = %e, "store error");
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Forbidden { .. } | ApiError::NamespaceTerminating { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::RequestEntityTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLargeResourceVersion { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Forbidden { .. } | ApiError::NamespaceTerminating { .. } => "Forbidden",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Expired(_) => "Expired",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::RequestEntityTooLarge { .. } => "RequestEntityTooLarge",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::Internal(_) => "InternalError",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
        }
    }

    /// The `metav1.Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. }
            | ApiError::Forbidden { resource, name, .. } => Some(json!({
                "name": name,
                "group": resource.group,
                "kind": resource.resource,
            })),
            ApiError::ApplyConflict {
                resource,
                name,
                conflicts,
            } => Some(json!({
                "name": name,
                "group": resource.group,
                "kind": resource.resource,
                "causes": conflicts.iter().map(|(manager, field)| json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {manager:?}"),
                    "field": field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason,
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::NamespaceTerminating {
                resource,
                name,
                namespace,
            } => Some(json!({
                "name": name,
                "group": resource.group,
                "kind": resource.resource,
                "causes": [{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {namespace} is being terminated"),
                    "field": "metadata.namespace",
                }],
            })),
            ApiError::TooManyRequests {
                retry_after_seconds,
                cause,
                ..
            } => {
                let mut details = json!({});
                if let Some(cause) = cause {
                    details["causes"] = json!([{"reason": "DisruptionBudget", "message": cause}]);
                }
                if *retry_after_seconds > 0 {
                    details["retryAfterSeconds"] = json!(retry_after_seconds);
                }
                Some(details)
            }
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            ApiError::UnknownPath => Some(json!({})),
            _ => None,
        };
        if let (Some(details), Some(obj)) = (details, status.as_object_mut()) {
            // Kubernetes omits empty strings in details.
            let details = match details {
                Value::Object(map) => Value::Object(
                    map.into_iter()
                        .filter(|(_, v)| v.as_str() != Some(""))
                        .collect(),
                ),
                other => other,
            };
            obj.insert("details".into(), details);
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal(_)) {
            tracing::warn!(error = %self, "request failed");
        }
        crate::json_response(self.code(), &self.status())
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> GroupResource {
        GroupResource {
            group: String::new(),
            resource: "pods".into(),
        }
    }

    #[test]
    fn status_messages_match_kubernetes_formats() {
        let deployments = GroupResource {
            group: "apps".into(),
            resource: "deployments".into(),
        };
        let cases: Vec<(&str, ApiError, u16, &str, &str)> = vec![
            (
                "not found core",
                ApiError::NotFound {
                    resource: pods(),
                    name: "x".into(),
                },
                404,
                "NotFound",
                r#"pods "x" not found"#,
            ),
            (
                "not found grouped",
                ApiError::NotFound {
                    resource: deployments.clone(),
                    name: "web".into(),
                },
                404,
                "NotFound",
                r#"deployments.apps "web" not found"#,
            ),
            (
                "already exists",
                ApiError::AlreadyExists {
                    resource: pods(),
                    name: "x".into(),
                },
                409,
                "AlreadyExists",
                r#"pods "x" already exists"#,
            ),
            (
                "conflict",
                ApiError::Conflict {
                    resource: pods(),
                    name: "x".into(),
                    detail: crate::registry::MODIFIED.into(),
                },
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on pods "x": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
            (
                "invalid single cause",
                ApiError::Invalid {
                    kind: "ConfigMap".into(),
                    group: String::new(),
                    name: "A".into(),
                    causes: vec![FieldError::invalid("metadata.name", "A", "bad")],
                },
                422,
                "Invalid",
                r#"ConfigMap "A" is invalid: metadata.name: Invalid value: "A": bad"#,
            ),
            (
                "invalid two causes grouped",
                ApiError::Invalid {
                    kind: "Deployment".into(),
                    group: "apps".into(),
                    name: "A".into(),
                    causes: vec![
                        FieldError::invalid("metadata.name", "A", "bad"),
                        FieldError::required("metadata.namespace", ""),
                    ],
                },
                422,
                "Invalid",
                r#"Deployment.apps "A" is invalid: [metadata.name: Invalid value: "A": bad, metadata.namespace: Required value]"#,
            ),
        ];
        for (name, err, code, reason, message) in cases {
            let status = err.status();
            assert_eq!(status["code"], code, "{name}");
            assert_eq!(status["reason"], reason, "{name}");
            assert_eq!(status["message"], message, "{name}");
            assert_eq!(status["kind"], "Status", "{name}");
            assert_eq!(status["status"], "Failure", "{name}");
        }
    }

    #[test]
    fn details_omit_empty_group() {
        let status = ApiError::NotFound {
            resource: pods(),
            name: "x".into(),
        }
        .status();
        assert_eq!(status["details"], json!({"name": "x", "kind": "pods"}));
    }
}
