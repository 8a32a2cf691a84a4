//! Chat messages as a chat template receives them: each message an object with a string
//! `role`; its `content` a string, null (kept as null, as for tool-calling turns), or a
//! list of parts whose `text` parts are joined with `\n` (what vLLM does for templates that
//! take string content; other parts, such as images, add no text). Every other field of a
//! message (`name`, `tool_calls`, ...) is passed on as it is.

use serde_json::Value;

/// `messages` made ready for rendering, or why they cannot be.
pub fn template_messages(messages: Option<&Value>) -> Result<Value, String> {
    let list = match messages {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return Err("messages must be a non-empty list".to_owned()),
    };
    list.iter()
        .map(|message| {
            let Value::Object(fields) = message else {
                return Err("every message must be an object".to_owned());
            };
            if !fields.get("role").is_some_and(Value::is_string) {
                return Err("every message needs a string role".to_owned());
            }
            let mut fields = fields.clone();
            match fields.get("content") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    let texts: Vec<&str> =
                        parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect();
                    fields.insert("content".into(), Value::String(texts.join("\n")));
                }
                Some(_) => return Err("a message's content must be a string, null or a list of parts".to_owned()),
            }
            Ok(Value::Object(fields))
        })
        .collect::<Result<Vec<Value>, String>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_parts_are_joined_and_bad_messages_refused() {
        let messages = json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [1]},
        ]);
        assert_eq!(
            template_messages(Some(&messages)).unwrap(),
            json!([{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": null, "tool_calls": [1]}])
        );
        for bad in [json!([]), json!("x"), json!([1]), json!([{"content": "x"}]), json!([{"role": "u", "content": 3}])]
        {
            assert!(template_messages(Some(&bad)).is_err(), "{bad}");
        }
        assert!(template_messages(None).is_err());
    }
}
