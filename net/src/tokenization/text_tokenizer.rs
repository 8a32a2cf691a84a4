//! Text to token ids: a Hugging Face `tokenizer.json` through the `tokenizers` crate (the
//! library vLLM's and SGLang's fast tokenizers are), or the engine simulator's byte
//! tokenizer (one token per UTF-8 byte, its value as the id), which needs no model files.

use std::fmt;
use std::path::Path;

/// What turns text into token ids.
pub enum TextTokenizer {
    /// One token per UTF-8 byte (ids 0..=255); shared text prefixes stay shared token
    /// prefixes, so prefix caching behaves as with a real tokenizer.
    Bytes,
    HuggingFace(Box<tokenizers::Tokenizer>),
}

impl fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextTokenizer::Bytes => f.write_str("Bytes"),
            TextTokenizer::HuggingFace(tokenizer) => {
                write!(f, "HuggingFace(vocab {})", tokenizer.get_vocab_size(true))
            }
        }
    }
}

impl TextTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<TextTokenizer, String> {
        tokenizers::Tokenizer::from_file(path)
            .map(|tokenizer| TextTokenizer::HuggingFace(Box::new(tokenizer)))
            .map_err(|error| format!("cannot load tokenizer {}: {error}", path.display()))
    }

    /// The ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (a BOS, for most models), as engines do for completion prompts and not for rendered
    /// chat templates (which hold their own).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        match self {
            TextTokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            TextTokenizer::HuggingFace(tokenizer) => tokenizer
                .encode_fast(text, add_special_tokens)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|error| format!("tokenizing the prompt: {error}")),
        }
    }
}
