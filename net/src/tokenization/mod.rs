//! Prompts to token ids, in the router and in the engine simulator, exactly as the engine
//! will tokenize them, so that the blocks the router hashes are the blocks the engine
//! caches.
//!
//! A [`PromptTokenizer`] is two parts:
//! - a [`TextTokenizer`]: a model's `tokenizer.json` (Hugging Face `tokenizers`), or the
//!   simulator's byte tokenizer (`bytes`: one token per UTF-8 byte, no model files);
//! - a [`ChatTemplate`] (minijinja, set up as transformers sets up Jinja): the model's
//!   template, or for `bytes` the simulator's own ([`BYTES_CHAT_TEMPLATE`]).
//!
//! Where the parts come from ([`PromptTokenizer::load`]), for `--tokenizer PATH`:
//! - `PATH` is a `tokenizer.json`, or a model directory holding one;
//! - the chat template is `--chat-template FILE` if given (a `.json` file is read as a
//!   `tokenizer_config.json`, anything else as Jinja source), else the directory's
//!   `chat_template.jinja`, else the `chat_template` of its `tokenizer_config.json`; with
//!   none, chat requests are refused with a message that says so;
//! - `bos_token` and `eos_token` come from the directory's `tokenizer_config.json`.
//!
//! Completion prompts are encoded with the tokenizer's special tokens (a BOS for most
//! models); chat prompts are rendered, then encoded without them (the template writes its
//! own), as vLLM does. Every error is a message for a 400 (or, at load, for the config
//! error); nothing here panics on a request.

mod chat_messages;
mod chat_template;
mod text_tokenizer;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use chat_messages::template_messages;
pub use chat_template::ChatTemplate;
pub use text_tokenizer::TextTokenizer;

/// The simulator's chat format: each message as `<|role|>\n` + its text + `\n`, then
/// `<|assistant|>\n` when a generation prompt is asked for.
pub const BYTES_CHAT_TEMPLATE: &str = "{% for message in messages %}<|{{ message.role }}|>\n{{ message.content or '' }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Where a tokenizer comes from: `bytes`, or a `tokenizer.json` / model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    Bytes,
    File(PathBuf),
}

impl std::str::FromStr for TokenizerSource {
    type Err = String;
    fn from_str(text: &str) -> Result<TokenizerSource, String> {
        match text {
            "" => Err("the tokenizer must be `bytes` or a path".to_owned()),
            "bytes" => Ok(TokenizerSource::Bytes),
            path => Ok(TokenizerSource::File(PathBuf::from(path))),
        }
    }
}

impl std::fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerSource::Bytes => f.write_str("bytes"),
            TokenizerSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A text tokenizer and the chat template that goes with it (see the module doc).
#[derive(Debug)]
pub struct PromptTokenizer {
    text: TextTokenizer,
    /// The template, or why there is none.
    chat: Result<ChatTemplate, String>,
}

impl PromptTokenizer {
    /// The simulator's byte tokenizer and chat format.
    pub fn bytes() -> PromptTokenizer {
        let chat = ChatTemplate::new(BYTES_CHAT_TEMPLATE.to_owned(), String::new(), String::new());
        PromptTokenizer { text: TextTokenizer::Bytes, chat }
    }

    /// Loads `source` and its chat template (`chat_template` overrides the model's).
    pub fn load(source: &TokenizerSource, chat_template: Option<&Path>) -> Result<PromptTokenizer, String> {
        let (text, model_dir) = match source {
            TokenizerSource::Bytes => (TextTokenizer::Bytes, None),
            TokenizerSource::File(path) if path.is_dir() => {
                (TextTokenizer::from_file(&path.join("tokenizer.json"))?, Some(path.clone()))
            }
            TokenizerSource::File(path) => (TextTokenizer::from_file(path)?, path.parent().map(Path::to_path_buf)),
        };
        let config = match model_dir.as_ref().map(|dir| dir.join("tokenizer_config.json")) {
            Some(path) if path.is_file() => Some(read_json(&path)?),
            _ => None,
        };
        let special =
            |name: &str| config.as_ref().and_then(|config| special_token(config.get(name))).unwrap_or_default();
        let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));
        let source_text = match (chat_template, &model_dir, source) {
            (Some(path), _, _) => Ok(read_template_file(path)?),
            (None, _, TokenizerSource::Bytes) => Ok(BYTES_CHAT_TEMPLATE.to_owned()),
            (None, Some(dir), _) if dir.join("chat_template.jinja").is_file() => {
                Ok(read_template_file(&dir.join("chat_template.jinja"))?)
            }
            (None, _, _) => match config.as_ref().map(config_template) {
                Some(template) => template,
                None => Err(format!(
                    "the tokenizer {source} has no chat template (no chat_template.jinja, no tokenizer_config.json with one beside it); give the router one with --chat-template FILE"
                )),
            },
        };
        let chat = match source_text {
            Ok(template) => Ok(ChatTemplate::new(template, bos_token, eos_token)?),
            Err(why) => Err(why),
        };
        Ok(PromptTokenizer { text, chat })
    }

    /// The ids of a completion prompt (special tokens added).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        self.text.encode(text, true)
    }

    /// The ids of a chat request (or a chat `/tokenize` request): its `messages` rendered
    /// with `add_generation_prompt` (default true), `tools` and `chat_template_kwargs`.
    pub fn encode_chat(&self, body: &Value) -> Result<Vec<u32>, String> {
        let template = self.chat.as_ref().map_err(Clone::clone)?;
        let messages = template_messages(body.get("messages"))?;
        let add_generation_prompt = match body.get("add_generation_prompt") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(add)) => *add,
            Some(_) => return Err("add_generation_prompt must be a boolean".to_owned()),
        };
        let kwargs = match body.get("chat_template_kwargs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(kwargs)) => Some(kwargs),
            Some(_) => return Err("chat_template_kwargs must be an object".to_owned()),
        };
        let tools = body.get("tools").filter(|tools| !tools.is_null());
        let text = template.render(messages, add_generation_prompt, tools, kwargs)?;
        self.text.encode(&text, false)
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|error| format!("{} is not JSON: {error}", path.display()))
}

/// A chat template file: a `tokenizer_config.json` (by its `.json` name) or Jinja source.
fn read_template_file(path: &Path) -> Result<String, String> {
    if path.extension().is_some_and(|ext| ext == "json") {
        return config_template(&read_json(path)?).map_err(|error| format!("{}: {error}", path.display()));
    }
    std::fs::read_to_string(path).map_err(|error| format!("cannot read chat template {}: {error}", path.display()))
}

/// The `chat_template` of a `tokenizer_config.json`: a string, or a list of named templates
/// (the one named `default`, else the first).
fn config_template(config: &Value) -> Result<String, String> {
    match config.get("chat_template") {
        Some(Value::String(template)) => Ok(template.clone()),
        Some(Value::Array(named)) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| named.first())
            .and_then(|entry| entry.get("template").and_then(Value::as_str))
            .map(str::to_owned)
            .ok_or_else(|| "chat_template lists no template".to_owned()),
        _ => Err("the tokenizer config has no chat_template; give the router one with --chat-template FILE".to_owned()),
    }
}

/// A special token as tokenizer configs write it: a string or `{"content": ...}`.
fn special_token(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(token) => Some(token.clone()),
        Value::Object(token) => token.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
