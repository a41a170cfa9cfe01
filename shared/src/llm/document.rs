//! Conversion between JSON values and the SDK's `Document`, in which tool schemas and tool
//! answers travel. One small tested function each way, so no SDK type leaks past the adapter.

use aws_smithy_types::{Document, Number};
use serde_json::Value;

use super::validate::AnswerError;

pub fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Document::Number(Number::PosInt(u))
            } else if let Some(i) = n.as_i64() {
                Document::Number(Number::NegInt(i))
            } else {
                Document::Number(Number::Float(n.as_f64().unwrap_or(0.0)))
            }
        }
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect(),
        ),
    }
}

/// A model's tool input as JSON. Non-finite floats (which JSON cannot hold) are refused.
pub fn from_document(doc: &Document) -> Result<Value, AnswerError> {
    Ok(match doc {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .ok_or_else(|| AnswerError::NonFinite("a number in the tool input".into()))?
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => {
            Value::Array(items.iter().map(from_document).collect::<Result<_, _>>()?)
        }
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), from_document(v)?)))
                .collect::<Result<_, AnswerError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_documents() {
        let v = json!({"a": [1, -2, 2.5, true, null, "s"], "b": {"c": u64::MAX}, "d": i64::MIN});
        assert_eq!(from_document(&to_document(&v)), Ok(v));
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let doc =
            Document::Object([("x".to_owned(), Document::Number(Number::Float(f64::NAN)))].into());
        assert!(matches!(
            from_document(&doc),
            Err(AnswerError::NonFinite(_))
        ));
    }
}
