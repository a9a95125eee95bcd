//! Extracts the prompt to classify from the JSON shapes users send: a bare string, an object
//! with a `text`, `prompt` or `input` field, or OpenAI-style `messages`.

use serde_json::Value;

use super::{Prompt, Turn};

/// Why a JSON value holds no usable prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("no prompt: expected a \"text\", \"prompt\", \"input\" or \"messages\" field")]
    Missing,
    #[error("field {field:?} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("message {index}: {message}")]
    BadMessage { index: usize, message: String },
    #[error("the prompt is empty")]
    Empty,
}

/// The text of an OpenAI message `content`: a string, or an array of parts whose `text` parts
/// are joined (images and audio are not text and are skipped). `null` is empty.
pub fn content_text(content: &Value) -> Result<String, String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                let text = match part {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(obj) => obj.get("text").and_then(Value::as_str),
                    _ => return Err("content parts must be objects".into()),
                };
                if let Some(text) = text {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(text);
                }
            }
            Ok(out)
        }
        _ => Err("content must be a string, an array of parts or null".into()),
    }
}

/// Reads OpenAI-style `messages` into turns.
pub fn turns_from_messages(messages: &Value) -> Result<Vec<Turn>, InputError> {
    let Value::Array(items) = messages else {
        return Err(InputError::WrongType {
            field: "messages",
            expected: "an array of messages",
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let obj = m.as_object().ok_or_else(|| InputError::BadMessage {
                index,
                message: "must be an object".into(),
            })?;
            let role =
                obj.get("role")
                    .and_then(Value::as_str)
                    .ok_or_else(|| InputError::BadMessage {
                        index,
                        message: "needs a string \"role\"".into(),
                    })?;
            let content = content_text(obj.get("content").unwrap_or(&Value::Null))
                .map_err(|message| InputError::BadMessage { index, message })?;
            Ok(Turn::new(role, content))
        })
        .collect()
}

/// The prompt carried by a JSON value (see the module docs). An empty prompt is an error.
pub fn prompt_from_json(value: &Value) -> Result<Prompt, InputError> {
    let prompt = match value {
        Value::String(s) => Prompt::text(s.clone()),
        Value::Object(obj) => {
            if let Some(messages) = obj.get("messages") {
                Prompt::from_turns(&turns_from_messages(messages)?)
            } else {
                let (field, v) = ["text", "prompt", "input"]
                    .iter()
                    .find_map(|f| obj.get(*f).map(|v| (*f, v)))
                    .ok_or(InputError::Missing)?;
                match v {
                    Value::String(s) => Prompt::text(s.clone()),
                    // The Responses API and Morph's SDK also accept a list of messages as input.
                    Value::Array(_) if field == "input" => {
                        Prompt::from_turns(&turns_from_messages(v)?)
                    }
                    _ => {
                        return Err(InputError::WrongType {
                            field: match field {
                                "text" => "text",
                                "prompt" => "prompt",
                                _ => "input",
                            },
                            expected: "a string",
                        })
                    }
                }
            }
        }
        _ => return Err(InputError::Missing),
    };
    if prompt.is_empty() {
        return Err(InputError::Empty);
    }
    Ok(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_each_field() {
        for field in ["text", "prompt", "input"] {
            let p = prompt_from_json(&json!({ field: "hi there" })).unwrap();
            assert_eq!(p.text, "hi there");
        }
    }

    #[test]
    fn reads_messages_with_parts() {
        let v = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "this?"}]}
        ]});
        let p = prompt_from_json(&v).unwrap();
        assert_eq!(p.text, "what is\nthis?");
        assert_eq!(p.context, "system: be brief");
    }

    #[test]
    fn rejects_wrong_types_and_empty() {
        assert_eq!(
            prompt_from_json(&json!({"input": 5})),
            Err(InputError::WrongType {
                field: "input",
                expected: "a string"
            })
        );
        assert_eq!(
            prompt_from_json(&json!({"input": "  "})),
            Err(InputError::Empty)
        );
        assert_eq!(
            prompt_from_json(&json!({"other": "x"})),
            Err(InputError::Missing)
        );
        assert!(matches!(
            prompt_from_json(&json!({"messages": [{"content": "x"}]})),
            Err(InputError::BadMessage { index: 0, .. })
        ));
        assert!(prompt_from_json(&json!({"messages": "x"})).is_err());
    }
}
