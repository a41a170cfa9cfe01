//! The deployment template as CloudFormation JSON: the YAML's short-form tags (`!Ref X`,
//! `!GetAtt A.B`, `!Sub ...`, `!If [...]`) become their long forms (`{"Ref": "X"}`,
//! `{"Fn::GetAtt": ["A", "B"]}`, ...), so the checks read one shape whichever form the file uses.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use serde_norway::Value as Yaml;

/// The repository root (the parent of the `tests` package).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `infra/template.yaml`, relative to the repository root.
pub const TEMPLATE: &str = "infra/template.yaml";

#[derive(Debug)]
pub struct Template {
    /// The file as written (for checks of its comments).
    pub text: String,
    pub root: Value,
}

/// The template, parsed once per test binary.
pub fn template() -> &'static Template {
    static TEMPLATE_CELL: OnceLock<Template> = OnceLock::new();
    TEMPLATE_CELL.get_or_init(|| {
        let path = repo_root().join(TEMPLATE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let yaml: Yaml = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        Template {
            root: to_json(yaml),
            text,
        }
    })
}

/// Converts YAML to CloudFormation JSON, expanding short-form tags.
pub fn to_json(yaml: Yaml) -> Value {
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(u) = n.as_u64() {
                json!(u)
            } else if let Some(i) = n.as_i64() {
                json!(i)
            } else {
                n.as_f64().map_or(Value::Null, |f| json!(f))
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                let key = match to_json(key) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, to_json(value));
            }
            Value::Object(map)
        }
        Yaml::Tagged(tagged) => {
            let name = tagged.tag.to_string();
            let name = name.trim_start_matches('!');
            let value = to_json(tagged.value);
            match (name, value) {
                ("Ref", value) => json!({ "Ref": value }),
                ("Condition", value) => json!({ "Condition": value }),
                ("GetAtt", Value::String(path)) => {
                    let (resource, attribute) = path.split_once('.').unwrap_or((&path, ""));
                    json!({ "Fn::GetAtt": [resource, attribute] })
                }
                (other, value) => json!({ format!("Fn::{other}"): value }),
            }
        }
    }
}

impl Template {
    pub fn resources(&self) -> &Map<String, Value> {
        self.root["Resources"]
            .as_object()
            .expect("the template has Resources")
    }

    pub fn resource(&self, logical_id: &str) -> &Value {
        self.resources()
            .get(logical_id)
            .unwrap_or_else(|| panic!("no resource {logical_id} in the template"))
    }

    /// `(logical id, resource)` of every resource of `kind`, in file order.
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.resources()
            .iter()
            .filter(move |(_, r)| r["Type"] == kind)
            .map(|(id, r)| (id.as_str(), r))
    }

    pub fn parameter(&self, name: &str) -> &Value {
        self.root["Parameters"]
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name} in the template"))
    }

    pub fn mapping(&self, name: &str) -> &Value {
        self.root["Mappings"]
            .get(name)
            .unwrap_or_else(|| panic!("no mapping {name} in the template"))
    }
}

/// The logical id `value` points at: `{"Ref": X}` or `{"Fn::GetAtt": [X, _]}`.
pub fn target(value: &Value) -> Option<&str> {
    if let Some(id) = value.get("Ref").and_then(Value::as_str) {
        return Some(id);
    }
    value
        .get("Fn::GetAtt")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
}

/// The text of a string or of a `Fn::Sub` (its template string).
pub fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(_) => match &value["Fn::Sub"] {
            Value::String(s) => Some(s),
            Value::Array(parts) => parts.first().and_then(Value::as_str),
            _ => None,
        },
        _ => None,
    }
}

/// The values `value` can take: a list's items, both branches of an `Fn::If` (without
/// `AWS::NoValue`), or the value itself.
pub fn alternatives(value: &Value) -> Vec<&Value> {
    if let Some(branches) = value.get("Fn::If").and_then(Value::as_array) {
        return branches
            .iter()
            .skip(1)
            .flat_map(alternatives)
            .filter(|v| !is_no_value(v))
            .collect();
    }
    match value {
        Value::Array(items) => items.iter().flat_map(alternatives).collect(),
        Value::Null => Vec::new(),
        other if is_no_value(other) => Vec::new(),
        other => vec![other],
    }
}

fn is_no_value(value: &Value) -> bool {
    value.get("Ref").and_then(Value::as_str) == Some("AWS::NoValue")
}

/// The statements of a policy document, conditional ones included.
pub fn statements(document: &Value) -> Vec<&Value> {
    alternatives(&document["Statement"])
}

/// A statement's actions (`Action` or `NotAction`), as written.
pub fn actions(statement: &Value) -> Vec<&str> {
    alternatives(&statement["Action"])
        .into_iter()
        .chain(alternatives(&statement["NotAction"]))
        .filter_map(Value::as_str)
        .collect()
}

/// A statement's resources, as written (`"*"`, a string, or an intrinsic function).
pub fn resources_of(statement: &Value) -> Vec<&Value> {
    alternatives(&statement["Resource"])
}

/// Every policy document in the template with where it is: `(logical id, path, document)`.
pub fn policy_documents(template: &Template) -> Vec<(&str, String, &Value)> {
    let mut out = Vec::new();
    for (id, resource) in template.resources() {
        let properties = &resource["Properties"];
        for key in ["PolicyDocument", "KeyPolicy", "AssumeRolePolicyDocument"] {
            if properties.get(key).is_some() {
                out.push((id.as_str(), key.to_owned(), &properties[key]));
            }
        }
        if let Some(policies) = properties.get("Policies").and_then(Value::as_array) {
            for (i, policy) in policies.iter().enumerate() {
                if policy.get("PolicyDocument").is_some() {
                    out.push((
                        id.as_str(),
                        format!("Policies[{i}]"),
                        &policy["PolicyDocument"],
                    ));
                }
            }
        }
    }
    out
}
