//! The token ids the router hashes for a proxied request.
//!
//! - `/v1/completions` with `prompt` as token ids (or a list holding one list of ids):
//!   those ids, no tokenization.
//! - A text `prompt`, or `/v1/chat/completions` `messages`: the router's own tokenizer
//!   when it has one (`--tokenizer`, [`crate::tokenization`]), else the engine's own `POST
//!   /tokenize` (vLLM's, and the simulator's), asked of a healthy upstream with the same
//!   `prompt` or `messages` and the fields the chat template reads
//!   ([`engine_tokenize_body`]), so the ids are exactly the ones the engine will cache.
//! - Several prompts in one request are refused (400): each may belong on another rank.
//!
//! Also here: the output length the request asks for (`max_tokens`, chat's
//! `max_completion_tokens`), which the router charges as decode load.

use serde_json::{json, Value};

use crate::openai_error::OpenAiError;
use crate::token_id_list::{parse_token_id_list, skip_whitespace};

/// A request body as the proxy reads it: every field a `Value`, except a `prompt` of plain
/// token ids, which is read straight into `ids` (a 2,048-token prompt would otherwise be
/// 2,048 `Value`s to allocate and free per request; the body goes upstream as its bytes).
#[derive(Debug, Default, PartialEq)]
pub struct RequestBody {
    /// The body, without `prompt` when that was plain ids.
    pub json: Value,
    pub ids: Option<Vec<u32>>,
}

impl RequestBody {
    /// Parses a JSON object body; a 400 for anything else.
    pub fn parse(bytes: &[u8]) -> Result<RequestBody, OpenAiError> {
        if let Some(body) = RequestBody::parse_with_plain_ids(bytes) {
            return Ok(body);
        }
        let parsed: Result<RequestBody, _> = serde_json::from_slice(bytes);
        parsed.map_err(|error| {
            if error.is_data() && !error.to_string().contains("token ids") {
                OpenAiError::bad_request("the body must be a JSON object")
            } else {
                OpenAiError::bad_request(format!("invalid JSON body: {error}"))
            }
        })
    }
}

impl RequestBody {
    /// The common body, `prompt` a plain list of ids, without serde_json reading the ids:
    /// the top-level `"prompt"` key is found by a scan that tracks strings and nesting,
    /// its list is read by [`parse_token_id_list`], and the rest of the body, the list
    /// replaced by `null`, by serde_json (which checks all of it). `None` for any other
    /// body (the general parse then reads it, errors included).
    fn parse_with_plain_ids(bytes: &[u8]) -> Option<RequestBody> {
        let key_end = top_level_key_end(bytes, b"\"prompt\"")?;
        let colon = skip_whitespace(bytes, key_end);
        if bytes.get(colon) != Some(&b':') {
            return None;
        }
        let start = skip_whitespace(bytes, colon + 1);
        if bytes.get(start) != Some(&b'[') {
            return None;
        }
        let end = start + bytes[start..].iter().position(|&b| b == b']')? + 1;
        let ids = parse_token_id_list(std::str::from_utf8(&bytes[start..end]).ok()?)?;
        let mut rest = Vec::with_capacity(bytes.len() - (end - start) + 4);
        rest.extend_from_slice(&bytes[..start]);
        rest.extend_from_slice(b"null");
        rest.extend_from_slice(&bytes[end..]);
        let mut body: RequestBody = serde_json::from_slice(&rest).ok()?;
        match body.json.as_object_mut()?.remove("prompt") {
            Some(Value::Null) if body.ids.is_none() => Some(RequestBody { json: body.json, ids: Some(ids) }),
            _ => None,
        }
    }
}

/// Where the first key `key` (quotes included) of the top-level object ends, found by a
/// scan that skips strings (escapes included) and nested values.
fn top_level_key_end(bytes: &[u8], key: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' if depth == 1 && bytes[at..].starts_with(key) => return Some(at + key.len()),
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.checked_sub(1)?,
                _ => {}
            }
        }
        at += 1;
    }
    None
}

impl<'de> serde::Deserialize<'de> for RequestBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RequestBody, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RequestBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RequestBody, A::Error> {
                let mut fields = serde_json::Map::new();
                let mut ids = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "prompt" {
                        let raw: Box<serde_json::value::RawValue> = map.next_value()?;
                        match parse_token_id_list(raw.get()) {
                            Some(plain) => ids = Some(plain),
                            None => {
                                let value = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
                                fields.insert(key, value);
                            }
                        }
                    } else {
                        fields.insert(key, map.next_value()?);
                    }
                }
                Ok(RequestBody { json: Value::Object(fields), ids })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The OpenAI endpoints the proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenAiEndpoint {
    Completions,
    ChatCompletions,
}

impl OpenAiEndpoint {
    pub fn path(self) -> &'static str {
        match self {
            OpenAiEndpoint::Completions => "/v1/completions",
            OpenAiEndpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

/// What the router needs of a request's prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput<'a> {
    /// Token ids given by the client.
    Tokens(Vec<u32>),
    /// A completion prompt to tokenize.
    Text(&'a str),
    /// Chat messages (the body's) to render and tokenize.
    Chat,
}

/// The prompt of a request body.
pub fn prompt_input(endpoint: OpenAiEndpoint, body: &Value) -> Result<PromptInput<'_>, OpenAiError> {
    match endpoint {
        OpenAiEndpoint::Completions => {
            let prompt = body.get("prompt").ok_or_else(|| OpenAiError::bad_request("the request needs a prompt"))?;
            completion_prompt(prompt)
        }
        OpenAiEndpoint::ChatCompletions => match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => Ok(PromptInput::Chat),
            _ => Err(OpenAiError::bad_request("messages must be a non-empty list")),
        },
    }
}

/// The chat fields a chat template reads, passed to the engine's `/tokenize` as they are.
const CHAT_TEMPLATE_FIELDS: [&str; 4] =
    ["add_generation_prompt", "tools", "chat_template_kwargs", "continue_final_message"];

/// The body for an engine's `POST /tokenize` of `input` (`Text` or `Chat` of `body`).
pub fn engine_tokenize_body(input: &PromptInput<'_>, body: &Value) -> Value {
    match input {
        PromptInput::Tokens(tokens) => json!({"prompt": tokens}),
        PromptInput::Text(text) => json!({"prompt": text}),
        PromptInput::Chat => {
            let mut request = json!({"messages": body.get("messages"), "add_generation_prompt": true});
            for field in CHAT_TEMPLATE_FIELDS {
                if let Some(value) = body.get(field).filter(|value| !value.is_null()) {
                    request[field] = value.clone();
                }
            }
            request
        }
    }
}

fn completion_prompt(prompt: &Value) -> Result<PromptInput<'_>, OpenAiError> {
    match prompt {
        Value::String(text) => Ok(PromptInput::Text(text)),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            token_ids(items).map(PromptInput::Tokens)
        }
        Value::Array(items) if items.len() == 1 => completion_prompt(&items[0]),
        Value::Array(items) if items.is_empty() => Err(OpenAiError::bad_request("the prompt is empty")),
        Value::Array(_) => Err(OpenAiError::bad_request(
            "one prompt per request: the proxy routes each prompt on its own (send them as separate requests)",
        )),
        _ => Err(OpenAiError::bad_request("prompt must be a string or a list of token ids")),
    }
}

fn token_ids(items: &[Value]) -> Result<Vec<u32>, OpenAiError> {
    items
        .iter()
        .map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| OpenAiError::bad_request("prompt token ids must be integers from 0 to 4294967295"))
}

/// The token ids in an engine's `/tokenize` answer (`{"tokens": [...], ...}`).
pub fn tokenize_answer(answer: &Value) -> Result<Vec<u32>, String> {
    match answer.get("tokens") {
        Some(Value::Array(items)) => token_ids(items).map_err(|error| error.message),
        _ => Err("the engine's /tokenize answer has no `tokens` list".to_owned()),
    }
}

/// The output tokens the request asks for, if it says (chat: `max_completion_tokens`
/// first); a negative or non-integer value is a 400.
pub fn requested_output_tokens(endpoint: OpenAiEndpoint, body: &Value) -> Result<Option<u64>, OpenAiError> {
    let fields: &[&str] = match endpoint {
        OpenAiEndpoint::Completions => &["max_tokens"],
        OpenAiEndpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
    };
    for field in fields {
        match body.get(*field) {
            None | Some(Value::Null) => continue,
            Some(value) => {
                return value
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| OpenAiError::bad_request(format!("{field} must be a non-negative integer")))
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reads_plain_ids_apart_and_keeps_every_other_field() {
        let body = RequestBody::parse(br#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": 4}"#).unwrap();
        assert_eq!(body.ids, Some(vec![1, 2, 3]));
        assert_eq!(body.json, json!({"model": "m", "max_tokens": 4}));
        let text = RequestBody::parse(br#"{"prompt": "hi"}"#).unwrap();
        assert_eq!((text.ids, text.json), (None, json!({"prompt": "hi"})));
        let nested = RequestBody::parse(br#"{"prompt": [[1, 2]], "x": null}"#).unwrap();
        assert_eq!((nested.ids, nested.json), (None, json!({"prompt": [[1, 2]], "x": null})));
        let negative = RequestBody::parse(br#"{"prompt": [1, -2]}"#).unwrap();
        assert_eq!(negative.json, json!({"prompt": [1, -2]}), "left for prompt_input to refuse with its message");
        for bad in [&b"[1, 2]"[..], b"{nope", b"3", b"{\"prompt\": [1,}"] {
            assert!(RequestBody::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The general parse alone, for the fast path to agree with.
    fn general(bytes: &[u8]) -> Option<RequestBody> {
        serde_json::from_slice(bytes).ok()
    }

    #[test]
    fn the_fast_path_reads_only_a_real_top_level_prompt() {
        for body in [
            r#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": 4}"#,
            r#"{"prompt":[7]}"#,
            r#"{"x": {"prompt": [9]}, "prompt": [1, 2]}"#,
            r#"{"x": "\"prompt\": [9]", "prompt": [3]}"#,
            r#"{"\"prompt": [9], "prompt": [4]}"#,
            r#"{"a": ["]", "prompt"], "prompt" : [ 5 , 6 ] }"#,
        ] {
            let fast = RequestBody::parse_with_plain_ids(body.as_bytes());
            assert!(fast.is_some(), "{body}");
            assert_eq!(fast, general(body.as_bytes()), "{body}");
        }
        for body in
            [r#"{"prompt": [[1]]}"#, r#"{"prompt": "hi"}"#, r#"{"x": {"prompt": [9]}}"#, r#"{"prompt": [1], }"#, "[1]"]
        {
            assert_eq!(RequestBody::parse_with_plain_ids(body.as_bytes()), None, "{body}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_the_general_parse(
            ids in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..16),
            before in "[a-z\"\\\\\\[\\]{}:, ]{0,12}",
            after in "[a-z\"\\\\\\[\\]{}:, ]{0,12}",
        ) {
            let value = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
            let body = format!(
                "{{\"a\": {}, \"prompt\": {}, \"b\": {}}}",
                value(&before),
                serde_json::to_string(&ids).unwrap(),
                value(&after)
            );
            let fast = RequestBody::parse_with_plain_ids(body.as_bytes());
            proptest::prop_assert_eq!(fast.as_ref().and_then(|b| b.ids.clone()), Some(ids));
            proptest::prop_assert_eq!(fast, general(body.as_bytes()));
            let broken = format!("{}{}", &body[..body.len() - 1], before);
            if let Some(fast) = RequestBody::parse_with_plain_ids(broken.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), general(broken.as_bytes()));
            }
        }
    }

    #[test]
    fn prompts_become_token_ids_or_a_tokenize_call() {
        let completions = OpenAiEndpoint::Completions;
        assert_eq!(prompt_input(completions, &json!({"prompt": [1, 2, 3]})), Ok(PromptInput::Tokens(vec![1, 2, 3])));
        assert_eq!(prompt_input(completions, &json!({"prompt": [[4, 5]]})), Ok(PromptInput::Tokens(vec![4, 5])));
        let text = json!({"prompt": "hi"});
        assert_eq!(prompt_input(completions, &text), Ok(PromptInput::Text("hi")));
        assert_eq!(engine_tokenize_body(&PromptInput::Text("hi"), &text), json!({"prompt": "hi"}));
        assert_eq!(prompt_input(completions, &json!({"prompt": ["hi"]})), Ok(PromptInput::Text("hi")));
        let messages = json!([{"role": "user", "content": "hi"}]);
        let chat = json!({"messages": messages, "tools": null, "chat_template_kwargs": {"x": 1}, "max_tokens": 3});
        assert_eq!(prompt_input(OpenAiEndpoint::ChatCompletions, &chat), Ok(PromptInput::Chat));
        assert_eq!(
            engine_tokenize_body(&PromptInput::Chat, &chat),
            json!({"messages": messages, "add_generation_prompt": true, "chat_template_kwargs": {"x": 1}})
        );
        let no_generation = json!({"messages": messages, "add_generation_prompt": false});
        assert_eq!(engine_tokenize_body(&PromptInput::Chat, &no_generation), no_generation);
        for bad in [
            json!({}),
            json!({"prompt": ["a", "b"]}),
            json!({"prompt": [1, -1]}),
            json!({"prompt": []}),
            json!({"prompt": 3}),
        ] {
            assert!(prompt_input(completions, &bad).is_err(), "{bad}");
        }
        assert!(prompt_input(OpenAiEndpoint::ChatCompletions, &json!({"messages": []})).is_err());
        assert_eq!(tokenize_answer(&json!({"count": 2, "tokens": [7, 8]})), Ok(vec![7, 8]));
        assert!(tokenize_answer(&json!({"count": 2})).is_err());
        let chat = OpenAiEndpoint::ChatCompletions;
        assert_eq!(requested_output_tokens(chat, &json!({"max_tokens": 5, "max_completion_tokens": 9})), Ok(Some(9)));
        assert_eq!(requested_output_tokens(completions, &json!({"max_tokens": null})), Ok(None));
        assert!(requested_output_tokens(completions, &json!({"max_tokens": -1})).is_err());
    }
}
