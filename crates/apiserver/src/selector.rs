//! Label and field selectors: parsing the query parameters and matching
//! objects. Pure functions, no IO.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::resources::ResourceDef;

/// A selector that cannot be parsed; rendered as a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::Equals | Op::In => value.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == Op::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Token>, SelectorError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1
            }
            ')' => {
                out.push(Token::Close);
                i += 1
            }
            ',' => {
                out.push(Token::Comma);
                i += 1
            }
            '>' => {
                out.push(Token::Gt);
                i += 1
            }
            '<' => {
                out.push(Token::Lt);
                i += 1
            }
            '!' if next == Some('=') => {
                out.push(Token::NotEq);
                i += 2
            }
            '!' => {
                out.push(Token::Not);
                i += 1
            }
            '=' if next == Some('=') => {
                out.push(Token::DoubleEq);
                i += 2
            }
            '=' => {
                out.push(Token::Eq);
                i += 1
            }
            _ => {
                let start = i;
                while i < chars.len() && !" \t\r\n(),<>!=".contains(chars[i]) {
                    i += 1;
                }
                if start == i {
                    return Err(SelectorError(s.to_string()));
                }
                out.push(Token::Ident(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

impl LabelSelector {
    /// Parses Kubernetes' label selector syntax: `a=b`, `a==b`, `a!=b`,
    /// `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`, comma-separated.
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let err = || SelectorError(s.to_string());
        let tokens = tokenize(s)?;
        let mut reqs = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let (req, next) = match (&tokens[i], tokens.get(i + 1)) {
                (Token::Not, Some(Token::Ident(key))) => (
                    Requirement {
                        key: key.clone(),
                        op: Op::DoesNotExist,
                        values: vec![],
                    },
                    i + 2,
                ),
                (Token::Ident(key), None | Some(Token::Comma)) => (
                    Requirement {
                        key: key.clone(),
                        op: Op::Exists,
                        values: vec![],
                    },
                    i + 1,
                ),
                (Token::Ident(key), Some(op @ (Token::Eq | Token::DoubleEq | Token::NotEq))) => {
                    let op = if *op == Token::NotEq {
                        Op::NotEquals
                    } else {
                        Op::Equals
                    };
                    // An empty value (`a=`) is allowed.
                    match tokens.get(i + 2) {
                        Some(Token::Ident(v)) => (
                            Requirement {
                                key: key.clone(),
                                op,
                                values: vec![v.clone()],
                            },
                            i + 3,
                        ),
                        None | Some(Token::Comma) => (
                            Requirement {
                                key: key.clone(),
                                op,
                                values: vec![String::new()],
                            },
                            i + 2,
                        ),
                        _ => return Err(err()),
                    }
                }
                (Token::Ident(key), Some(op @ (Token::Gt | Token::Lt))) => {
                    let op = if *op == Token::Gt {
                        Op::GreaterThan
                    } else {
                        Op::LessThan
                    };
                    match tokens.get(i + 2) {
                        Some(Token::Ident(v)) if v.parse::<i64>().is_ok() => (
                            Requirement {
                                key: key.clone(),
                                op,
                                values: vec![v.clone()],
                            },
                            i + 3,
                        ),
                        _ => return Err(err()),
                    }
                }
                (Token::Ident(key), Some(Token::Ident(word)))
                    if word == "in" || word == "notin" =>
                {
                    let op = if word == "in" { Op::In } else { Op::NotIn };
                    if tokens.get(i + 2) != Some(&Token::Open) {
                        return Err(err());
                    }
                    let mut j = i + 3;
                    let mut values = Vec::new();
                    loop {
                        match tokens.get(j) {
                            Some(Token::Ident(v)) => {
                                values.push(v.clone());
                                j += 1;
                                match tokens.get(j) {
                                    Some(Token::Comma) => j += 1,
                                    Some(Token::Close) => break,
                                    _ => return Err(err()),
                                }
                            }
                            Some(Token::Close) if values.is_empty() => break,
                            _ => return Err(err()),
                        }
                    }
                    if values.is_empty() {
                        return Err(err());
                    }
                    (
                        Requirement {
                            key: key.clone(),
                            op,
                            values,
                        },
                        j + 1,
                    )
                }
                _ => return Err(err()),
            };
            if req.key.is_empty() {
                return Err(err());
            }
            reqs.push(req);
            i = next;
            match tokens.get(i) {
                None => {}
                Some(Token::Comma) if i + 1 < tokens.len() => i += 1,
                _ => return Err(err()),
            }
        }
        Ok(LabelSelector { requirements: reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// One `field=value` / `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub equals: bool,
    pub value: String,
}

/// A parsed field selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

/// The fields a kind supports in field selectors besides `metadata.name`
/// and `metadata.namespace`, as Kubernetes registers them.
fn extra_fields(def: &ResourceDef) -> &'static [&'static str] {
    match (def.group, def.plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") => &["status.replicas"],
        ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d` (also `a==b`) and checks that every field is one
    /// `def` supports.
    pub fn parse(s: &str, def: &ResourceDef) -> Result<FieldSelector, SelectorError> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equals, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError(format!("invalid selector: '{s}'")));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !extra_fields(def).contains(&field)
            {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            reqs.push(FieldRequirement {
                field: field.to_string(),
                equals,
                value: value.trim().to_string(),
            });
        }
        Ok(FieldSelector { requirements: reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when every term holds for `obj`.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) == r.equals
        })
    }
}

/// The string form of a dotted field of `obj`; `""` when absent, as
/// Kubernetes' field sets default missing fields.
fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // `source` of an event is an object; Kubernetes selects its component.
        Value::Object(m) => m
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The labels of an object as a map (non-string values are ignored).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What selectors look at in an object, extracted once (the watch cache
/// keeps these beside each object instead of the parsed object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub labels: BTreeMap<String, String>,
    /// `metadata.name`, `metadata.namespace` and the kind's extra fields.
    pub fields: Vec<(&'static str, String)>,
}

impl Attrs {
    pub fn of(def: &ResourceDef, obj: &Value) -> Attrs {
        let mut fields = Vec::with_capacity(2 + extra_fields(def).len());
        for field in ["metadata.name", "metadata.namespace"]
            .iter()
            .chain(extra_fields(def))
        {
            fields.push((*field, field_value(obj, field)));
        }
        Attrs {
            labels: labels_of(obj),
            fields,
        }
    }

    fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// Label and field selector together.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, obj: &Value) -> bool {
        (self.labels.is_empty() || self.labels.matches(&labels_of(obj)))
            && (self.fields.is_empty() || self.fields.matches(obj))
    }

    /// The same answer as [`Selectors::matches`] from extracted [`Attrs`].
    pub fn matches_attrs(&self, attrs: &Attrs) -> bool {
        (self.labels.is_empty() || self.labels.matches(&attrs.labels))
            && self
                .fields
                .requirements
                .iter()
                .all(|r| (attrs.field(&r.field) == r.value) == r.equals)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
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
    fn label_selector_matches_like_kubernetes() {
        let obj = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        // (name, selector, matches obj)
        let cases: &[(&str, &str, bool)] = &[
            ("empty selects all", "", true),
            ("equals", "app=web", true),
            ("double equals", "app==web", true),
            ("equals other value", "app=db", false),
            ("not equals", "app!=db", true),
            ("not equals missing key", "missing!=x", true),
            ("not equals same", "app!=web", false),
            ("in", "tier in (front, back)", true),
            ("in without space", "tier in(back,front)", true),
            ("in miss", "tier in (back)", false),
            ("notin", "tier notin (back)", true),
            ("notin missing key", "missing notin (x)", true),
            ("notin hit", "tier notin (front)", false),
            ("exists", "app", true),
            ("exists missing", "missing", false),
            ("does not exist", "!missing", true),
            ("does not exist present", "!app", false),
            ("greater than", "n>4", true),
            ("less than", "n<5", false),
            ("conjunction", "app=web,tier in (front),!missing", true),
            ("conjunction one fails", "app=web,tier=back", false),
            ("empty value", "app=", false),
            ("qualified key", "app.kubernetes.io/name", false),
        ];
        for (name, sel, want) in cases {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.matches(&obj), *want, "{name}: {sel}");
        }
    }

    #[test]
    fn label_selector_rejects_malformed_input() {
        let cases: &[(&str, &str)] = &[
            ("dangling comma", "app=web,"),
            ("in without parens", "app in web"),
            ("unclosed in", "app in (a,b"),
            ("empty in", "app in ()"),
            ("operator without key", "=web"),
            ("not without key", "!"),
            ("non numeric gt", "n>x"),
            ("two values", "a=b c"),
        ];
        for (name, sel) in cases {
            assert!(LabelSelector::parse(sel).is_err(), "{name}: {sel} parsed");
        }
    }

    #[test]
    fn field_selector_matches_supported_fields_and_rejects_others() {
        let pods = crate::resources::find("", "v1", "pods").expect("pods");
        let cms = crate::resources::find("", "v1", "configmaps").expect("configmaps");
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let cases: &[(&str, &ResourceDef, &str, Option<bool>)] = &[
            ("name equals", pods, "metadata.name=a", Some(true)),
            ("name double equals", pods, "metadata.name==b", Some(false)),
            (
                "namespace not equals",
                pods,
                "metadata.namespace!=ns",
                Some(false),
            ),
            (
                "pod node name",
                pods,
                "spec.nodeName=n1,status.phase=Running",
                Some(true),
            ),
            (
                "missing field is empty",
                pods,
                "spec.schedulerName=",
                Some(true),
            ),
            ("unsupported for kind", cms, "spec.nodeName=n1", None),
            ("no operator", pods, "metadata.name", None),
        ];
        for (name, def, sel, want) in cases {
            match (FieldSelector::parse(sel, def), want) {
                (Ok(s), Some(want)) => assert_eq!(s.matches(&pod), *want, "{name}"),
                (Err(_), None) => {}
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
